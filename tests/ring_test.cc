// proto/ring: the shared-memory byte rings (SPSC, futex doorbells), honest and hostile.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "airlock/ring.h"

namespace airlock::proto {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

RingPair make_pair(uint32_t cap = kRingMinCapacity) {
  auto p = RingPair::create(cap, "ring_test");
  EXPECT_TRUE(p.ok()) << p.error().to_string();
  return std::move(*p);
}

// A peer's view of the same memfd, mapped again as the other process would.
RingPair attach_copy(const RingPair& p) {
  auto a = RingPair::attach(::fcntl(p.fd(), F_DUPFD_CLOEXEC, 0), p.capacity());
  EXPECT_TRUE(a.ok()) << a.error().to_string();
  return std::move(*a);
}

// What a hostile peer does: writes a word of ring `ring` (0 or 1) at `offset` directly.
void poke64(const RingPair& p, int ring, size_t offset, uint64_t v) {
  void* m = ::mmap(nullptr, 2 * ring_bytes(p.capacity()), PROT_READ | PROT_WRITE, MAP_SHARED, p.fd(), 0);
  ASSERT_NE(m, MAP_FAILED);
  std::memcpy(static_cast<char*>(m) + ring * ring_bytes(p.capacity()) + offset, &v, 8);
  ::munmap(m, 2 * ring_bytes(p.capacity()));
}

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(Ring, BytesArriveInOrderAcrossManyWrapArounds) {
  RingPair host = make_pair();
  RingPair peer = attach_copy(host);
  RingWriter w = host.creator_writer();
  RingReader r = peer.peer_reader();
  std::mt19937 rng(7);
  std::deque<char> expected;
  std::vector<std::byte> out(3 * kRingMinCapacity);
  uint64_t sent = 0, got = 0;
  uint8_t next = 0;
  while (got < (4u << 20)) {
    std::string chunk(rng() % 5000, '\0');
    for (char& c : chunk) c = static_cast<char>(next++);
    auto n = w.write(as_bytes(chunk));
    ASSERT_TRUE(n.ok()) << n.error().to_string();
    ASSERT_LE(*n, chunk.size());
    expected.insert(expected.end(), chunk.begin(), chunk.begin() + static_cast<long>(*n));
    next = static_cast<uint8_t>(next - (chunk.size() - *n));  // the rest is sent again later
    sent += *n;
    auto m = r.read(std::span(out).first(rng() % out.size()));
    ASSERT_TRUE(m.ok()) << m.error().to_string();
    for (size_t i = 0; i < *m; i++) {
      ASSERT_EQ(static_cast<char>(out[i]), expected.front()) << "byte " << got + i;
      expected.pop_front();
    }
    got += *m;
  }
  EXPECT_EQ(sent - got, expected.size());
  EXPECT_GT(sent / kRingMinCapacity, 1000u) << "wrapped around many times";
}

TEST(Ring, AFullRingTakesNothingMoreAndAReadMakesRoom) {
  RingPair host = make_pair();
  RingWriter w = host.creator_writer();
  RingReader r = host.peer_reader();
  const std::string big(kRingMinCapacity + 100, 'x');
  auto n = w.write(as_bytes(big));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, kRingMinCapacity);
  EXPECT_EQ(*w.write(as_bytes(big)), 0u);
  EXPECT_EQ(*w.room(), 0u);
  std::vector<std::byte> out(100);
  EXPECT_EQ(*r.read(out), 100u);
  EXPECT_EQ(*w.room(), 100u);
  EXPECT_EQ(*w.write(as_bytes(big)), 100u);
}

