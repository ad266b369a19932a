// Starting, signalling and reaping child processes, only ever through pidfds.
//
// A pid is a number anyone can reuse; a pidfd names one process for as long as it is
// open. So every child is created with CLONE_PIDFD (never "spawn, then look the pid
// up"), signalled with pidfd_send_signal and reaped with waitid(P_PIDFD). A pidfd that
// comes from elsewhere (the zygote) is accepted only once adopt_child() has proven it
// names a live child of this process (waitid answers ECHILD for anything else).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "airlock/status.h"

namespace airlock::detail {

struct ChildProcess {
  pid_t pid = -1;    // for messages and /proc; never passed to kill()
  int pidfd = -1;    // readable when the process exits
  int host_fd = -1;  // our end of its channel socketpair (extensions only)
};

// What a new process gets: argv[0] is the binary; `fds` maps our descriptors to the
// numbers the child sees (dst 0..n). Every other descriptor of ours is closed in the
// child (close_range), signals start at their defaults with none blocked.
struct SpawnSpec {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // the child's whole environment
  std::vector<std::pair<int, int>> fds;  // {ours, child's}
};

// clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) + execve, as posix_spawn does but with a
// pidfd from the start and no inherited descriptors. NotFound if the binary is missing.
Result<ChildProcess> spawn_process(const SpawnSpec& spec);

// Creates the channel socketpair and starts an extension with its end as fd 3 and the
// shared-memory side channel `side_fd` as fd 4; stdin and stdout are /dev/null, stderr
// is ours (the extension's own log lines travel over the channel).
Result<ChildProcess> spawn_extension(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                     int side_fd);

// Accepts a pidfd we did not create: it must be a pidfd and name a child of this
// process that has not been reaped, is not `not_pid` (the zygote), and holds as its fd 3
// the socket whose inode is `socket_inode` (the end of a socketpair we made for it, so
// no process but the one forked for us can pass). Takes the fd (closed on failure);
// the error says what was wrong.
Result<ChildProcess> adopt_child(int pidfd, pid_t not_pid, uint64_t socket_inode);

// The inode of a socket, 0 on error (what /proc/PID/fd/N shows as "socket:[INODE]").
uint64_t socket_inode(int fd);

// The pid a pidfd names (from /proc/self/fdinfo), -1 if unknown.
pid_t pid_of(int pidfd);

// pidfd_send_signal; false if the process is gone (ESRCH) or the fd is bad.
bool signal_child(int pidfd, int sig);

// Reaps the child if it has exited: true and a description ("exited with status 3",
// "was killed by signal 9 (Killed)") in `how`; false while it still runs.
bool try_reap(int pidfd, std::string* how, int* killed_by = nullptr);

// Kills (SIGKILL) and reaps a child we will not supervise, then closes its pidfd.
void kill_and_reap(ChildProcess& child);

// Resolves the extension binary: explicit path, $AIRLOCK_EXTENSION, next to this
// program, then the path the library was built with.
Result<std::string> find_extension_binary(const std::string& configured);

}  // namespace airlock::detail
