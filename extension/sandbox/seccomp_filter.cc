// The seccomp-BPF allow-list (libseccomp) and lock_down(). What is allowed was found by
// running the whole test suite with AIRLOCK_SANDBOX_AUDIT=1 (every refused call logged,
// not refused) over V8 10.2, libuv and gRPC; docs/SECURITY.md lists the reasoning.
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "airlock/shm/fd_channel.h"
#include "sandbox/sandbox.h"

namespace airlock::sandbox {

namespace {

// Plain calls a running extension makes (memory, threads, time, its own descriptors).
const char* const kAllowed[] = {
    // memory
    "brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "msync", "mincore", "membarrier",
    "pkey_mprotect", "pkey_alloc", "pkey_free",  // V8 protects its code space with memory keys
    // threads, signals, time
    "futex", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "exit", "exit_group",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "restart_syscall",
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "sched_yield",
    "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getpriority", "getrusage", "times",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getpgrp", "uname", "sysinfo", "getrandom", "getcwd",
    // its own descriptors: the channel, the side channel, libuv's and gRPC's own, memfds
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
    "fstat", "newfstatat", "statx", "lseek", "ftruncate", "fallocate", "memfd_create", "fsync", "fdatasync",
    "pipe2", "eventfd2", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
    "ppoll", "select", "pselect6", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "shutdown", "getsockopt",
    "setsockopt", "getsockname", "getpeername",
};

// Calls only an exploit makes: the process dies, and tells the host which call it was.
const char* const kKilling[] = {"execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "fork", "vfork"};

std::atomic<bool> g_audit{false};

std::atomic<int> g_last_words_fd{-1};

void on_sigsys(int, siginfo_t* info, void* ctx) {
#if defined(__x86_64__)
  if (g_audit.load(std::memory_order_relaxed)) {
    // Audit (development only): log to stderr, make the call fail with EPERM, go on.
    // Async-signal-safe only: the number is formatted by hand.
    char buf[48] = "airlock sandbox audit: syscall ";
    size_t n = std::strlen(buf);
    char digits[16];
    int k = 0;
    for (unsigned v = static_cast<unsigned>(info->si_syscall); k == 0 || v; v /= 10) digits[k++] = static_cast<char>('0' + v % 10);
    while (k) buf[n++] = digits[--k];
    buf[n++] = '\n';
    (void)!write(2, buf, n);
    static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs[REG_RAX] = -EPERM;
    return;
  }
#else
  (void)ctx;
#endif
  // Last words: one kLastWords side message (fd_channel.h) naming the call. MSG_DONTWAIT:
  // a host that is not reading must not keep a dying process alive.
  char m[shm::kSideMessageBytes] = {};
  m[0] = static_cast<char>(shm::SideMessage::Kind::kLastWords);
  auto nr = static_cast<uint64_t>(static_cast<unsigned>(info->si_syscall));
  for (int i = 0; i < 8; ++i) m[8 + i] = static_cast<char>(nr >> (8 * i));
  if (int fd = g_last_words_fd.load(std::memory_order_relaxed); fd >= 0) (void)!send(fd, m, sizeof m, MSG_DONTWAIT | MSG_NOSIGNAL);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGSYS, &dfl, nullptr);
  sigset_t sys;  // blocked while its handler runs: unblock it, or the process only exits
  sigemptyset(&sys);
  sigaddset(&sys, SIGSYS);
  sigprocmask(SIG_UNBLOCK, &sys, nullptr);
  syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGSYS);
  syscall(SYS_exit_group, 128 + SIGSYS);
}

const char* g_failed_rule = "";

int add(scmp_filter_ctx f, uint32_t action, const char* name, std::initializer_list<scmp_arg_cmp> args = {}) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return 0;  // not on this architecture
  int rc = seccomp_rule_add_array(f, action, nr, static_cast<unsigned>(args.size()), args.size() ? args.begin() : nullptr);
  if (rc) g_failed_rule = name;
  return rc;
}

}  // namespace

