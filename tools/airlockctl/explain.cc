// `airlockctl explain`: a capability manifest in plain words, layer by layer.
#include "explain.h"

#include <sstream>

#include "sandbox/sandbox.h"

namespace airlock::ctl {

namespace {

std::string list_or(const std::vector<std::string>& v, const std::string& none) {
  if (v.empty()) return none;
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

std::string explain(const airlock::ExtensionOptions& o, const std::string& path) {
  const airlock::SkillLimits lim = o.limits ? *o.limits : airlock::HostOptions{}.default_limits;
  std::ostringstream out;
  out << "extension '" << o.name << "' (" << path << ")\n\n";
  out << "Its skills (WebAssembly in V8's sandbox, one fresh instance state per call):\n";
  out << "  can      use up to " << lim.max_memory_mb << " MiB of linear memory per instance"
      << (o.limits ? "" : " (the host's default)") << ", " << o.max_memory_mb << " MiB for all its instances together\n";
  out << "           run up to " << lim.timeout_ms << " ms per call, waits included"
      << (o.limits ? "" : " (the host's default)") << "; stopped then, whatever the skill does\n";
  out << "           call host services: "
      << (o.services ? list_or(*o.services, "none") : "any the host's ServiceOptions::allow admits for it") << "\n";
  out << "           call skills of other extensions: " << list_or(o.may_call, "none") << "\n";
  out << "  cannot   open files or sockets (no WASI preopens, no socket imports), see the environment\n"
      << "           of the process, or call any import outside the Airlock ABI and the WASI subset\n\n";
  out << "Its process (the OS sandbox, docs/SECURITY.md):\n";
  out << "  can read " << list_or(o.readable, "nothing: its root is empty") << (o.readable.empty() ? "" : " (read-only)") << "\n";
  out << "  env      " << list_or(o.env, "empty") << "\n";
  out << "  network  none: its own network namespace, loopback down\n";
  out << "  cannot   see the host's files, processes, fds or network; write any file; gain\n"
      << "           privileges (no capabilities, no_new_privs, its own user namespace);\n"
      << "           make a syscall outside the allow-list (it fails with EPERM);\n"
      << "           " << list_or(airlock::sandbox::killing_syscalls(), "") << ": these kill it,\n"
      << "           and the host reports \"was killed by the sandbox: syscall NAME\"\n";
  out << "  allowed  " << list_or(airlock::sandbox::allowed_syscalls(), "") << "\n\n";
  out << "Supervision:\n";
  out << "  start    within " << o.start_timeout.count() << " ms, else the spawn fails\n";
  if (o.restart.mode == airlock::RestartPolicy::Mode::Never) {
    out << "  restart  never: after a crash it stays down and its calls fail with the reason\n";
  } else {
    out << "  restart  on failure, up to " << o.restart.max_restarts << " times, backoff "
        << o.restart.initial_backoff.count() << " ms doubling to " << o.restart.max_backoff.count() << " ms\n";
  }
  out << "  layers a machine does not allow are reported once by the host; SandboxOptions::required\n"
      << "  makes them a spawn error\n";
  return out.str();
}

}  // namespace airlock::ctl