TEST(Ring, AHeadTooFarAheadIsMalformedAndStaysSo) {
  RingPair host = make_pair();
  RingReader r = host.peer_reader();
  poke64(host, 0, 0, kRingMinCapacity + 1);  // head: more published than the ring holds
  std::vector<std::byte> out(16);
  auto n = r.read(out);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Code::InvalidArgument);
  EXPECT_NE(n.error().message.find("malformed ring"), std::string::npos) << n.error().message;
  poke64(host, 0, 0, 0);  // put back: the end is still failed, its owner drops the peer
  EXPECT_FALSE(r.read(out).ok());
  EXPECT_TRUE(r.readable()) << "a failed end reports something to read, so its owner reads and fails";
}

TEST(Ring, AHeadBehindTheTailIsMalformed) {
  RingPair host = make_pair();
  RingWriter w = host.creator_writer();
  RingReader r = host.peer_reader();
  ASSERT_EQ(*w.write(as_bytes(std::string(10, 'a'))), 10u);
  std::vector<std::byte> out(16);
  ASSERT_EQ(*r.read(out), 10u);
  poke64(host, 0, 0, 5);  // the writer "unpublishes"
  EXPECT_FALSE(r.read(out).ok());
}

TEST(Ring, ATailTheReaderCouldNotHavePublishedFailsTheWriter) {
  // The head is 10: a tail of 11 is ahead of it, one of 10 - capacity - 1 (indices are
  // modulo 2^64) is further behind than the ring holds.
  for (uint64_t bad_tail : {uint64_t{11}, uint64_t{10} - kRingMinCapacity - 1}) {
    RingPair host = make_pair();
    RingWriter w = host.creator_writer();
    ASSERT_EQ(*w.write(as_bytes(std::string(10, 'a'))), 10u);
    poke64(host, 0, 64, bad_tail);
    auto n = w.write(as_bytes(std::string(1, 'b')));
    ASSERT_FALSE(n.ok()) << "tail " << bad_tail;
    EXPECT_NE(n.error().message.find("malformed ring"), std::string::npos);
    EXPECT_FALSE(w.room().ok());
  }
}

