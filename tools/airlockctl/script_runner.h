// `airlockctl run SCRIPT.cmds`: the seeds' command scripts against a real Host.
//
//   [N] add_c                          add a skill (the sample module under a new name), N times
//   p_add_c K                          add K skills at once (loads in parallel)
//   skills | cached_skills             list the skills known | loaded now
//   execute_skill NAME ARG MEM WAIT    one call: the sample allocates MEM KB, waits WAIT ms
//   execute_all ARG MEM WAIT           one call of every skill, one after another
//   p_execute_all ARG MEM WAIT K       K calls of every skill, all at once
//   drop_cached_skill                  unload the most recently called loaded skill (it loads again on its next call)
//   delete_skill                       unload and forget the newest skill
//   idle MS                            do nothing for MS ms (cpu(ms) then shows background work)
//   wait_compile_cache                 until the compile cache has built the entries asked for
//   stop                               stop every extension (the host's stop)
//
// Skills live in an airlock::SkillSet over the extensions: spread evenly by size, loaded
// on their first call, least recently called unloaded past its cache budget. Each command is timed and
// the whole process tree's RSS and PSS are read before and after it.
#pragma once

#include <iosfwd>
#include <string>

#include "airlock/host.h"
#include "run_log.h"

namespace airlock::ctl {

struct RunOptions {
  std::string script;
  std::string skill_wasm;       // the sample skill (greet: "ARG,MEM_KB,WAIT_MS")
  int extensions = 2;
  uint64_t cache_kb = 256 << 10;  // SkillSetOptions::cache_bytes / 1024
  Transport transport = Transport::Msgpack;
  std::string extension_binary;  // empty: the library's choice
  EngineOptions engine;
  std::string compile_cache_dir;  // HostOptions::compile_cache_dir
  std::string metrics_address;  // non-empty: Host::serve_metrics there during the run
  // After the script: keep serving (metrics, the extensions) until SIGINT or SIGTERM,
  // which the caller has blocked in every thread (sigwait).
  bool hold = false;
  bool distinct = false;          // every added skill a module of its own (else one module, many names)
};

Result<RunLog> run_script(const RunOptions& o, std::ostream& progress);

}  // namespace airlock::ctl
