// The run log of `airlockctl run` (the seeds' format: one line per command with took(ms)
// and rss diff(KB), a header describing the machine, the binary and the script, totals)
// and `airlockctl compare`, which prints two logs side by side.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "airlock/status.h"

namespace airlock::ctl {

struct CommandRecord {
  std::string cmd;       // as written in the script, without the repeat count
  int repeat = 1;        // "N cmd": run N times; the record covers all of them
  double took_ms = 0;
  double cpu_ms = 0;     // whole process tree's CPU time (user + system), after minus before
  long rss_diff_kb = 0;  // whole process tree, after minus before
  long pss_diff_kb = 0;
  int ok = 0;            // calls or operations that succeeded
  int failed = 0;
  std::string first_error;
};

struct RunLog {
  nlohmann::json header;  // date, cpu, arch, cores, memory, binary + hash, script + hash, settings
  std::vector<CommandRecord> commands;
  double total_ms = 0;
  long max_rss_kb = 0;
  long max_pss_kb = 0;
};

// A 64-bit FNV-1a of a file's bytes, in hex ("" if unreadable): enough to tell two
// binaries or scripts apart in a log.
std::string file_hash(const std::string& path);
nlohmann::json machine_header();

std::string format_log(const RunLog& log);  // the human log
nlohmann::json to_json(const RunLog& log);
Result<RunLog> from_json(const nlohmann::json& j);
// Reads FILE.json, or the FILE.json written beside FILE.log.
Result<RunLog> read_log(const std::string& path);

// Side by side, per command: took(ms), rss diff(KB), pss diff(KB), each with "vs a(%)";
// then totals. Commands are matched by position (the same script).
std::string compare(const RunLog& a, const RunLog& b);

}  // namespace airlock::ctl
