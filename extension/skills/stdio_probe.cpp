// stdio_probe (C++): what a skill sees of the C and C++ standard libraries without a
// file system. Writes to stdout (printf, std::cout) and stderr (fprintf), which reach
// the extension's log, reads the clocks, tries to open files and to sleep, and returns
// a report, one line per probe:
//   fopen_read=NULL errno=<n> (<strerror>)   (no file can be opened: ENOTCAPABLE)
//   fopen_write=NULL errno=<n> (<strerror>)
//   time=ok clock=ok chrono=ok
//   nanosleep=-1 errno=<n>                    (sleep with airlock_wait() instead)
//   stdin=EOF
#include <airlock/skill.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>
#include <sstream>
#include <string>

namespace {

std::string open_report(const char* path, const char* mode) {
  errno = 0;
  std::FILE* f = std::fopen(path, mode);
  std::ostringstream s;
  if (f) {
    s << "opened";
    std::fclose(f);
  } else {
    const int e = errno;
    s << "NULL errno=" << e << " (" << std::strerror(e) << ")";
  }
  return s.str();
}

}  // namespace

AIRLOCK_SKILL(run) {
  std::printf("stdio_probe: printf %u bytes\n", static_cast<unsigned>(input_len));
  std::fflush(stdout);
  std::cout << "stdio_probe: std::cout" << std::endl;
  std::fprintf(stderr, "stdio_probe: stderr\n");

  std::ostringstream report;
  report << "fopen_read=" << open_report("/etc/passwd", "r") << '\n';
  report << "fopen_write=" << open_report("out.txt", "w") << '\n';

  const bool time_ok = std::time(nullptr) > 1'600'000'000;  // after 2020
  const std::clock_t c0 = std::clock();
  const bool clock_ok = c0 != static_cast<std::clock_t>(-1);
  const auto t0 = std::chrono::steady_clock::now();
  const bool chrono_ok = std::chrono::steady_clock::now() >= t0 &&
                         std::chrono::system_clock::now().time_since_epoch().count() > 0;
  report << "time=" << (time_ok ? "ok" : "bad") << " clock=" << (clock_ok ? "ok" : "bad")
         << " chrono=" << (chrono_ok ? "ok" : "bad") << '\n';

  const timespec ts{0, 1'000'000};
  errno = 0;
  const int slept = nanosleep(&ts, nullptr);
  report << "nanosleep=" << slept << " errno=" << errno << '\n';

  report << "stdin=" << (std::getchar() == EOF ? "EOF" : "data") << '\n';
  const std::string r = report.str();
  airlock_output(r.data(), r.size());
  return AIRLOCK_OK;
}
