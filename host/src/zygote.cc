#include "zygote.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace airlock::detail {

Zygote::~Zygote() { stop(); }

void Zygote::stop() {
  if (sock_ >= 0) close(sock_);  // the zygote exits when its socket closes
  sock_ = -1;
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
}

Status Zygote::start() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return make_error(Code::Unavailable, std::string("zygote socketpair: ") + strerror(errno));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<std::string> args = {binary_, "zygote", "--fd", "3"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  char* envp[] = {nullptr};
  int rc = posix_spawn(&pid_, binary_.c_str(), &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    pid_ = -1;
    return make_error(Code::Unavailable, std::string("cannot start zygote: ") + strerror(rc));
  }
  sock_ = sv[0];
  return ok_status();
}

Result<ChildProcess> Zygote::spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                   int side_fd) {
  if (sock_ < 0) {
    if (auto st = start(); !st.ok()) return st.take_error();
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return make_error(Code::ResourceExhausted, std::string("socketpair: ") + strerror(errno));
  }
  std::string msg;
  for (auto& a : argv) msg.append(a).push_back('\0');
  msg.push_back('\0');
  for (auto& e : env) msg.append(e).push_back('\0');
  msg.push_back('\0');
  char cbuf[CMSG_SPACE(2 * sizeof(int))] = {};
  iovec iov{msg.data(), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(2 * sizeof(int));
  const int fds[2] = {sv[1], side_fd};
  std::memcpy(CMSG_DATA(c), fds, sizeof fds);
  ssize_t sent = sendmsg(sock_, &mh, MSG_NOSIGNAL);
  close(sv[1]);
  int32_t pid = -1;
  pollfd pfd{sock_, POLLIN, 0};
  bool ok = sent == static_cast<ssize_t>(msg.size()) && poll(&pfd, 1, 2000) == 1 &&
            recv(sock_, &pid, sizeof pid, 0) == sizeof pid && pid > 0;
  if (!ok) {
    close(sv[0]);
    stop();  // a broken zygote is replaced on the next spawn
    return make_error(Code::Unavailable, "zygote did not fork (" + std::to_string(pid) + ")");
  }
  return watch_child(pid, sv[0]);
}

}  // namespace airlock::detail