std::vector<std::string> allowed_syscalls() {
  std::vector<std::string> v(std::begin(kAllowed), std::end(kAllowed));
  for (const char* s : {"clone (threads only)", "kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo (itself only)", "ioctl (FIONBIO, FIONREAD, FIOCLEX, FIONCLEX)",
                        "prctl (PR_SET_NAME, PR_GET_NAME)", "prlimit64 (reading only)", "clone3 (ENOSYS: threads fall back to clone)"}) {
    v.emplace_back(s);
  }
  return v;
}

std::vector<std::string> killing_syscalls() {
  std::vector<std::string> v(std::begin(kKilling), std::end(kKilling));
  v.emplace_back("clone (a new process)");
  return v;
}

Status lock_down(const Policy& p, Report& r) {
  if (!p.enabled) return ok_status();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return make_error(Code::PermissionDenied, std::string("no_new_privs: ") + strerror(errno));
  r.applied.push_back("no_new_privs");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0) r.applied.push_back("not-dumpable");
  const char* audit = getenv("AIRLOCK_SANDBOX_AUDIT");
  g_audit = audit && *audit == '1';
  g_last_words_fd = p.last_words_fd;

  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSYS, &sa, nullptr);

  scmp_filter_ctx f = seccomp_init(g_audit ? SCMP_ACT_TRAP : SCMP_ACT_ERRNO(EPERM));
  if (!f) return make_error(Code::Internal, "seccomp_init failed");
  int rc = seccomp_attr_set(f, SCMP_FLTATR_CTL_TSYNC, 1);  // every thread, V8's and gRPC's too
  // A binary tree over syscall numbers instead of a linear list: ~10 BPF instructions per
  // syscall instead of ~100 (libseccomp >= 2.5; older ones keep the list).
  (void)seccomp_attr_set(f, SCMP_FLTATR_CTL_OPTIMIZE, 2);
  for (const char* s : kAllowed) rc = rc ? rc : add(f, SCMP_ACT_ALLOW, s);
  // (In audit mode the default action is the trap already: libseccomp refuses a rule
  // that repeats the default.)
  if (!g_audit) {
    for (const char* s : kKilling) rc = rc ? rc : add(f, SCMP_ACT_TRAP, s);
  }
  const auto self = static_cast<scmp_datum_t>(getpid());
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)});
  if (!g_audit) rc = rc ? rc : add(f, SCMP_ACT_TRAP, "clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0)});
  rc = rc ? rc : add(f, SCMP_ACT_ERRNO(ENOSYS), "clone3");  // glibc then creates threads with clone
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "kill", {SCMP_A0(SCMP_CMP_EQ, self)});
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "tgkill", {SCMP_A0(SCMP_CMP_EQ, self)});
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "rt_sigqueueinfo", {SCMP_A0(SCMP_CMP_EQ, self)});
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "rt_tgsigqueueinfo", {SCMP_A0(SCMP_CMP_EQ, self)});
  for (unsigned long req : {FIONBIO, FIONREAD, FIOCLEX, FIONCLEX}) {
    rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "ioctl", {SCMP_A1(SCMP_CMP_EQ, req)});
  }
  for (int opt : {PR_SET_NAME, PR_GET_NAME}) rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "prctl", {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(opt))});
  rc = rc ? rc : add(f, SCMP_ACT_ALLOW, "prlimit64", {SCMP_A2(SCMP_CMP_EQ, 0)});
  if (rc == 0) rc = seccomp_load(f);
  seccomp_release(f);
  if (rc != 0) {
    return make_error(Code::PermissionDenied, std::string("seccomp (rule ") + g_failed_rule + "): " + strerror(-rc));
  }
  r.applied.push_back(g_audit ? "seccomp (AUDIT: nothing is refused)" : "seccomp");
  return ok_status();
}

}  // namespace airlock::sandbox
