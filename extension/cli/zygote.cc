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
#include <algorithm>
#include <cstring>

namespace airlock::cli {
namespace {

std::vector<std::string> split_block(const char*& p, const char* end) {
  std::vector<std::string> out;
  while (p < end && *p != '\0') {
    size_t n = strnlen(p, static_cast<size_t>(end - p));
    out.emplace_back(p, n);
    p += n + 1;
  }
  ++p;  // the empty string that ends the block
  return out;
}

}  // namespace

int run_zygote(int fd, const std::function<int(std::vector<std::string>&)>& run_child) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGCHLD, SIG_DFL);  // children belong to the host (CLONE_PARENT), never to us
  static char buf[64 * 1024];
  for (;;) {
    char cbuf[CMSG_SPACE(2 * sizeof(int))];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return 0;  // the host is gone: so are we
    int fds[2] = {-1, -1};  // the extension's socket and its shared-memory side channel
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t n = std::min<size_t>(2, (c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        std::memcpy(fds, CMSG_DATA(c), n * sizeof(int));
      }
    }
    int child_fd = fds[0];
    int32_t reply = -EINVAL;
    if (child_fd >= 0 && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
      const char* p = buf;
      const char* end = buf + n;
      auto argv = split_block(p, end);
      auto env = p < end ? split_block(p, end) : std::vector<std::string>{};
      long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
      if (pid == 0) {
        close(fd);
        if (dup2(child_fd, 3) < 0) _exit(120);
        if (fds[1] >= 0 && dup2(fds[1], 4) < 0) _exit(121);
        // fd 3 is free before the first dup2 (we closed our socket), so what recvmsg
        // gave us is >= 4; drop the originals that are not 3 or 4 now.
        for (int f : fds) {
          if (f > 4) close(f);
        }
        clearenv();
        for (auto& e : env) putenv(strdup(e.c_str()));
        _exit(run_child(argv));
      }
      reply = pid > 0 ? static_cast<int32_t>(pid) : -errno;
    }
    for (int f : fds) {
      if (f >= 0) close(f);
    }
    if (send(fd, &reply, sizeof reply, MSG_NOSIGNAL) != sizeof reply) return 0;
  }
}

}  // namespace airlock::cli
