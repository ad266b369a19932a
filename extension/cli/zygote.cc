#include "cli/zygote.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "airlock/zygote_wire.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace airlock::cli {
namespace {

namespace zw = proto::zygote;

// One datagram with at most two fds (the child's channel and side channel).
struct Incoming {
  ssize_t n = 0;
  bool truncated = false;
  int fds[2] = {-1, -1};
  int nfds = 0;
};

Incoming receive(int sock, char* buf, size_t cap) {
  Incoming in;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(2 * sizeof(int))];
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  in.n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (in.n <= 0) return in;
  in.truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (in.nfds < 2) {
        in.fds[in.nfds++] = fd;
      } else {
        close(fd);
        in.truncated = true;
      }
    }
  }
  return in;
}

bool send_reply(int sock, const zw::Reply& r, int pidfd) {
  std::string bytes = zw::encode_reply(r);
  iovec iov{bytes.data(), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  if (pidfd >= 0) {
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pidfd, sizeof pidfd);
  }
  return sendmsg(sock, &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

// Puts the child's channel at fd 3 and its side channel at fd 4 *in the zygote*, before
// the fork: the child is born holding them there, which is what the host checks (it
// reads /proc/CHILD/fd/3) before it lets the child go on. Closes what it was given.
bool place_child_fds(int fds[2]) {
  int ch = fcntl(fds[0], F_DUPFD, 10);
  int side = fcntl(fds[1], F_DUPFD, 10);
  close(fds[0]);
  close(fds[1]);
  fds[0] = fds[1] = -1;
  bool ok = ch >= 0 && side >= 0 && dup2(ch, 3) == 3 && dup2(side, 4) == 4;
  if (ch >= 0) close(ch);
  if (side >= 0) close(side);
  return ok;
}

}  // namespace

int run_zygote(int fd_in, const std::function<int(std::vector<std::string>&)>& run_child) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGCHLD, SIG_DFL);  // children belong to the host (CLONE_PARENT), never to us
  // Our socket moves out of the way: 3 and 4 are where each child's descriptors go.
  const int fd = fcntl(fd_in, F_DUPFD_CLOEXEC, 10);
  if (fd < 0) return 1;
  if (fd_in != fd) close(fd_in);
  std::string hello = zw::encode_hello();
  if (send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(hello.size())) return 0;
  static char buf[zw::kMaxRequestBytes + 1];
  for (;;) {
    Incoming in = receive(fd, buf, sizeof buf);
    if (in.n <= 0) return 0;  // the host is gone: so are we
    auto req = zw::parse_request(std::string_view(buf, static_cast<size_t>(in.n)));
    zw::Reply reply{req.ok() ? req->seq : 0, -EINVAL};
    int pidfd = -1;
    if (req.ok() && !in.truncated && in.nfds == 2 && place_child_fds(in.fds)) {
      long pid = syscall(SYS_clone, CLONE_PARENT | CLONE_PIDFD | SIGCHLD, nullptr, &pidfd, nullptr, nullptr);
      if (pid == 0) {
        syscall(SYS_close_range, 5u, ~0u, 0u);  // the zygote's socket and anything else
        // Wait for the host's go-ahead: it first proves we are the process it asked for.
        char go = 0;
        if (read(3, &go, 1) != 1 || go != 'G') _exit(122);
        clearenv();
        for (auto& e : req->env) putenv(strdup(e.c_str()));
        _exit(run_child(req->argv));
      }
      reply.status = pid > 0 ? 0 : -errno;
      if (pid < 0) pidfd = -1;
      close(3);
      close(4);
    }
    for (int f : in.fds) {
      if (f >= 0) close(f);
    }
    bool sent = send_reply(fd, reply, pidfd);
    if (pidfd >= 0) close(pidfd);
    if (!sent) return 0;
  }
}

}  // namespace airlock::cli
