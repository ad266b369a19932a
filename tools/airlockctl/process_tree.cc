#include "process_tree.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <unistd.h>

namespace airlock::ctl {

std::vector<pid_t> process_tree(pid_t root) {
  std::vector<pid_t> out{root};
  for (size_t i = 0; i < out.size(); ++i) {
    // Children of every thread (a child's parent is the thread that forked it).
    std::error_code ec;
    const std::string tasks = "/proc/" + std::to_string(out[i]) + "/task";
    for (const auto& t : std::filesystem::directory_iterator(tasks, ec)) {
      std::ifstream f(t.path() / "children");
      for (pid_t c; f >> c;) out.push_back(c);
    }
  }
  return out;
}

TreeMemory tree_memory(pid_t root) {
  TreeMemory m;
  for (pid_t p : process_tree(root)) {
    std::ifstream f("/proc/" + std::to_string(p) + "/smaps_rollup");
    if (!f) {
      m.unreadable++;
      continue;
    }
    m.processes++;
    // /proc/PID/stat: fields 14-17 (utime, stime, and the same of its reaped children:
    // an extension that exited still counts) in clock ticks, counted after the ")" that
    // ends the command name (which may itself hold spaces or parentheses).
    std::ifstream st("/proc/" + std::to_string(p) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(st)), {});
    if (auto close = stat.rfind(')'); close != std::string::npos) {
      std::istringstream in(stat.substr(close + 2));
      std::string field;
      long utime = 0, stime = 0, cutime = 0, cstime = 0;
      for (int i = 3; i <= 13 && in >> field; ++i) {
      }
      if (in >> utime >> stime >> cutime >> cstime) {
        m.cpu_ms += 1000.0 * static_cast<double>(utime + stime + cutime + cstime) / static_cast<double>(sysconf(_SC_CLK_TCK));
      }
    }
    for (std::string line; std::getline(f, line);) {
      std::istringstream in(line);
      std::string key;
      long kb = 0;
      in >> key >> kb;
      if (key == "Rss:") m.rss_kb += kb;
      if (key == "Pss:") m.pss_kb += kb;
    }
  }
  return m;
}

}  // namespace airlock::ctl
