// Fuzzes the shared-memory side channel's message parser: parse_side_message (the
// 24-byte {u8 kind, u8[7] zero, u64 id, u64 size} message plus its SCM_RIGHTS fds), and
// FdChannel::try_recv_message on a real SOCK_SEQPACKET pair, which adds recvmsg() and
// the truncation rules (more than 25 bytes or 2 fds).
//
// Input: byte 0, bits 0-1: how many fds (of /dev/null) go with the message (0-3); the
// rest: the message bytes.
//
// Checked, beyond "no sanitizer report": both paths agree with an independent model of
// the format (size, kind, fd count, little-endian fields); the socket path consumes
// exactly one datagram; and no fd leaks on any path, accepted or refused.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "airlock/shm/fd_channel.h"
#include "airlock/shm/unique_fd.h"
#include "airlock/status.h"
#include "fuzz_check.h"

namespace {

using namespace airlock;
using namespace airlock::shm;

constexpr size_t kMessageBytes = 24;

uint64_t le64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// The lowest free descriptor: equal before and after an input unless something leaked.
int lowest_free_fd() {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  AIRLOCK_FUZZ_CHECK(fd >= 0);
  ::close(fd);
  return fd;
}

std::vector<UniqueFd> dev_null_fds(size_t n) {
  std::vector<UniqueFd> fds;
  for (size_t i = 0; i < n; ++i) {
    fds.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    AIRLOCK_FUZZ_CHECK(fds.back().valid());
  }
  return fds;
}

bool is_dev_null(int fd) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && ::stat("/dev/null", &b) == 0 && S_ISCHR(a.st_mode) &&
         a.st_rdev == b.st_rdev;
}

// What the format says about `bytes` arriving with `nfds` fds.
bool model_accepts(std::string_view bytes, size_t nfds) {
  if (bytes.size() != kMessageBytes) return false;
  switch (static_cast<uint8_t>(bytes[0])) {
    case 1: case 5: return nfds == 1;  // kAnnounce, kRing
    case 2: case 3: case 4: return nfds == 0;  // kDrop, kReturn, kLastWords
    default: return false;
  }
}

void check_message(const SideMessage& m, std::string_view bytes) {
  AIRLOCK_FUZZ_CHECK(static_cast<uint8_t>(m.kind) == static_cast<uint8_t>(bytes[0]));
  AIRLOCK_FUZZ_CHECK(m.id == le64(bytes.data() + 8));
  AIRLOCK_FUZZ_CHECK(m.size == le64(bytes.data() + 16));
  if (m.kind == SideMessage::Kind::kAnnounce || m.kind == SideMessage::Kind::kRing) {
    AIRLOCK_FUZZ_CHECK(m.fd.valid() && is_dev_null(m.fd.get()));
  } else {
    AIRLOCK_FUZZ_CHECK(!m.fd.valid());
  }
}

void fuzz_parse(std::string_view bytes, size_t nfds) {
  Result<SideMessage> r = parse_side_message(bytes, dev_null_fds(nfds));
  AIRLOCK_FUZZ_CHECK(r.ok() == model_accepts(bytes, nfds));
  if (r.ok()) {
    check_message(*r, bytes);
  } else {
    AIRLOCK_FUZZ_CHECK(r.error().code == Code::InvalidArgument);
  }
}

// One socketpair for the whole run (made before the first fd count is taken).
std::pair<FdChannel, FdChannel>& channels() {
  static std::pair<FdChannel, FdChannel> pair = [] {
    auto p = FdChannel::pair();
    AIRLOCK_FUZZ_CHECK(p.ok());
    return std::move(*p);
  }();
  return pair;
}

void fuzz_socket(std::string_view bytes, size_t nfds) {
  if (bytes.empty()) return;  // a message needs at least one byte (send refuses it)
  FdChannel& sender = channels().first;
  FdChannel& receiver = channels().second;
  {
    std::vector<UniqueFd> owned = dev_null_fds(nfds);
    std::vector<int> fds;
    for (const UniqueFd& f : owned) fds.push_back(f.get());
    AIRLOCK_FUZZ_CHECK(sender.send(fds, bytes).ok());
  }  // our copies closed; the receiver got its own (or the kernel dropped them)

  Result<std::optional<SideMessage>> r = receiver.try_recv_message();
  // Truncation (more than 24 + 1 bytes, or 2 fds) is refused before parsing.
  const bool accepts = nfds <= 2 && bytes.size() <= kMessageBytes + 1 && model_accepts(bytes, nfds);
  AIRLOCK_FUZZ_CHECK(r.ok() == accepts);
  if (r.ok()) {
    AIRLOCK_FUZZ_CHECK(r->has_value());
    check_message(**r, bytes);
  } else {
    AIRLOCK_FUZZ_CHECK(r.error().code == Code::InvalidArgument);
  }
  // Exactly one datagram was taken, however it was refused.
  Result<std::optional<SideMessage>> rest = receiver.try_recv_message();
  AIRLOCK_FUZZ_CHECK(rest.ok() && !rest->has_value());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t nfds = data[0] & 3;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  channels();
  const int free_before = lowest_free_fd();
  fuzz_parse(bytes, nfds);
  AIRLOCK_FUZZ_CHECK(lowest_free_fd() == free_before);
  fuzz_socket(bytes, nfds);
  AIRLOCK_FUZZ_CHECK(lowest_free_fd() == free_before);
  return 0;
}
