#include "zygote.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "airlock/zygote_wire.h"

namespace airlock::detail {

namespace zw = proto::zygote;

namespace {

uv_poll_t* watch(uv_loop_t* loop, int fd, void* data, uv_poll_cb cb) {
  auto* p = new uv_poll_t;
  uv_poll_init(loop, p, fd);
  p->data = data;
  uv_poll_start(p, UV_READABLE | UV_DISCONNECT, cb);
  return p;
}

void unwatch(uv_poll_t*& p) {
  if (!p) return;
  uv_poll_stop(p);
  p->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(p), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  p = nullptr;
}

// One datagram, without blocking. nullopt-like: returns false when nothing is there.
// Every received fd is returned (and owned by the caller); more than `max_fds` or a
// truncated message sets `truncated`.
struct Datagram {
  std::string bytes;
  std::vector<int> fds;
  bool truncated = false;
};
int recv_datagram(int sock, Datagram& d) {
  char buf[zw::kReplyBytes + 64];
  alignas(cmsghdr) char cbuf[CMSG_SPACE(4 * sizeof(int))];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
  if (n == 0) return -1;  // zygote closed its end
  d.bytes.assign(buf, static_cast<size_t>(n));
  d.truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      d.fds.push_back(fd);
    }
  }
  return 1;
}

void close_all(std::vector<int>& fds) {
  for (int f : fds) close(f);
  fds.clear();
}

}  // namespace

Zygote::Zygote(uv_loop_t* loop, std::string binary, std::function<bool(pid_t)> is_known)
    : loop_(loop), binary_(std::move(binary)), is_known_(std::move(is_known)) {}

Zygote::~Zygote() {
  fail("");  // silently: the host is going away
  state_ = State::Disabled;
}

bool Zygote::spawn(std::vector<std::string> argv, std::vector<std::string> env, int side_fd, Done done) {
  if (state_ == State::Off) start();
  if (state_ != State::Ready && state_ != State::Busy) return false;
  int dup = fcntl(side_fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return false;
  queue_.push_back({std::move(argv), std::move(env), dup, std::move(done)});
  if (state_ == State::Ready) send_next();
  return true;
}

void Zygote::start() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    ++failures_;
    return;
  }
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  auto child = spawn_process({{binary_, "zygote", "--fd", "3"}, {}, {{null, 0}, {null, 1}, {STDERR_FILENO, 2}, {sv[1], 3}}});
  if (null >= 0) close(null);
  close(sv[1]);
  if (!child.ok()) {
    close(sv[0]);
    ++failures_;
    state_ = failures_ >= kMaxFailures ? State::Disabled : State::Off;
    spdlog::warn("zygote: {}; extensions start with exec", child.error().message);
    return;
  }
  proc_ = child.value();
  proc_.host_fd = sv[0];
  state_ = State::Starting;
  sock_watch_ = watch(loop_, proc_.host_fd, this, [](uv_poll_t* p, int, int) {
    if (p->data) static_cast<Zygote*>(p->data)->on_readable();
  });
  exit_watch_ = watch(loop_, proc_.pidfd, this, [](uv_poll_t* p, int, int) {
    if (!p->data) return;
    auto* z = static_cast<Zygote*>(p->data);
    z->on_readable();  // what it said before dying counts (a reply already sent)
    if (z->state_ != State::Off && z->state_ != State::Disabled) z->fail("exited");
  });
  timer_ = LoopTimer::start(loop_, kHelloTimeoutMs, [this] {
    fail("sent no hello within " + std::to_string(kHelloTimeoutMs) + " ms");
  });
}

