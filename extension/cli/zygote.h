// The zygote: a pre-loaded airlock-extension (libnode already mapped and relocated, V8
// not yet initialised, so no threads) that forks new extensions on request. Forking
// skips exec and dynamic loading, the bulk of an extension's start-up.
//
// Protocol on the inherited SOCK_SEQPACKET socket (fd 3), one message per request:
//   host -> zygote: argv of `airlock-extension` as NUL-separated strings, then "\0\0",
//                   then the environment the same way; SCM_RIGHTS: the new extension's
//                   end of its socketpair (becomes fd 3) and of its shared-memory side
//                   channel (fd 4).
//   zygote -> host: int32 pid of the new extension (or -errno).
// The child is created with clone(CLONE_PARENT): its parent is the host, which reaps and
// supervises it exactly like an exec'ed extension.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace airlock::cli {

// Serves spawn requests until the host closes the socket. `run_child` runs in each new
// child with its argv (the child's socket is already fd 3) and returns its exit code.
int run_zygote(int fd, const std::function<int(std::vector<std::string>&)>& run_child);

}  // namespace airlock::cli
