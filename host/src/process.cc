#include "process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace airlock::detail {

namespace {

std::string errno_text(const std::string& what, int err = errno) { return what + ": " + std::strerror(err); }

// What the vfork'ed child needs, prepared by the parent: the child shares our memory
// (CLONE_VM) and must neither allocate nor take locks, only make system calls.
struct ChildArgs {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const int* src = nullptr;  // descriptor i of the child is src[i]
  int nfds = 0;
  int err = 0;  // written by the child if execve fails (we share memory until it exits)
};

// The kernel's struct sigaction (x86-64 and arm64 alike), for raw rt_sigaction.
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)();
  unsigned long mask;
};

// Runs in the child on its own stack, sharing our memory until execve. Raw system
// calls only: no libc state, no sanitizer interceptors.
__attribute__((no_sanitize_address)) int child_main(void* p) {
  auto* a = static_cast<ChildArgs*>(p);
  // Handlers are the parent's (a copy: no CLONE_SIGHAND); none may run here. Default
  // them all, then unblock what the parent blocked around clone().
  KernelSigaction dfl{};
  dfl.handler = SIG_DFL;
  for (int s = 1; s < 65; ++s) {
    if (s != SIGKILL && s != SIGSTOP) syscall(SYS_rt_sigaction, s, &dfl, nullptr, 8);
  }
  // Descriptors: every source first above the target range, then onto 0..n-1, then
  // close everything else (the host application's own descriptors stay its own).
  int tmp[16];
  for (int i = 0; i < a->nfds; ++i) {
    tmp[i] = static_cast<int>(syscall(SYS_fcntl, a->src[i], F_DUPFD, a->nfds));
    if (tmp[i] < 0) goto fail;
  }
  for (int i = 0; i < a->nfds; ++i) {
    if (syscall(SYS_dup3, tmp[i], i, 0) < 0) goto fail;
  }
  if (syscall(SYS_close_range, a->nfds, ~0u, 0) < 0) goto fail;
  {
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, 8);
  }
  syscall(SYS_execve, a->path, a->argv, a->envp);
fail:
  a->err = errno;
  syscall(SYS_exit_group, 127);
  return 127;
}

// "Pid:\t1234" from /proc/self/fdinfo/FD; -1 once reaped, 0 if in another namespace.
pid_t fdinfo_pid(int fd) {
  std::ifstream f("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Pid:", 0) == 0) return static_cast<pid_t>(std::strtol(line.c_str() + 4, nullptr, 10));
  }
  return -2;
}

}  // namespace

Result<ChildProcess> spawn_process(const SpawnSpec& spec) {
  if (spec.argv.empty()) return make_error(Code::InvalidArgument, "spawn: empty argv");
  if (spec.fds.size() > 16) return make_error(Code::InvalidArgument, "spawn: too many descriptors");
  std::vector<int> src(spec.fds.size(), -1);
  for (auto [ours, theirs] : spec.fds) {
    if (theirs < 0 || static_cast<size_t>(theirs) >= src.size() || src[theirs] != -1) {
      return make_error(Code::InvalidArgument, "spawn: child descriptors must be 0..n-1, each once");
    }
    src[theirs] = ours;
  }
  std::vector<char*> args, envp;
  for (auto& a : spec.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ChildArgs ca;
  ca.path = spec.argv[0].c_str();
  ca.argv = args.data();
  ca.envp = envp.data();
  ca.src = src.data();
  ca.nfds = static_cast<int>(src.size());

  constexpr size_t kStack = 64 * 1024;  // child_main needs a few hundred bytes
  void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return make_error(Code::ResourceExhausted, errno_text("spawn: stack"));
  // No signal handler of ours may run in the child while it shares our memory.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int pidfd = -1;
  pid_t pid = clone(child_main, static_cast<char*>(stack) + kStack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD,
                    &ca, &pidfd);
  const int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  munmap(stack, kStack);  // CLONE_VFORK: the child has exec'ed or exited by now
  if (pid < 0) return make_error(Code::ResourceExhausted, errno_text("clone", clone_errno));
  if (ca.err != 0) {  // execve failed; the child exited 127
    siginfo_t info{};
    waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED);
    close(pidfd);
    return make_error(ca.err == ENOENT ? Code::NotFound : Code::Internal,
                      errno_text("cannot start " + spec.argv[0], ca.err));
  }
  return ChildProcess{pid, pidfd, -1};
}

Result<ChildProcess> spawn_extension(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                     int side_fd) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return make_error(Code::ResourceExhausted, errno_text("socketpair"));
  }
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) {
    close(sv[0]);
    close(sv[1]);
    return make_error(Code::Internal, errno_text("/dev/null"));
  }
  auto child = spawn_process({argv, env, {{null, 0}, {null, 1}, {STDERR_FILENO, 2}, {sv[1], 3}, {side_fd, 4}}});
  close(null);
  close(sv[1]);
  if (!child.ok()) {
    close(sv[0]);
    return child.take_error();
  }
  child->host_fd = sv[0];
  return child;
}

pid_t pid_of(int pidfd) { return fdinfo_pid(pidfd); }

uint64_t socket_inode(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) ? static_cast<uint64_t>(st.st_ino) : 0;
}

