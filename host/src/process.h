// Starting and reaping extension processes. The host side of the socketpair stays with
// the host; the child gets its end as fd 3 and nothing else (no stdin, inherited
// stdout/stderr only until its log lines flow over the channel).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "airlock/status.h"

namespace airlock::detail {

struct ChildProcess {
  pid_t pid = -1;
  int pidfd = -1;    // readable when the process exits (pidfd_open)
  int host_fd = -1;  // our end of the socketpair
};

// Creates the socketpair and starts `argv` (argv[0] = binary) with the child's end as
// fd 3 and `side_fd` (the shared-memory side channel, see shm/) as fd 4.
Result<ChildProcess> spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                 int side_fd);

// Supervises a child we just started: a pidfd that becomes readable when it exits. On
// failure the child is killed and reaped and host_fd closed.
Result<ChildProcess> watch_child(pid_t pid, int host_fd);

// Reaps the process if it has exited; returns the wait status or -1 if still running.
int try_reap(pid_t pid);
// "exited with status 3", "was killed by signal 9 (Killed)".
std::string describe_exit(int wait_status);

// Resolves the extension binary: explicit path, $AIRLOCK_EXTENSION, next to this
// program, then the path the library was built with.
Result<std::string> find_extension_binary(const std::string& configured);

}  // namespace airlock::detail