TEST(Ring, ThePeerCanNeitherResizeTheMemfdNorChangeItsSeals) {
  RingPair host = make_pair();
  RingPair peer = attach_copy(host);
  errno = 0;
  EXPECT_NE(::ftruncate(peer.fd(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(peer.fd(), 1 << 30), 0);
  EXPECT_NE(::fcntl(peer.fd(), F_ADD_SEALS, F_SEAL_FUTURE_WRITE), 0);
  // The creator's mapping still works after the attempts.
  EXPECT_EQ(*host.creator_writer().write(as_bytes(std::string(5, 'z'))), 5u);
}

TEST(Ring, AttachRefusesWhatTheCreatorWouldNotHaveMade) {
  EXPECT_FALSE(RingPair::create(5000).ok()) << "not a power of two";
  EXPECT_FALSE(RingPair::create(1024).ok()) << "below the minimum";
  RingPair host = make_pair();
  auto wrong_size = RingPair::attach(::fcntl(host.fd(), F_DUPFD_CLOEXEC, 0), 2 * kRingMinCapacity);
  ASSERT_FALSE(wrong_size.ok());
  EXPECT_EQ(wrong_size.error().code, Code::InvalidArgument);
  const int raw = ::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(raw, 0);
  ASSERT_EQ(::ftruncate(raw, static_cast<off_t>(2 * ring_bytes(kRingMinCapacity))), 0);
  auto unsealed = RingPair::attach(raw, kRingMinCapacity);
  ASSERT_FALSE(unsealed.ok());
  EXPECT_NE(unsealed.error().message.find("sealed"), std::string::npos) << unsealed.error().message;
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  ::close(pipefd[1]);
  EXPECT_FALSE(RingPair::attach(pipefd[0], kRingMinCapacity).ok()) << "not a memfd";
}

TEST(Ring, AWaitEndsAtItsDeadlineEvenWhileAPeerScribblesOnTheSleepWord) {
  RingPair host = make_pair();
  RingReader r = host.peer_reader();
  std::atomic<bool> stop{false};
  std::thread scribbler([&] {  // flips the reader's futex word, as a hostile writer may
    void* m = ::mmap(nullptr, 2 * ring_bytes(host.capacity()), PROT_READ | PROT_WRITE, MAP_SHARED, host.fd(), 0);
    auto* word = reinterpret_cast<std::atomic<uint32_t>*>(static_cast<char*>(m) + 128);
    for (uint32_t i = 0; !stop.load(); i++) word->store(i & 1);
    ::munmap(m, 2 * ring_bytes(host.capacity()));
  });
  const auto t0 = Clock::now();
  EXPECT_FALSE(r.wait(t0 + 50ms, 10us));
  EXPECT_GE(Clock::now() - t0, 50ms);
  stop = true;
  scribbler.join();
  EXPECT_FALSE(r.wait(Clock::now() + 10ms)) << "quiet peer: sleeps on the futex until the deadline";
}

TEST(Ring, AWriterWaitingForRoomIsWokenByTheRead) {
  RingPair host = make_pair();
  RingWriter w = host.creator_writer();
  RingReader r = host.peer_reader();
  ASSERT_EQ(*w.write(as_bytes(std::string(kRingMinCapacity, 'f'))), kRingMinCapacity);
  std::atomic<bool> woke{false};
  std::thread writer([&] {
    auto ok = w.wait_for_room(Clock::now() + 60s);
    woke = ok.ok() && *ok;
  });
  std::vector<std::byte> out(1);
  ASSERT_EQ(*r.read_and_ring(out), 1u);
  writer.join();  // returns because the read woke it, long before its 60 s
  EXPECT_TRUE(woke.load());
}

// Two processes, as host and extension: the child echoes everything back, waiting
// without spinning, so every message has to ring a sleeping peer's doorbell; messages
// up to 3x the ring's capacity make both sides wait for room too.
TEST(Ring, TwoProcessesEchoThroughSleepingPeers) {
  RingPair host = make_pair();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    RingReader in = host.peer_reader();
    RingWriter out = host.peer_writer();
    std::vector<std::byte> buf(8192);
    for (;;) {
      if (!in.wait(Clock::now() + 10s)) _exit(2);
      auto n = in.read_and_ring(buf);
      if (!n.ok()) _exit(3);
      if (*n == 1 && buf[0] == std::byte{0}) _exit(0);  // the end
      for (size_t done = 0; done < *n;) {
        auto m = out.write_and_ring(std::span(buf).subspan(done, *n - done));
        if (!m.ok()) _exit(4);
        done += *m;
        if (done == *n) break;
        auto room = out.wait_for_room(Clock::now() + 10s);
        if (!room.ok() || !*room) _exit(5);
      }
    }
  }
  RingWriter out = host.creator_writer();
  RingReader in = host.creator_reader();
  std::mt19937 rng(11);
  std::vector<std::byte> got;
  std::vector<std::byte> buf(8192);
  for (int round = 0; round < 500; round++) {
    std::vector<std::byte> msg(1 + rng() % (3 * kRingMinCapacity));
    for (auto& b : msg) b = std::byte(1 + rng() % 255);  // never the lone 0 that ends the child
    got.clear();
    size_t sent = 0;
    while (got.size() < msg.size()) {
      if (sent < msg.size()) {
        auto m = out.write_and_ring(std::span(msg).subspan(sent));
        ASSERT_TRUE(m.ok()) << m.error().to_string();
        sent += *m;
      }
      ASSERT_TRUE(in.wait(Clock::now() + 10s)) << "round " << round;
      auto n = in.read_and_ring(buf);
      ASSERT_TRUE(n.ok()) << n.error().to_string();
      got.insert(got.end(), buf.begin(), buf.begin() + static_cast<long>(*n));
    }
    ASSERT_EQ(got, msg) << "round " << round;
  }
  const std::byte end{0};
  ASSERT_EQ(*out.write_and_ring(std::span(&end, 1)), 1u);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

}  // namespace
}  // namespace airlock::proto
