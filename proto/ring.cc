#include "airlock/ring.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace airlock::proto {
namespace {

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

using Clock = std::chrono::steady_clock;

constexpr size_t kHead = 0, kTail = 64, kReaderSleeps = 128, kWriterWaits = 192;
static_assert(kWriterWaits + 64 == kRingHeaderBytes);

std::atomic_ref<uint64_t> word64(std::byte* base, size_t off) {
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + off));
}
std::atomic_ref<uint32_t> word32(std::byte* base, size_t off) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(base + off));
}
uint32_t* futex_word(std::byte* base, size_t off) { return reinterpret_cast<uint32_t*>(base + off); }

// After publishing an index: whether the other side set its flag word (it sleeps, or
// waits for room), cleared so that one doorbell serves many. The seq_cst fence pairs
// with the one the other side put between setting the word and looking at our index.
bool take_flag(std::byte* base, size_t off) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto w = word32(base, off);
  return w.load(std::memory_order_relaxed) != 0 && w.exchange(0) != 0;
}

bool valid_capacity(uint32_t c) { return c >= kRingMinCapacity && c <= kRingMaxCapacity && (c & (c - 1)) == 0; }

// Shared futexes (no FUTEX_PRIVATE_FLAG): the word lives in a mapping of two processes.
void futex_wait(uint32_t* w, uint32_t expected, Clock::time_point until) {
  const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - Clock::now()).count();
  if (left <= 0) return;
  const timespec ts{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
  ::syscall(SYS_futex, w, FUTEX_WAIT, expected, &ts, nullptr, 0);  // EAGAIN, EINTR, ETIMEDOUT: the caller looks again
}
void futex_wake(uint32_t* w) { ::syscall(SYS_futex, w, FUTEX_WAKE, 1, nullptr, nullptr, 0); }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// InvalidArgument, as for a malformed frame: the peer is not to be trusted any more.
Error malformed(const char* what) { return make_error(Code::InvalidArgument, std::string("malformed ring: ") + what); }
constexpr const char* kBadTail = "the reader's tail is not one a reader could have published";
constexpr const char* kBadHead = "the writer's head is not one a writer could have published";

// Copies n bytes at ring position `pos` (masked here, so no value reaches outside the
// data area) from or to the data area, in at most two pieces.
void copy_in(std::byte* data, uint32_t cap, uint64_t pos, const std::byte* src, size_t n) {
  const size_t at = pos & (cap - 1), first = std::min<size_t>(n, cap - at);
  std::memcpy(data + at, src, first);
  std::memcpy(data, src + first, n - first);
}
void copy_out(const std::byte* data, uint32_t cap, uint64_t pos, std::byte* dst, size_t n) {
  const size_t at = pos & (cap - 1), first = std::min<size_t>(n, cap - at);
  std::memcpy(dst, data + at, first);
  std::memcpy(dst + first, data, n - first);
}

}  // namespace

RingWriter::RingWriter(std::byte* region, uint32_t capacity) : base_(region), cap_(capacity) {}

Result<uint64_t> RingWriter::load_tail() {
  if (failed_) return malformed(kBadTail);
  const uint64_t t = word64(base_, kTail).load(std::memory_order_acquire);
  // Unsigned: a tail ahead of our head wraps to a huge distance, caught the same way.
  if (head_ - t > cap_) {
    failed_ = true;
    return malformed(kBadTail);
  }
  return t;
}

Result<size_t> RingWriter::room() {
  auto t = load_tail();
  if (!t) return t.take_error();
  return cap_ - static_cast<size_t>(head_ - *t);
}

Result<size_t> RingWriter::write(std::span<const std::byte> bytes) {
  auto free = room();
  if (!free) return free.take_error();
  const size_t n = std::min(*free, bytes.size());
  if (n == 0) return size_t{0};
  copy_in(base_ + kRingHeaderBytes, cap_, head_, bytes.data(), n);
  head_ += n;
  word64(base_, kHead).store(head_, std::memory_order_release);
  return n;
}

bool RingWriter::take_sleeper() {
  // Pairs with the fence in RingReader::arm: either the reader sees our head, or we see
  // its word (Dekker), so a wake-up is never lost.
  return take_flag(base_, kReaderSleeps);
}

void RingWriter::ring() { futex_wake(futex_word(base_, kReaderSleeps)); }

Result<size_t> RingWriter::ask_for_room() {
  word32(base_, kWriterWaits).store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with take_waiting_writer()
  return room();
}

Result<size_t> RingWriter::write_and_ring(std::span<const std::byte> bytes) {
  auto n = write(bytes);
  if (n && *n > 0 && take_sleeper()) ring();
  return n;
}

Result<bool> RingWriter::wait_for_room(Clock::time_point until, std::chrono::nanoseconds spin) {
  const auto spin_end = Clock::now() + spin;
  for (;;) {
    auto free = room();
    if (!free) return free.take_error();
    if (*free > 0) return true;
    if (Clock::now() >= spin_end) break;
    cpu_relax();
  }
  auto waits = word32(base_, kWriterWaits);
  for (;;) {
    auto free = ask_for_room();
    if (!free || *free > 0 || Clock::now() >= until) {
      waits.store(0, std::memory_order_relaxed);
      if (!free) return free.take_error();
      return *free > 0;
    }
    futex_wait(futex_word(base_, kWriterWaits), 1, until);
  }
}

