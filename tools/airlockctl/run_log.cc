#include "run_log.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <sstream>

namespace airlock::ctl {

namespace {

std::string grouped(long v) {  // 834992 -> "834,992"
  const std::string digits = std::to_string(v < 0 ? -v : v);
  std::string s = v < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
    s += digits[i];
  }
  return s;
}

std::string pad(std::string s, size_t w, bool right) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

std::string meminfo(const char* key) {
  std::ifstream f("/proc/meminfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(key, 0) == 0) {
      std::istringstream in(line.substr(std::string(key).size()));
      long kb = 0;
      in >> kb;
      return grouped(kb) + " KB";
    }
  }
  return "unknown";
}

std::string pct(double b, double a) {
  if (a == 0) return "-";
  return std::to_string(static_cast<long>(std::lround(100.0 * b / a)));
}

}  // namespace

std::string file_hash(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  uint64_t h = 1469598103934665603ull;
  char buf[65536];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    for (std::streamsize i = 0; i < f.gcount(); ++i) h = (h ^ static_cast<uint8_t>(buf[i])) * 1099511628211ull;
    if (!f) break;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

nlohmann::json machine_header() {
  std::string cpu = "unknown";
  std::ifstream ci("/proc/cpuinfo");
  for (std::string line; std::getline(ci, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  utsname u{};
  uname(&u);
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  std::error_code ec;
  char exe[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  const std::string binary = n > 0 ? std::string(exe, static_cast<size_t>(n)) : "unknown";
  return {{"date", date},
          {"cpu", cpu},
          {"arch", u.machine},
          {"kernel", u.release},
          {"cores", sysconf(_SC_NPROCESSORS_ONLN)},
          {"memory_total", meminfo("MemTotal:")},
          {"memory_available", meminfo("MemAvailable:")},
          {"binary", binary},
          {"binary_hash", file_hash(binary)}};
}

std::string format_log(const RunLog& log) {
  std::ostringstream o;
  for (const char* k : {"date", "cpu", "arch", "kernel", "cores", "memory_total", "memory_available", "binary",
                        "binary_hash", "script", "script_hash", "extensions", "transport", "skill", "distinct", "engine", "compile_cache"}) {
    if (log.header.contains(k)) {
      const auto& v = log.header[k];
      o << pad(k, 18, false) << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
    }
  }
  o << "\n" << pad("cmd", 42, false) << pad("took(ms)", 10, true) << pad("cpu(ms)", 10, true) << pad("rss diff(KB)", 15, true)
    << pad("pss diff(KB)", 15, true) << pad("ok", 8, true) << pad("failed", 8, true) << "\n";
  for (const auto& c : log.commands) {
    std::string cmd = (c.repeat > 1 ? std::to_string(c.repeat) + " " : "") + c.cmd;
    o << pad(cmd, 42, false) << pad(grouped(std::lround(c.took_ms)), 10, true) << pad(grouped(std::lround(c.cpu_ms)), 10, true)
      << pad(grouped(c.rss_diff_kb), 15, true)
      << pad(grouped(c.pss_diff_kb), 15, true) << pad(std::to_string(c.ok), 8, true) << pad(std::to_string(c.failed), 8, true)
      << "\n";
    if (!c.first_error.empty()) o << "    first error: " << c.first_error << "\n";
  }
  o << "\nTotal time (ms): " << grouped(std::lround(log.total_ms)) << "\n";
  o << "Maximum rss memory (KB): " << grouped(log.max_rss_kb) << "\n";
  o << "Maximum pss memory (KB): " << grouped(log.max_pss_kb) << "\n";
  return o.str();
}

nlohmann::json to_json(const RunLog& log) {
  nlohmann::json cmds = nlohmann::json::array();
  for (const auto& c : log.commands) {
    cmds.push_back({{"cmd", c.cmd}, {"repeat", c.repeat}, {"took_ms", c.took_ms}, {"cpu_ms", c.cpu_ms}, {"rss_diff_kb", c.rss_diff_kb},
                    {"pss_diff_kb", c.pss_diff_kb}, {"ok", c.ok}, {"failed", c.failed}, {"first_error", c.first_error}});
  }
  return {{"header", log.header}, {"commands", cmds}, {"total_ms", log.total_ms}, {"max_rss_kb", log.max_rss_kb},
          {"max_pss_kb", log.max_pss_kb}};
}

Result<RunLog> from_json(const nlohmann::json& j) {
  try {
    RunLog log;
    log.header = j.at("header");
    for (const auto& c : j.at("commands")) {
      log.commands.push_back({c.at("cmd").get<std::string>(), c.at("repeat").get<int>(), c.at("took_ms").get<double>(),
                              c.value("cpu_ms", 0.0),
                              c.at("rss_diff_kb").get<long>(), c.at("pss_diff_kb").get<long>(), c.at("ok").get<int>(),
                              c.at("failed").get<int>(), c.value("first_error", std::string())});
    }
    log.total_ms = j.at("total_ms").get<double>();
    log.max_rss_kb = j.at("max_rss_kb").get<long>();
    log.max_pss_kb = j.at("max_pss_kb").get<long>();
    return log;
  } catch (const nlohmann::json::exception& e) {
    return make_error(Code::InvalidArgument, std::string("not an airlockctl run log: ") + e.what());
  }
}

Result<RunLog> read_log(const std::string& path) {
  std::string p = path;
  if (p.size() > 4 && p.compare(p.size() - 4, 4, ".log") == 0) p = p.substr(0, p.size() - 4) + ".json";
  std::ifstream f(p);
  if (!f) return make_error(Code::NotFound, "cannot read '" + p + "'");
  auto j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(Code::InvalidArgument, "'" + p + "' is not JSON");
  auto r = from_json(j);
  if (!r.ok()) return make_error(r.error().code, "'" + p + "': " + r.error().message);
  return r;
}

std::string compare(const RunLog& a, const RunLog& b) {
  std::ostringstream o;
  auto header = [&](const RunLog& l, const char* id) {
    o << id << ": " << l.header.value("date", "?") << ", " << l.header.value("cpu", "?") << ", "
      << l.header.value("cores", 0) << " cores, " << l.header.value("memory_total", "?") << " total, "
      << l.header.value("memory_available", "?") << " available\n"
      << "   binary " << l.header.value("binary", "?") << " (" << l.header.value("binary_hash", "?") << "), script "
      << l.header.value("script", "?") << " (" << l.header.value("script_hash", "?") << ")\n";
  };
  header(a, "a");
  header(b, "b");
  if (a.header.value("script_hash", "") != b.header.value("script_hash", "")) o << "note: the two runs used different scripts\n";
  o << "\n" << pad("cmd", 42, false) << pad("id", 4, false) << pad("took(ms)", 12, true) << pad("vs a(%)", 9, true)
    << pad("rss diff(KB)", 15, true) << pad("vs a(%)", 9, true) << pad("pss diff(KB)", 15, true) << pad("vs a(%)", 9, true)
    << "\n";
  const size_t n = std::max(a.commands.size(), b.commands.size());
  for (size_t i = 0; i < n; ++i) {
    const CommandRecord* ca = i < a.commands.size() ? &a.commands[i] : nullptr;
    const CommandRecord* cb = i < b.commands.size() ? &b.commands[i] : nullptr;
    const CommandRecord& first = ca ? *ca : *cb;
    const std::string name = (first.repeat > 1 ? std::to_string(first.repeat) + " " : "") + first.cmd;
    if (ca) {
      o << pad(name, 42, false) << pad("a", 4, false) << pad(grouped(std::lround(ca->took_ms)), 12, true) << pad("", 9, true)
        << pad(grouped(ca->rss_diff_kb), 15, true) << pad("", 9, true) << pad(grouped(ca->pss_diff_kb), 15, true) << "\n";
    }
    if (cb) {
      o << pad(ca ? "" : name, 42, false) << pad("b", 4, false) << pad(grouped(std::lround(cb->took_ms)), 12, true)
        << pad(ca ? pct(cb->took_ms, ca->took_ms) : "-", 9, true) << pad(grouped(cb->rss_diff_kb), 15, true)
        << pad(ca ? pct(static_cast<double>(cb->rss_diff_kb), static_cast<double>(ca->rss_diff_kb)) : "-", 9, true)
        << pad(grouped(cb->pss_diff_kb), 15, true)
        << pad(ca ? pct(static_cast<double>(cb->pss_diff_kb), static_cast<double>(ca->pss_diff_kb)) : "-", 9, true) << "\n";
    }
  }
  o << "\n" << pad("Total time (ms)", 42, false) << pad("a", 4, false) << pad(grouped(std::lround(a.total_ms)), 12, true) << "\n"
    << pad("", 42, false) << pad("b", 4, false) << pad(grouped(std::lround(b.total_ms)), 12, true)
    << pad(pct(b.total_ms, a.total_ms), 9, true) << "\n";
  o << pad("Maximum rss memory (KB)", 42, false) << pad("a", 4, false) << pad(grouped(a.max_rss_kb), 12, true) << "\n"
    << pad("", 42, false) << pad("b", 4, false) << pad(grouped(b.max_rss_kb), 12, true)
    << pad(pct(static_cast<double>(b.max_rss_kb), static_cast<double>(a.max_rss_kb)), 9, true) << "\n";
  o << pad("Maximum pss memory (KB)", 42, false) << pad("a", 4, false) << pad(grouped(a.max_pss_kb), 12, true) << "\n"
    << pad("", 42, false) << pad("b", 4, false) << pad(grouped(b.max_pss_kb), 12, true)
    << pad(pct(static_cast<double>(b.max_pss_kb), static_cast<double>(a.max_pss_kb)), 9, true) << "\n";
  return o.str();
}

}  // namespace airlock::ctl