Result<ChildProcess> adopt_child(int pidfd, pid_t not_pid, uint64_t inode) {
  auto reject = [pidfd](std::string why) -> Result<ChildProcess> {
    close(pidfd);
    return make_error(Code::PermissionDenied, std::move(why));
  };
  std::error_code ec;
  auto target = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(pidfd), ec);
  if (ec || target != "anon_inode:[pidfd]") return reject("the descriptor is not a pidfd (" + target.string() + ")");
  pid_t pid = fdinfo_pid(pidfd);
  if (pid <= 0) return reject("the pidfd names a process that is gone or outside our pid namespace");
  if (pid == not_pid) return reject("the pidfd names the zygote itself");
  // waitid accepts only our own children: anything else is ECHILD. WNOWAIT: look, do
  // not reap (an exit is for the supervisor to report).
  siginfo_t info{};
  if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return reject(errno == ECHILD ? "pid " + std::to_string(pid) + " is not a child of this process"
                                  : errno_text("waitid"));
  }
  // Our child, but the one forked for us? Only that one holds our socket: the zygote got
  // it, and it cannot hand it to a process of the application's. (The child waits for our
  // go-ahead before it touches anything, so fd 3 is still the socket; /proc/PID/fd needs
  // no ptrace rights over our own dumpable child.)
  std::error_code ec2;
  auto fd3 = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/fd/3", ec2);
  if (ec2 || fd3 != "socket:[" + std::to_string(inode) + "]") {
    return reject("pid " + std::to_string(pid) + " does not hold the socket made for it (fd 3: " +
                  (ec2 ? ec2.message() : fd3.string()) + ")");
  }
  return ChildProcess{pid, pidfd, -1};
}

bool signal_child(int pidfd, int sig) {
  return pidfd >= 0 && syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0;
}

bool try_reap(int pidfd, std::string* how, int* killed_by) {
  siginfo_t info{};
  if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG) != 0) {
    // ECHILD: someone else reaped it (an application calling waitpid(-1)).
    if (how) *how = errno == ECHILD ? "ended (reaped elsewhere; no exit status)" : errno_text("ended (waitid");
    return true;
  }
  if (info.si_pid == 0) return false;
  if (killed_by) *killed_by = info.si_code == CLD_EXITED ? 0 : info.si_status;
  if (how) {
    if (info.si_code == CLD_EXITED) {
      *how = "exited with status " + std::to_string(info.si_status);
    } else {
      *how = "was killed by signal " + std::to_string(info.si_status) + " (" + strsignal(info.si_status) + ")" +
             (info.si_code == CLD_DUMPED ? " and dumped core" : "");
    }
  }
  return true;
}

void kill_and_reap(ChildProcess& child) {
  if (child.pidfd >= 0) {
    signal_child(child.pidfd, SIGKILL);
    siginfo_t info{};
    // The pidfd may be non-blocking (libuv's poll handle made it so): waitid then says
    // EAGAIN until the process is gone, instead of waiting; wait for that with poll. (Not
    // waiting left the zygote of every destroyed Host running down unreaped:
    // memory_bench's "processes left after teardown".)
    while (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(child.pidfd), &info, WEXITED) != 0) {
      if (errno == EAGAIN) {
        pollfd p{child.pidfd, POLLIN, 0};
        (void)poll(&p, 1, -1);
      } else if (errno != EINTR) {
        break;
      }
    }
    close(child.pidfd);
  }
  if (child.host_fd >= 0) close(child.host_fd);
  child = {};
}

namespace {
// The folder of the file this function is in: libairlock.so, or the program the static
// library is linked into.
std::filesystem::path own_folder() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&find_extension_binary), &info) == 0 || !info.dli_fname) return {};
  std::error_code ec;
  auto p = std::filesystem::canonical(info.dli_fname, ec);
  return ec ? std::filesystem::path() : p.parent_path();
}
}  // namespace

Result<std::string> find_extension_binary(const std::string& configured) {
  namespace fs = std::filesystem;
  std::vector<std::string> tried;
  auto usable = [&](const std::string& p) {
    tried.push_back(p);
    return !p.empty() && access(p.c_str(), X_OK) == 0;
  };
  if (!configured.empty()) {
    if (usable(configured)) return configured;
    return make_error(Code::NotFound, "extension binary '" + configured + "' is missing or not executable");
  }
  if (const char* env = getenv("AIRLOCK_EXTENSION"); env && *env) {
    if (usable(env)) return std::string(env);
    return make_error(Code::NotFound, std::string("$AIRLOCK_EXTENSION='") + env + "' is missing or not executable");
  }
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && usable((self.parent_path() / "airlock-extension").string())) {
    return (self.parent_path() / "airlock-extension").string();
  }
  // Installed: <prefix>/lib/libairlock.so -> <prefix>/libexec/airlock/airlock-extension;
  // the build tree has the same layout (build/host/, build/tests/ ... -> build/libexec/).
  if (auto dir = own_folder(); !dir.empty()) {
    for (const fs::path& rel : {fs::path(AIRLOCK_LIBEXEC_FROM_LIBDIR), fs::path("../libexec/airlock")}) {
      auto candidate = (dir / rel / "airlock-extension").lexically_normal().string();
      if (usable(candidate)) return candidate;
    }
  }
  std::string msg = "airlock-extension not found (tried:";
  for (auto& t : tried) msg += " " + t;
  return make_error(Code::NotFound, msg + "); set HostOptions::extension_binary or $AIRLOCK_EXTENSION");
}

}  // namespace airlock::detail
