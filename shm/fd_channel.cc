#include "airlock/shm/fd_channel.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

namespace airlock::shm {
namespace {

Error sys_error(Code c, const char* what) {
  return make_error(c, std::string(what) + ": " + std::strerror(errno));
}

// The rest of a short stream write, without the fds (they went with the first part).
// Blocks even on an O_NONBLOCK socket: stopping half-way would break the peer's framing.
Status send_rest(int sock, std::string_view rest) {
  while (!rest.empty()) {
    ssize_t n = ::send(sock, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{sock, POLLOUT, 0};
      ::poll(&p, 1, -1);
      continue;
    }
    if (n < 0) return sys_error(Code::Unavailable, "send");
    rest.remove_prefix(static_cast<size_t>(n));
  }
  return ok_status();
}

// One sendmsg() with SCM_RIGHTS; 0 or the errno, and the bytes it took in *sent.
int send_once(int sock, std::span<const int> fds, std::string_view bytes, int flags,
              size_t* sent) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // Sized for the largest case; aligned as cmsghdr requires.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    const size_t data_len = sizeof(int) * fds.size();
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(data_len);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(data_len);
    std::memcpy(CMSG_DATA(c), fds.data(), data_len);
  }
  ssize_t n;
  do n = ::sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  *sent = static_cast<size_t>(n);
  return 0;
}

Status check_send_args(std::span<const int> fds, std::string_view bytes) {
  if (bytes.empty()) return make_error(Code::InvalidArgument, "send_fds: needs at least one byte");
  if (fds.size() > kMaxFdsPerMessage)
    return make_error(Code::InvalidArgument, "send_fds: more than 253 fds in one message");
  return ok_status();
}

Error send_error(int err) {
  errno = err;
  return sys_error(Code::Unavailable, "sendmsg SCM_RIGHTS");
}


void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

}  // namespace

Status send_fds(int sock, std::span<const int> fds, std::string_view bytes, bool nonblocking) {
  if (auto s = check_send_args(fds, bytes); !s) return s;
  size_t sent = 0;
  if (int err = send_once(sock, fds, bytes, nonblocking ? MSG_DONTWAIT : 0, &sent))
    return send_error(err);
  return send_rest(sock, bytes.substr(sent));
}

Result<std::optional<Received>> recv_fds(int sock, size_t max_bytes, size_t max_fds,
                                         bool nonblocking) {
  if (max_bytes == 0) return make_error(Code::InvalidArgument, "recv_fds: max_bytes is 0");
  if (max_fds > kMaxFdsPerMessage) max_fds = kMaxFdsPerMessage;
  Received out;
  out.bytes.resize(max_bytes);
  iovec iov{out.bytes.data(), max_bytes};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = max_fds ? control : nullptr;
  msg.msg_controllen = max_fds ? CMSG_SPACE(sizeof(int) * max_fds) : 0;
  const int flags = MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do n = ::recvmsg(sock, &msg, flags);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && nonblocking) return std::optional<Received>();
  if (n < 0) return sys_error(Code::Unavailable, "recvmsg");

  // Take ownership of whatever arrived first, so every error path below closes it.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.fds.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC)
    return make_error(Code::InvalidArgument, "recv_fds: fds truncated (too many, or out of fds)");
  if (msg.msg_flags & MSG_TRUNC)
    return make_error(Code::InvalidArgument, "recv_fds: message larger than " +
                                                 std::to_string(max_bytes) + " bytes");
  if (n == 0) return make_error(Code::Unavailable, "recv_fds: peer closed");
  out.bytes.resize(static_cast<size_t>(n));
  return std::optional<Received>(std::move(out));
}

Result<std::pair<FdChannel, FdChannel>> FdChannel::pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return sys_error(Code::ResourceExhausted, "socketpair");
  return std::pair<FdChannel, FdChannel>(FdChannel(UniqueFd(sv[0])), FdChannel(UniqueFd(sv[1])));
}

