// `quantserve --probe=HOST:PORT`: a health-check client built into the daemon's binary,
// for container HEALTHCHECKs and exec probes where no grpc_health_probe is installed.
// One grpc.health.v1.Health/Check (service "") with a 2 s deadline; exit status 0 when
// the answer is SERVING, 1 otherwise (NOT_SERVING, unreachable, deadline), 2 on a bad flag.
#ifndef QUANTSERVE_SERVER_PROBE_H_
#define QUANTSERVE_SERVER_PROBE_H_

#include <string>

namespace qs {

// One Check against `target` ("host:port"). Prints the outcome on stdout (SERVING) or
// stderr. Returns the process exit status described above.
int ProbeHealth(const std::string& target, int deadline_ms = 2000);

// When argv carries --probe=TARGET (or "--probe TARGET"), runs ProbeHealth and returns
// its exit status; otherwise returns -1 and the daemon starts as usual.
int RunProbeIfRequested(int argc, char** argv);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_PROBE_H_
