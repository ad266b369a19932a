// The OS sandbox every extension enters before it handles any request (docs/SECURITY.md).
// Layers, each applied where the kernel allows and reported either way:
//   clean start    no inherited descriptors but 0-5, an empty environment (the spawner's
//                  part), cwd "/", umask 077
//   user           a configured non-root user when started as root
//   namespaces     user, mount (an empty read-only root with only the declared paths
//                  bound in, read-only), network (no usable interface), ipc, uts
//   privileges     no capabilities (bounding and ambient sets too), no_new_privs, not
//                  dumpable, RLIMIT_CORE 0, RLIMIT_NOFILE bounded
//   seccomp-BPF    an allow-list of what V8, libuv, gRPC and the runtime use once started;
//                  anything else fails with EPERM, and a few calls that only an exploit
//                  makes (execve, ptrace, fork, process_vm_*) kill the process, which
//                  first names the call on the side channel, so that the host can say
//                  "was killed by the sandbox: syscall execve"
//
// Two steps, because namespaces and capabilities are per thread and V8 starts threads:
//   enter()      first thing in main, single-threaded: user, namespaces, the empty root,
//                capabilities, rlimits, cwd, umask;
//   lock_down()  once the engine and channel exist, before Ready: no_new_privs, not
//                dumpable, seccomp on every thread (TSYNC).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "airlock/status.h"

namespace airlock::sandbox {

struct Policy {
  bool enabled = true;
  // Folders or files the extension may read (bound read-only at the same path).
  std::vector<std::string> readable;
  // When started as root: run as this user (uid, gid >= 0), else stay root inside the
  // user namespace.
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  uint32_t max_open_files = 8192;  // RLIMIT_NOFILE (shared-memory buffers hold one each)
  // The shared-memory side channel: the SIGSYS handler sends its last words there (a
  // kLastWords side message naming the syscall) before the process dies. -1: none.
  int last_words_fd = -1;
};

// What was applied and what could not be, for the host (Ready) and for people.
struct Report {
  std::vector<std::string> applied;  // "userns", "mountns", "netns", "ipcns", "utsns", "caps", ...
  std::vector<std::string> missing;  // "netns: Operation not permitted", ...
  std::string summary() const;       // "applied: a,b,c; missing: x (why)"
};

Status enter(const Policy& policy, Report& report);
Status lock_down(const Policy& policy, Report& report);

// For tests and `airlock-extension explain`: the syscalls the filter allows, and those that
// kill (the rest fail with EPERM).
std::vector<std::string> allowed_syscalls();
std::vector<std::string> killing_syscalls();

}  // namespace airlock::sandbox
