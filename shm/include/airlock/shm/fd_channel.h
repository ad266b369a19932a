// Passing fds between processes with SCM_RIGHTS, on a dedicated "side channel".
//
// Why a separate socketpair: the main channel is a libuv stream carrying length-prefixed
// frames. libuv reads it with plain read(2) into its own buffers, which would silently
// drop (and leak) any SCM_RIGHTS attached to those bytes, and a control message rides on
// a byte boundary the framing knows nothing about. So the host creates a second
// AF_UNIX SOCK_SEQPACKET socketpair next to the main one (inherited by the extension the
// same way): one datagram = one message with its fds, boundaries kept by the kernel.
//
// Ordering with the main channel: the sender passes a buffer's fd here *before* it
// writes a frame that refers to it. An AF_UNIX send queues the message on the receiver's
// socket before sendmsg() returns, so by the time the receiver reads the frame, the fd is
// already waiting here: a receiver that pumps this channel (Registry::pump) before
// resolving a frame's ShmRefs always finds the buffers the frame names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "airlock/shm/unique_fd.h"
#include "airlock/status.h"

namespace airlock::shm {

// Linux's SCM_MAX_FD: the most fds one message may carry.
constexpr size_t kMaxFdsPerMessage = 253;

struct Received {
  std::string bytes;
  std::vector<UniqueFd> fds;  // close-on-exec (MSG_CMSG_CLOEXEC)
};

// One sendmsg() of `bytes` (at least one byte: a message of only fds is not portable and
// a zero-length read means "peer closed") with `fds` attached as SCM_RIGHTS. On a stream
// socket the rest of a short write follows without fds. MSG_NOSIGNAL: a dead peer is
// Unavailable, not SIGPIPE. `nonblocking` makes a full socket Unavailable(EAGAIN) instead
// of blocking.
Status send_fds(int sock, std::span<const int> fds, std::string_view bytes,
                bool nonblocking = false);

// One recvmsg() of at most `max_bytes` bytes and `max_fds` fds. nullopt: nothing to read
// (only when `nonblocking`). Peer closed -> Unavailable. A truncated message or control
// part (MSG_TRUNC / MSG_CTRUNC, e.g. more fds than `max_fds` or RLIMIT_NOFILE reached)
// -> InvalidArgument, and every fd that did arrive is closed.
Result<std::optional<Received>> recv_fds(int sock, size_t max_bytes, size_t max_fds,
                                         bool nonblocking);

// A message on the side channel. Wire form: 24 bytes little endian
// {u8 kind, u8[7] zero, u64 id, u64 size}; kAnnounce carries exactly one fd, the others
// none. kAnnounce/kDrop: "here is my buffer id" / "forget it". kReturn goes the other
// way: "I have read your buffer id; you may write it again" (the release handshake for
// pooled buffers that carry outputs). kLastWords (extension -> host, no fd): the id is
// the number of the syscall the sandbox killed the process for, written by its SIGSYS
// handler just before it dies; the host believes it only when the kernel says the
// process did die of SIGSYS, and only to name the call in its error. kRing (host ->
// extension, one fd, size = the capacity of each ring): the shared-memory ring pair the
// channel's frames travel in (HostOptions::ring_bytes); valid only as the first message,
// which the extension reads before it starts (serve), so a Registry refuses it.
struct SideMessage {
  enum class Kind : uint8_t { kAnnounce = 1, kDrop = 2, kReturn = 3, kLastWords = 4, kRing = 5 };
  Kind kind = Kind::kAnnounce;
  uint64_t id = 0;
  uint64_t size = 0;  // kAnnounce and kRing
  UniqueFd fd;        // kAnnounce and kRing
};

// Every side message is this long.
constexpr size_t kSideMessageBytes = 24;

// Parses one received side message: exactly 24 bytes, and exactly the fds its kind
// carries (one for kAnnounce and kRing, none otherwise). InvalidArgument otherwise, and `fds` are
// closed. The seven zero bytes are not checked. FdChannel::try_recv_message uses it.
Result<SideMessage> parse_side_message(std::string_view bytes, std::vector<UniqueFd> fds);

// One end of the side-channel socketpair. Sending blocks (up to a timeout: a peer that
// stopped reading must not hang the host forever); receiving never blocks, so the fd can
// be watched with a libuv uv_poll_t (UV_READABLE) and drained with try_recv().
class FdChannel {
 public:
  FdChannel() = default;
  explicit FdChannel(UniqueFd sock) : sock_(std::move(sock)) {}

  // A connected AF_UNIX SOCK_SEQPACKET pair, both ends close-on-exec (the spawner clears
  // the flag on the child's end, e.g. by dup2 onto a fixed number).
  static Result<std::pair<FdChannel, FdChannel>> pair();

  int fd() const { return sock_.get(); }
  bool valid() const { return sock_.valid(); }
  int release() { return sock_.release(); }
  void close() { sock_.reset(); }

  Status send(std::span<const int> fds, std::string_view bytes, int timeout_ms = 5000);
  Result<std::optional<Received>> try_recv(size_t max_bytes = 4096,
                                           size_t max_fds = kMaxFdsPerMessage);

  // Typed side messages.
  Status announce(uint64_t id, int fd, uint64_t size, int timeout_ms = 5000);
  Status drop(uint64_t id, int timeout_ms = 5000);
  Status give_back(uint64_t id, int timeout_ms = 5000);  // kReturn
  Status offer_ring(int fd, uint64_t capacity, int timeout_ms = 5000);  // kRing
  // nullopt: nothing pending. A malformed message -> InvalidArgument (its fds closed).
  Result<std::optional<SideMessage>> try_recv_message();

 private:
  UniqueFd sock_;
};

}  // namespace airlock::shm
