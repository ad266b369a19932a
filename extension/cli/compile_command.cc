// `airlock-extension compile`: the producer of a host's compile-cache entry. Reads one
// module on stdin and writes its code, compiled to V8's top tier and serialized, on
// stdout (its length, 8 bytes little-endian, then the code). The host runs one such
// process per module (HostOptions::compile_cache_dir).
//
// Why a process of its own, never a serving extension: the entry is native code that
// future extensions will run. A serving extension runs skills, so a compromised one
// could hand back code for any module it is asked about; this process runs no wasm
// code at all (it compiles, and does not instantiate), inside the same sandbox, and
// sees one module: the most a hostile module gets out of it is an entry for itself,
// whose bytes any extension loading it compiles anyway.
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <vector>

#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "runtime/skill_runtime.h"
#include "sandbox/sandbox.h"
#include "airlock/guard_regions.h"

namespace airlock::cli {

int compile_command(const CompileArgs& a) {
  sandbox::Policy policy;
  policy.enabled = a.sandbox;
  policy.uid = a.uid;
  policy.gid = a.gid;
  sandbox::Report report;
  if (auto st = sandbox::enter(policy, report); !st.ok()) {
    std::cerr << "error: sandbox: " << st.error().message << "\n";
    return kExitInternal;
  }
  std::vector<uint8_t> wasm{std::istreambuf_iterator<char>(std::cin), {}};
  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = kExitOk;
  {
    engine::EngineConfig ec;
    ec.cacheable_code = true;  // as the serving extensions: V8 accepts code only under the same flags
    ec.lazy_compilation = a.lazy_compilation;
    ec.trap_handler = a.guard_regions == "on" || (a.guard_regions == "auto" && guard_regions_fit());
    runtime::SkillRuntime rt(&loop, ec);
    if (auto st = sandbox::lock_down(policy, report); !st.ok()) {
      std::cerr << "error: sandbox: " << st.error().message << "\n";
      return kExitInternal;
    }
    runtime::SkillLimits lim;
    lim.max_memory_mb = a.max_memory_mb;
    auto code = rt.compile_for_cache(wasm, lim);
    if (!code.ok()) {
      std::cerr << "error: " << code.error().message << "\n";
      rc = kExitLoad;
    } else if (const uint64_t n = code->size();  // a length first: the host keeps only complete output
               std::fwrite(&n, 8, 1, stdout) != 1 || std::fwrite(code->data(), 1, n, stdout) != n || std::fflush(stdout) != 0) {
      std::cerr << "error: writing the code failed\n";
      rc = kExitInternal;
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return rc;
}

}  // namespace airlock::cli
