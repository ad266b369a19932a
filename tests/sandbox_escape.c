// A stand-in for an exploited extension (a V8 bug turned into native code), loaded with
// LD_PRELOAD into airlock-extension by sandbox_test. It takes over libuv's uv_run, which
// the extension enters right after its sandbox is locked down, and does what
// $AIRLOCK_ESCAPE says:
//   probe   tries what an attacker tries first (read host files, open sockets, signal
//           the host, new namespaces, mount, privileged calls); if any of it works it
//           aborts (the host then reports signal 6), else it lets the extension serve
//   execve, ptrace, fork, process_vm_readv
//           makes that call, which the sandbox answers by killing the process
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static int worked(long rc) { return rc >= 0; }

static void probe(void) {
  int bad = 0;
  bad |= worked(open("/etc/passwd", O_RDONLY));                       // the host's files
  bad |= worked(open("/proc/self/status", O_RDONLY));                 // no /proc either
  bad |= worked(socket(AF_INET, SOCK_STREAM, 0));                     // no network
  bad |= worked(socket(AF_UNIX, SOCK_STREAM, 0));                     // no new local sockets
  bad |= worked(kill(getppid(), 0));                                  // no signals to others
  bad |= worked(kill(1, 0));
  bad |= worked(unshare(CLONE_NEWUSER));                              // no new namespaces
  bad |= worked(mount("none", "/", "tmpfs", 0, NULL));                // no mounts
  bad |= worked(mkdir("/x", 0700));                                   // read-only root
  bad |= worked(chroot("/"));                                        // no privileged calls
  bad |= worked(syscall(SYS_bpf, 0, NULL, 0));                        // no kernel attack surface
  bad |= worked(syscall(SYS_io_uring_setup, 1, NULL));
  bad |= worked(syscall(SYS_keyctl, 0, 0, 0, 0, 0));
  bad |= worked(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
  if (bad) abort();
  prctl(PR_SET_NAME, "probed", 0, 0, 0);  // tells the test the probe ran (and all failed)
}

int uv_run(void* loop, int mode) {
  static int (*real)(void*, int);
  if (!real) real = (int (*)(void*, int))dlsym(RTLD_NEXT, "uv_run");
  // Before the lock-down prctl works; under the filter it is refused (only PR_SET_NAME
  // and PR_GET_NAME pass).
  static int done;
  const char* what = getenv("AIRLOCK_ESCAPE");
  if (!done && what && prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 0) {
    done = 1;
    if (strcmp(what, "probe") == 0) {
      probe();
    } else if (strcmp(what, "execve") == 0) {
      char* argv[] = {"/bin/sh", NULL};
      execve("/bin/sh", argv, NULL);
    } else if (strcmp(what, "ptrace") == 0) {
      ptrace(PTRACE_ATTACH, getppid(), NULL, NULL);
    } else if (strcmp(what, "fork") == 0) {
      syscall(SYS_fork);
    } else if (strcmp(what, "process_vm_readv") == 0) {
      char buf[8];
      struct iovec local = {buf, sizeof buf}, remote = {(void*)&local, sizeof buf};
      syscall(SYS_process_vm_readv, getppid(), &local, 1, &remote, 1, 0);
    }
  }
  return real(loop, mode);
}
