#include "process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace airlock::detail {

namespace {
std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }
}  // namespace

Result<ChildProcess> spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                 int side_fd) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return make_error(Code::ResourceExhausted, errno_text("socketpair"));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  // dup2 onto 3 clears CLOEXEC for the child's copy only; every other fd of ours is
  // CLOEXEC (libuv, gRPC and this file open them so), stdin becomes /dev/null.
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
  posix_spawn_file_actions_adddup2(&fa, side_fd, 4);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);  // do not inherit the host thread's blocked signals
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0].c_str(), &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    errno = rc;
    return make_error(rc == ENOENT ? Code::NotFound : Code::Internal, errno_text(("cannot start " + argv[0]).c_str()));
  }
  return watch_child(pid, sv[0]);
}

Result<ChildProcess> watch_child(pid_t pid, int host_fd) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));  // close-on-exec by itself
  if (pidfd < 0) {
    std::string why = errno_text("pidfd_open");
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    close(host_fd);
    return make_error(Code::Internal, why);
  }
  return ChildProcess{pid, pidfd, host_fd};
}

int try_reap(pid_t pid) {
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) return status;
  if (r < 0 && errno == ECHILD) return 0;  // already reaped elsewhere
  return -1;
}

std::string describe_exit(int st) {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) {
    return "was killed by signal " + std::to_string(WTERMSIG(st)) + " (" + strsignal(WTERMSIG(st)) + ")";
  }
  return "ended (wait status " + std::to_string(st) + ")";
}

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
  if (const char* env = getenv("AIRLOCK_EXTENSION"); env && usable(env)) return std::string(env);
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && usable((self.parent_path() / "airlock-extension").string())) {
    return (self.parent_path() / "airlock-extension").string();
  }
#ifdef AIRLOCK_DEFAULT_EXTENSION_BIN
  if (usable(AIRLOCK_DEFAULT_EXTENSION_BIN)) return std::string(AIRLOCK_DEFAULT_EXTENSION_BIN);
#endif
  std::string msg = "airlock-extension not found (tried:";
  for (auto& t : tried) msg += " " + t;
  return make_error(Code::NotFound, msg + "); set HostOptions::extension_binary or $AIRLOCK_EXTENSION");
}

}  // namespace airlock::detail
