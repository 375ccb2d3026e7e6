// Leveled, timestamped logging to stderr, shared by engine and server.
// (Debian's Abseil 20220623 has no absl::log, so this is our own small logger.)
//
// Thread-safety: each QS_LOG statement writes its line with one write(2) call, so lines
// from different threads never interleave.
#ifndef QUANTSERVE_ENGINE_LOG_H_
#define QUANTSERVE_ENGINE_LOG_H_

#include <sstream>
#include <string>

namespace qs {

enum class LogLevel { kVerbose = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below `level` are dropped. Default: kInfo. Set once at start-up.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace qs

#define QS_LOG_LEVEL_VERBOSE ::qs::LogLevel::kVerbose
#define QS_LOG_LEVEL_INFO ::qs::LogLevel::kInfo
#define QS_LOG_LEVEL_WARNING ::qs::LogLevel::kWarning
#define QS_LOG_LEVEL_ERROR ::qs::LogLevel::kError

namespace qs {
// Turns the stream expression into void so QS_LOG can sit in a conditional expression
// (safe inside an unbraced if/else).
struct LogVoidify {
  void operator&(std::ostream&) {}
};
}  // namespace qs

// Usage: QS_LOG(INFO) << "loaded " << name;
#define QS_LOG(severity)                                  \
  (QS_LOG_LEVEL_##severity < ::qs::MinLogLevel())         \
      ? (void)0                                           \
      : ::qs::LogVoidify() &                              \
            ::qs::LogMessage(QS_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()

#endif  // QUANTSERVE_ENGINE_LOG_H_