Status FdChannel::send(std::span<const int> fds, std::string_view bytes, int timeout_ms) {
  if (!sock_) return make_error(Code::Unavailable, "fd channel closed");
  if (auto s = check_send_args(fds, bytes); !s) return s;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    size_t sent = 0;
    const int err = send_once(sock_.get(), fds, bytes, MSG_DONTWAIT, &sent);
    if (err == 0) return send_rest(sock_.get(), bytes.substr(sent));
    if (err != EAGAIN && err != EWOULDBLOCK) return send_error(err);
    // The peer is not reading: wait for room, but not forever.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return make_error(Code::Timeout, "fd channel: peer not reading");
    pollfd p{sock_.get(), POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(left.count()));
  }
}

Result<std::optional<Received>> FdChannel::try_recv(size_t max_bytes, size_t max_fds) {
  if (!sock_) return make_error(Code::Unavailable, "fd channel closed");
  return recv_fds(sock_.get(), max_bytes, max_fds, /*nonblocking=*/true);
}

Status FdChannel::announce(uint64_t id, int fd, uint64_t size, int timeout_ms) {
  char m[kSideMessageBytes] = {};
  m[0] = static_cast<char>(SideMessage::Kind::kAnnounce);
  put_u64(m + 8, id);
  put_u64(m + 16, size);
  const int fds[1] = {fd};
  return send(fds, std::string_view(m, sizeof m), timeout_ms);
}

Status FdChannel::drop(uint64_t id, int timeout_ms) {
  char m[kSideMessageBytes] = {};
  m[0] = static_cast<char>(SideMessage::Kind::kDrop);
  put_u64(m + 8, id);
  return send({}, std::string_view(m, sizeof m), timeout_ms);
}

Status FdChannel::give_back(uint64_t id, int timeout_ms) {
  char m[kSideMessageBytes] = {};
  m[0] = static_cast<char>(SideMessage::Kind::kReturn);
  put_u64(m + 8, id);
  return send({}, std::string_view(m, sizeof m), timeout_ms);
}

Status FdChannel::offer_ring(int fd, uint64_t capacity, int timeout_ms) {
  char m[kSideMessageBytes] = {};
  m[0] = static_cast<char>(SideMessage::Kind::kRing);
  put_u64(m + 16, capacity);
  const int fds[1] = {fd};
  return send(fds, std::string_view(m, sizeof m), timeout_ms);
}

Result<SideMessage> parse_side_message(std::string_view bytes, std::vector<UniqueFd> fds) {
  if (bytes.size() != kSideMessageBytes)
    return make_error(Code::InvalidArgument, "fd channel: bad message size " +
                                                 std::to_string(bytes.size()));
  SideMessage m;
  const auto kind = static_cast<uint8_t>(bytes[0]);
  m.id = get_u64(bytes.data() + 8);
  m.size = get_u64(bytes.data() + 16);
  if (kind == static_cast<uint8_t>(SideMessage::Kind::kAnnounce) && fds.size() == 1) {
    m.kind = SideMessage::Kind::kAnnounce;
    m.fd = std::move(fds[0]);
  } else if (kind == static_cast<uint8_t>(SideMessage::Kind::kDrop) && fds.empty()) {
    m.kind = SideMessage::Kind::kDrop;
  } else if (kind == static_cast<uint8_t>(SideMessage::Kind::kReturn) && fds.empty()) {
    m.kind = SideMessage::Kind::kReturn;
  } else if (kind == static_cast<uint8_t>(SideMessage::Kind::kLastWords) && fds.empty()) {
    m.kind = SideMessage::Kind::kLastWords;
  } else if (kind == static_cast<uint8_t>(SideMessage::Kind::kRing) && fds.size() == 1) {
    m.kind = SideMessage::Kind::kRing;
    m.fd = std::move(fds[0]);
  } else {
    return make_error(Code::InvalidArgument, "fd channel: bad message kind " +
                                                 std::to_string(kind) + " with " +
                                                 std::to_string(fds.size()) + " fds");
  }
  return m;
}

Result<std::optional<SideMessage>> FdChannel::try_recv_message() {
  // Room for one more byte and fd than allowed, so oversize shows up as a mismatch
  // rather than only as truncation.
  auto r = try_recv(kSideMessageBytes + 1, 2);
  if (!r) return r.take_error();
  if (!r->has_value()) return std::optional<SideMessage>();
  Received& in = **r;
  auto m = parse_side_message(in.bytes, std::move(in.fds));
  if (!m) return m.take_error();
  return std::optional<SideMessage>(std::move(*m));
}

}  // namespace airlock::shm
