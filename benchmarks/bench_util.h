// Shared by the benchmarks: timing samples, summary statistics, machine description.
#pragma once

#include <nlohmann/json.hpp>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

namespace airlock::bench {

using Clock = std::chrono::steady_clock;

inline double us_since(Clock::time_point t) { return std::chrono::duration<double, std::micro>(Clock::now() - t).count(); }

struct Summary {
  size_t n = 0;
  double mean = 0, std = 0, median = 0, p99 = 0, min = 0, max = 0;
};

inline Summary summarize(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  s.p99 = v[std::min(v.size() - 1, static_cast<size_t>(std::ceil(0.99 * static_cast<double>(v.size()))) - 1)];
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double sq = 0;
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.std = v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0;
  return s;
}

struct Machine {
  std::string cpu, kernel;
  unsigned cores = 0;
  double memory_gb = 0;
  std::string commit = "unknown", build_type = "unknown";  // filled by machine() when the build says where/how
};

inline Machine machine() {
  Machine m;
  std::ifstream cpu("/proc/cpuinfo");
  for (std::string line; std::getline(cpu, line);) {
    if (line.rfind("model name", 0) == 0) {
      m.cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  m.cores = static_cast<unsigned>(sysconf(_SC_NPROCESSORS_ONLN));
  m.memory_gb = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE)) / (1 << 30);
  utsname u{};
  uname(&u);
  m.kernel = std::string(u.sysname) + " " + u.release;
#ifdef AIRLOCK_BENCH_BUILD_TYPE
  m.build_type = AIRLOCK_BENCH_BUILD_TYPE;
#endif
#ifdef AIRLOCK_BENCH_SOURCE_DIR
  // Read-only git queries (GIT_OPTIONAL_LOCKS=0: `status` must not touch the index).
  auto run = [](const std::string& cmd) {
    std::string out;
    if (FILE* f = popen(cmd.c_str(), "r")) {
      char buf[256];
      while (size_t n = fread(buf, 1, sizeof buf, f)) out.append(buf, n);
      pclose(f);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  };
  const std::string git = "GIT_OPTIONAL_LOCKS=0 git -C '" AIRLOCK_BENCH_SOURCE_DIR "' ";
  if (auto c = run(git + "rev-parse --short HEAD 2>/dev/null"); !c.empty()) {
    m.commit = c + (run(git + "status --porcelain --untracked-files=no 2>/dev/null").empty() ? "" : "-dirty");
  }
#endif
  return m;
}

inline nlohmann::json to_json(const Machine& m) {
  return {{"cpu", m.cpu},       {"cores", m.cores},   {"memory_gb", m.memory_gb},
          {"kernel", m.kernel}, {"commit", m.commit}, {"build_type", m.build_type}};
}

// {"machine": {...}, "results": results} to `path` (the small benchmarks' JSON shape).
inline void write_results(const std::string& path, const nlohmann::json& results) {
  nlohmann::json doc = {{"machine", to_json(machine())}, {"results", results}};
  std::ofstream(path) << doc.dump(2) << "\n";
}

// Memory of one process from /proc/PID/smaps_rollup, in MiB. USS (what the process
// alone holds) = Private_Clean + Private_Dirty; PSS shares each shared page among its users.
// pss_data = Pss_Anon + Pss_Shmem: PSS without file-backed pages (code, whose PSS moves
// whenever an unrelated process maps the same library); all of PSS on a kernel that does
// not report the split.
struct ProcMem {
  bool ok = false;
  double rss = 0, pss = 0, uss = 0;
  double pss_anon = 0, pss_file = 0, pss_shmem = 0, pss_data = 0;
};

inline ProcMem proc_mem(int pid) {
  ProcMem m;
  bool split = false;
  std::ifstream f("/proc/" + (pid > 0 ? std::to_string(pid) : std::string("self")) + "/smaps_rollup");
  for (std::string line; std::getline(f, line);) {  // "Pss:   240 kB" (the first line is the range)
    auto colon = line.find(':');
    if (colon == std::string::npos || line.find(" kB") == std::string::npos) continue;
    std::string key = line.substr(0, colon + 1);
    double mb = std::atof(line.c_str() + colon + 1) / 1024;
    if (key == "Rss:") m.rss = mb, m.ok = true;
    else if (key == "Pss:") m.pss = mb;
    else if (key == "Private_Clean:" || key == "Private_Dirty:") m.uss += mb;
    else if (key == "Pss_Anon:") m.pss_anon = mb, split = true;
    else if (key == "Pss_File:") m.pss_file = mb;
    else if (key == "Pss_Shmem:") m.pss_shmem = mb;
  }
  m.pss_data = split ? m.pss_anon + m.pss_shmem : m.pss;
  return m;
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// printf into a std::string.
template <class... A>
std::string strf(const char* fmt, A... a) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, a...);
  return std::string(buf, static_cast<size_t>(std::clamp(n, 0, static_cast<int>(sizeof buf) - 1)));
}

// A grid table in the style of pyisolate's benchmark output (tabulate "grid"): the
// header is underlined with '=', every row closed with '-'. Columns whose header is
// listed in `right` are right-aligned (numbers).
struct Table {
  std::vector<std::string> head;
  std::vector<std::vector<std::string>> rows;
  std::vector<bool> right;

  static size_t width(const std::string& s) {  // display width: UTF-8 code points
    return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
  }
  void print(FILE* out = stdout) const {
    std::vector<size_t> w(head.size());
    for (size_t i = 0; i < head.size(); ++i) w[i] = width(head[i]);
    for (const auto& r : rows)
      for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], width(r[i]));
    auto rule = [&](char c) {
      std::string s = "+";
      for (size_t x : w) s += std::string(x + 2, c) + "+";
      std::fprintf(out, "%s\n", s.c_str());
    };
    auto line = [&](const std::vector<std::string>& r) {
      std::string s = "|";
      for (size_t i = 0; i < w.size(); ++i) {
        std::string cell = i < r.size() ? r[i] : "";
        std::string pad(w[i] - width(cell), ' ');
        bool ra = i < right.size() && right[i];
        s += " " + (ra ? pad + cell : cell + pad) + " |";
      }
      std::fprintf(out, "%s\n", s.c_str());
    };
    rule('-');
    line(head);
    rule('=');
    for (const auto& r : rows) {
      line(r);
      rule('-');
    }
  }
};

}  // namespace airlock::bench