RingReader::RingReader(std::byte* region, uint32_t capacity) : base_(region), cap_(capacity) {}

bool RingReader::readable() const {
  return failed_ || word64(base_, kHead).load(std::memory_order_acquire) != tail_;
}

Result<size_t> RingReader::read(std::span<std::byte> out) {
  if (failed_) return malformed(kBadHead);
  const uint64_t h = word64(base_, kHead).load(std::memory_order_acquire);
  const uint64_t avail = h - tail_;  // unsigned: a head behind our tail is huge, caught too
  if (avail > cap_) {
    failed_ = true;
    return malformed(kBadHead);
  }
  const size_t n = std::min<size_t>(avail, out.size());
  if (n == 0) return size_t{0};
  copy_out(base_ + kRingHeaderBytes, cap_, tail_, out.data(), n);
  tail_ += n;
  word64(base_, kTail).store(tail_, std::memory_order_release);
  return n;
}

bool RingReader::take_waiting_writer() {
  // A writer waiting for room said so before it looked at our tail (ask_for_room).
  return take_flag(base_, kWriterWaits);
}

Result<size_t> RingReader::read_and_ring(std::span<std::byte> out) {
  auto n = read(out);
  if (n && *n > 0 && take_waiting_writer()) futex_wake(futex_word(base_, kWriterWaits));
  return n;
}

bool RingReader::arm() {
  word32(base_, kReaderSleeps).store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with take_sleeper()
  return readable();
}

void RingReader::disarm() { word32(base_, kReaderSleeps).store(0, std::memory_order_relaxed); }

bool RingReader::wait(Clock::time_point until, std::chrono::nanoseconds spin) {
  if (readable()) return true;
  if (spin.count() > 0) {
    const auto spin_end = Clock::now() + spin;
    while (Clock::now() < spin_end) {
      for (int i = 0; i < 32; i++) {  // ~1 µs of pauses between clock reads
        if (readable()) return true;
        cpu_relax();
      }
    }
  }
  for (;;) {
    if (arm() || Clock::now() >= until) {
      disarm();
      return readable();
    }
    // The writer clears the word before it wakes us; a peer that scribbles on it makes
    // this return early, and we look again: spurious wake-ups until `until`, no more.
    futex_wait(futex_word(base_, kReaderSleeps), 1, until);
  }
}

Result<RingPair> RingPair::create(uint32_t capacity, const char* name) {
  if (!valid_capacity(capacity)) return make_error(Code::InvalidArgument, "ring capacity must be a power of two in [4 KiB, 64 MiB]");
  int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
  if (fd < 0 && errno == EINVAL) fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);  // kernel < 6.3
  if (fd < 0) return make_error(Code::ResourceExhausted, std::string("memfd_create: ") + std::strerror(errno));
  return attach_checked(fd, capacity, /*created=*/true);
}

Result<RingPair> RingPair::attach(int fd, uint32_t capacity) {
  if (!valid_capacity(capacity)) {
    if (fd >= 0) ::close(fd);
    return make_error(Code::InvalidArgument, "ring capacity must be a power of two in [4 KiB, 64 MiB]");
  }
  return attach_checked(fd, capacity, /*created=*/false);
}

// Takes fd. A created memfd is sized and sealed first: before anyone else holds it, so
// the peer can neither truncate it under our mapping (SIGBUS) nor change the seals.
// A received one must already be so.
Result<RingPair> RingPair::attach_checked(int fd, uint32_t capacity, bool created) {
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } owned{fd};
  const size_t size = 2 * ring_bytes(capacity);
  if (created) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
      return make_error(Code::ResourceExhausted, std::string("ftruncate ring: ") + std::strerror(errno));
    if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      return make_error(Code::Internal, std::string("seal ring: ") + std::strerror(errno));
  }
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return make_error(Code::InvalidArgument, "ring: fd is not a sealable memfd");
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
    return make_error(Code::InvalidArgument, "ring: memfd is not sealed against resizing");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != size)
    return make_error(Code::InvalidArgument, "ring: memfd is " + std::to_string(st.st_size) + " bytes, expected " + std::to_string(size));
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return make_error(Code::ResourceExhausted, std::string("mmap ring: ") + std::strerror(errno));
  owned.fd = -1;
  return RingPair(fd, static_cast<std::byte*>(p), capacity);
}

RingPair::RingPair(RingPair&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), base_(std::exchange(o.base_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}

RingPair& RingPair::operator=(RingPair&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
    base_ = std::exchange(o.base_, nullptr);
    cap_ = std::exchange(o.cap_, 0);
  }
  return *this;
}

void RingPair::release() {
  if (base_) ::munmap(base_, 2 * ring_bytes(cap_));
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  fd_ = -1;
}

RingPair::~RingPair() { release(); }

}  // namespace airlock::proto
