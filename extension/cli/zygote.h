// The zygote: a pre-loaded airlock-extension (libnode already mapped and relocated, V8
// not yet initialised, so no threads) that forks new extensions on request. Forking
// skips exec and dynamic loading, the bulk of an extension's start-up.
//
// Protocol: proto/include/airlock/zygote_wire.h (a versioned hello, then one request
// and one reply per spawn; the reply carries the child's pidfd, never a pid number).
// The child is created with clone(CLONE_PARENT | CLONE_PIDFD), already holding its
// channel at fd 3: its parent is the host, which proves the pidfd names its own child
// holding that socket, sends the go-ahead byte, then supervises it through the pidfd
// exactly like an exec'ed extension.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace airlock::cli {

// Serves spawn requests until the host closes the socket. `run_child` runs in each new
// child with its argv (the child's socket is already fd 3) and returns its exit code.
int run_zygote(int fd, const std::function<int(std::vector<std::string>&)>& run_child);

}  // namespace airlock::cli