void Zygote::send_next() {
  if (state_ != State::Ready || queue_.empty()) return;
  Pending p = std::move(queue_.front());
  queue_.pop_front();
  auto bytes = zw::encode_request({++seq_, p.argv, p.env});
  int sv[2] = {-1, -1};
  if (!bytes.ok() || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    close(p.side_fd);
    p.done(bytes.ok() ? Error{Code::ResourceExhausted, std::string("socketpair: ") + strerror(errno)} : bytes.error());
    return send_next();
  }
  iovec iov{bytes->data(), bytes->size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(2 * sizeof(int))] = {};
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(2 * sizeof(int));
  const int fds[2] = {sv[1], p.side_fd};
  std::memcpy(CMSG_DATA(c), fds, sizeof fds);
  inode_ = socket_inode(sv[1]);
  // Never blocks: a zygote that stopped reading has a full socket, and that is a failure.
  ssize_t sent = sendmsg(proc_.host_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  const int err = errno;
  close(sv[1]);
  close(p.side_fd);
  in_flight_host_fd_ = sv[0];
  in_flight_done_ = std::move(p.done);
  state_ = State::Busy;
  if (sent != static_cast<ssize_t>(bytes->size())) return fail(std::string("does not take requests (") + strerror(err) + ")");
  timer_ = LoopTimer::start(loop_, kReplyTimeoutMs, [this] {
    fail("did not answer a spawn request within " + std::to_string(kReplyTimeoutMs) + " ms");
  });
}

void Zygote::on_readable() {
  while (state_ == State::Starting || state_ == State::Busy || state_ == State::Ready) {
    Datagram d;
    int r = recv_datagram(proc_.host_fd, d);
    if (r == 0) return;
    if (r < 0) return fail("closed its socket");
    if (d.truncated) {
      close_all(d.fds);
      return fail("sent an oversized message or too many descriptors");
    }
    if (state_ == State::Starting) {
      bool fds = !d.fds.empty();
      close_all(d.fds);
      auto st = zw::parse_hello(d.bytes);
      if (!st.ok() || fds) return fail(st.ok() ? "sent descriptors with its hello" : "sent a bad hello: " + st.error().message);
      LoopTimer::stop(timer_);
      state_ = State::Ready;
      send_next();
      continue;
    }
    if (state_ == State::Ready) {  // nothing was asked
      close_all(d.fds);
      return fail("sent a message nobody asked for");
    }
    on_reply(d.bytes, d.fds);
  }
}

void Zygote::on_reply(const std::string& bytes, std::vector<int>& fds) {
  auto reply = zw::parse_reply(bytes);
  if (!reply.ok()) {
    close_all(fds);
    return fail("sent a bad reply: " + reply.error().message);
  }
  if (reply->seq != seq_) {
    close_all(fds);
    return fail("answered request " + std::to_string(reply->seq) + " while " + std::to_string(seq_) + " was asked");
  }
  if (reply->status != 0 && !fds.empty()) {
    close_all(fds);
    return fail("sent descriptors with a failure reply");
  }
  if (reply->status == 0 && fds.size() != 1) {
    close_all(fds);
    return fail("sent " + std::to_string(fds.size()) + " descriptors, expected the child's pidfd");
  }
  LoopTimer::stop(timer_);
  Done done = std::move(in_flight_done_);
  int host_fd = std::exchange(in_flight_host_fd_, -1);
  if (reply->status != 0) {  // the zygote is fine, the fork was not (EAGAIN, ENOMEM): exec this one
    close(host_fd);
    state_ = State::Ready;
    done(make_error(Code::Unavailable, std::string("zygote could not fork: ") + strerror(-reply->status)));
    return send_next();
  }
  int pidfd = fds[0];
  fds.clear();
  auto child = adopt_child(pidfd, proc_.pid, inode_);
  if (child.ok() && is_known_ && is_known_(child->pid)) {
    ChildProcess lie = child.value();
    close(lie.pidfd);  // another extension's pidfd: not ours to kill here
    child = make_error(Code::PermissionDenied, "the pidfd names pid " + std::to_string(lie.pid) + ", which is another extension");
  }
  if (!child.ok()) {
    close(host_fd);
    // `done` first: fail() must not answer this request a second time.
    done(make_error(Code::Unavailable, "zygote sent a bad child: " + child.error().message));
    return fail("sent a bad child (" + child.error().message + ")");
  }
  // The proof is done: let the child go on (it waits for this byte before anything else).
  if (write(host_fd, "G", 1) != 1) {
    kill_and_reap(child.value());
    close(host_fd);
    state_ = State::Ready;
    done(make_error(Code::Unavailable, std::string("zygote child: ") + strerror(errno)));
    return send_next();
  }
  child->host_fd = host_fd;
  state_ = State::Ready;
  done(std::move(child).value());
  send_next();
}

void Zygote::drain_late_replies() {
  // A reply sent just before the zygote died (or just after we gave up on it) is still
  // in the socket: its child is ours and must not outlive the request.
  for (;;) {
    Datagram d;
    if (recv_datagram(proc_.host_fd, d) <= 0) return;
    for (int fd : d.fds) {
      auto child = adopt_child(fd, proc_.pid, inode_);
      if (child.ok() && !(is_known_ && is_known_(child->pid))) {
        kill_and_reap(child.value());
      } else if (child.ok()) {
        close(child->pidfd);
      }
    }
  }
}

void Zygote::close_handles() {
  LoopTimer::stop(timer_);
  unwatch(sock_watch_);
  unwatch(exit_watch_);
}

void Zygote::fail(const std::string& why) {
  close_handles();
  const bool was_running = proc_.pidfd >= 0;
  if (was_running) {
    const pid_t pid = proc_.pid;
    signal_child(proc_.pidfd, SIGKILL);
    int sock = std::exchange(proc_.host_fd, -1);
    kill_and_reap(proc_);  // SIGKILL'ed: the wait is short
    proc_.host_fd = sock;
    drain_late_replies();
    close(sock);
    proc_ = {};
    if (!why.empty()) {
      ++failures_;
      spdlog::warn("zygote (pid {}) {}; it was killed and this spawn starts with exec{}", pid, why,
                   failures_ >= kMaxFailures ? " (zygote disabled for this host after " + std::to_string(failures_) + " failures)"
                                             : "");
    }
  }
  state_ = failures_ >= kMaxFailures ? State::Disabled : State::Off;
  Error err = make_error(Code::Unavailable, "zygote unavailable" + (why.empty() ? std::string() : " (" + why + ")"));
  if (in_flight_done_) {
    if (in_flight_host_fd_ >= 0) close(std::exchange(in_flight_host_fd_, -1));
    std::exchange(in_flight_done_, nullptr)(err);
  }
  auto queue = std::move(queue_);
  queue_.clear();
  for (auto& p : queue) {
    close(p.side_fd);
    p.done(err);
  }
}

}  // namespace airlock::detail
