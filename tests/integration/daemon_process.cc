#include "tests/integration/daemon_process.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <regex>

extern char** environ;

namespace qs::testing {

bool DaemonProcess::Start(const std::string& binary, const std::vector<std::string>& args) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return false;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipefd[0]);
  std::vector<std::string> all = {binary};
  all.insert(all.end(), args.begin(), args.end());
  for (const char* a : {"--grpc-address=127.0.0.1", "--grpc-port=0",
                        "--metrics-address=127.0.0.1", "--metrics-port=0"}) {
    all.push_back(a);
  }
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[1]);
  if (rc != 0) {
    close(pipefd[0]);
    pid_ = -1;
    return false;
  }
  fd_ = pipefd[0];
  reader_ = std::thread([this] { ReadLoop(); });
  if (!WaitForLog("server ready")) return false;
  const std::string text = log();
  std::smatch m;
  if (std::regex_search(text, m, std::regex("gRPC listening on [0-9.]+:([0-9]+)")))
    grpc_port_ = std::stoi(m[1]);
  if (std::regex_search(text, m, std::regex("metrics on http://[0-9.]+:([0-9]+)")))
    metrics_port_ = std::stoi(m[1]);
  return grpc_port_ > 0;
}

void DaemonProcess::ReadLoop() {
  char buf[4096];
  while (true) {
    ssize_t n = read(fd_, buf, sizeof(buf));
    absl::MutexLock lock(&mu_);
    if (n <= 0) {
      eof_ = true;
      return;
    }
    log_.append(buf, static_cast<size_t>(n));
  }
}

bool DaemonProcess::WaitForLog(const std::string& text) {
  absl::MutexLock lock(&mu_);
  auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return eof_ || log_.find(text) != std::string::npos;
  };
  mu_.Await(absl::Condition(&found));
  return log_.find(text) != std::string::npos;
}

std::string DaemonProcess::log() const {
  absl::MutexLock lock(&mu_);
  return log_;
}

int DaemonProcess::Stop(int sig) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (reader_.joinable()) reader_.join();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

}  // namespace qs::testing
