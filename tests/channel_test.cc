// Both channel encodings through make_channel(): a Host-role and an Extension-role channel
// on the two ends of a socketpair. Both run on one uv loop on the test thread: a channel's
// callbacks run on its loop's thread whatever threads it uses inside (gRPC's), so one loop
// can host both ends, which keeps the tests deterministic. Cross-process latency is
// measured elsewhere.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "airlock/channel.h"
#include "airlock/ring.h"

namespace airlock::proto {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// One end: its channel and what its callbacks saw.
struct Side {
  std::unique_ptr<Channel> ch;
  std::vector<Frame> frames;
  std::optional<Error> closed;
  int closed_calls = 0;
  std::function<void(const Frame&)> on_frame;  // extra behaviour, before the frame is kept
};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

int count_open_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1;  // the DIR's own descriptor
}

// What the two channels talk over: an encoding, and for msgpack the socket alone or a
// shared-memory ring beside it (small, 64 KiB each way, so that frames wrap and wait
// for room).
struct Link {
  Encoding enc;
  bool ring = false;
};
std::string link_name(const ::testing::TestParamInfo<Link>& i) {
  return std::string(to_string(i.param.enc)) + (i.param.ring ? "_ring" : "");
}
constexpr uint32_t kTestRingBytes = 64 * 1024;

class ChannelTest : public ::testing::TestWithParam<Link> {
 protected:
  Encoding enc() const { return GetParam().enc; }

  // A channel in `role` on `fd`; with the ring, the two roles made one after the other
  // share one ring pair (a role asked for twice starts a new pair).
  std::unique_ptr<Channel> make(Role role, int fd, uint32_t max_frame = kDefaultMaxFrameBytes, uint32_t spin_us = 0) {
    std::shared_ptr<RingLink> link;
    if (GetParam().ring) {
      const int end = role == Role::Host ? 0 : 1;
      if (!pair_ || taken_[end]) {
        auto p = RingPair::create(kTestRingBytes, "channel_test");
        EXPECT_TRUE(p.ok()) << p.error().to_string();
        pair_ = std::make_shared<RingPair>(std::move(*p));
        taken_[0] = taken_[1] = false;
      }
      taken_[end] = true;
      link = RingLink::of(pair_, end == 0);
      if (taken_[0] && taken_[1]) pair_.reset();  // the channels own it now
    }
    return make_channel(enc(), role, &loop_, fd, max_frame, kDefaultMaxQueuedBytes, spin_us, link);
  }

  // What a raw peer (open_one's other end) sends: on the socket, or with the ring into
  // the ring, then a doorbell byte on the socket.
  void peer_write(int peer, const std::string& bytes) {
    if (!GetParam().ring) {
      ASSERT_EQ(::write(peer, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
      return;
    }
    auto n = raw_peer_out_.write(std::as_bytes(std::span(bytes.data(), bytes.size())));
    ASSERT_TRUE(n.ok() && *n == bytes.size());
    ASSERT_EQ(::write(peer, "d", 1), 1);
  }

  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    ASSERT_EQ(uv_timer_init(&loop_, &timer_), 0);
  }

  void TearDown() override {
    host_.ch.reset();  // destroying implies close()
    ext_.ch.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
    const auto deadline = Clock::now() + 5s;
    while (uv_run(&loop_, UV_RUN_NOWAIT) != 0 && Clock::now() < deadline) {
    }
    // Closed channels must leave no handle behind that keeps the loop alive.
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a channel left a uv handle open";
  }

  void open_pair(uint32_t max_frame = kDefaultMaxFrameBytes) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    host_.ch = make(Role::Host, sv[0], max_frame);
    ext_.ch = make(Role::Extension, sv[1], max_frame);
    start(host_);
    start(ext_);
  }

  // One channel in `role`, started; returns the other end of its socket, raw.
  int open_one(Role role, Side& side) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    side.ch = make(role, sv[0]);
    if (GetParam().ring) {  // the raw peer's ends of the same pair
      auto p = pair_;
      EXPECT_TRUE(p);
      raw_peer_pair_ = p;
      raw_peer_out_ = role == Role::Host ? p->peer_writer() : p->creator_writer();
      pair_.reset();
    }
    start(side);
    return sv[1];
  }

  static void start(Side& s) {
    s.ch->start({[&s](Frame&& f) {
                   if (s.on_frame) s.on_frame(f);
                   s.frames.push_back(std::move(f));
                 },
                 [&s](const Error& e) {
                   s.closed = e;
                   ++s.closed_calls;
                 },
                 nullptr});
  }

  // Runs the loop until done() or the timeout; returns done().
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
    bool timed_out = false;
    timer_.data = &timed_out;
    uv_timer_start(
        &timer_,
        [](uv_timer_t* t) {
          *static_cast<bool*>(t->data) = true;
          uv_stop(t->loop);  // else UV_RUN_ONCE may go on to wait for I/O that never comes
        },
        static_cast<uint64_t>(timeout.count()), 0);
    while (!done() && !timed_out) uv_run(&loop_, UV_RUN_ONCE);
    uv_timer_stop(&timer_);
    return done();
  }

  // Runs the loop for a while, to see that nothing (more) happens.
  void run_for(std::chrono::milliseconds d) {
    run_until([] { return false; }, d);
  }

  // Closes `closer` and expects `other` to be told, with Unavailable, promptly: within
  // run_until's generous 5 s (a peer that only noticed at some transport timeout, or
  // never, fails it; how fast it is told is measured elsewhere).
  void expect_close_reaches_peer(Side& closer, Side& other) {
    closer.ch->close();
    ASSERT_TRUE(run_until([&] { return other.closed.has_value(); }, 5s)) << "peer not told within 5 s";
    EXPECT_EQ(other.closed->code, Code::Unavailable) << other.closed->to_string();
    EXPECT_FALSE(other.closed->message.empty());
    run_for(50ms);
    EXPECT_EQ(other.closed_calls, 1);
    EXPECT_FALSE(closer.closed) << "on_closed after close(): " << closer.closed->to_string();
    const Status s = closer.ch->send(Cancel{1});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().code, Code::Unavailable);
    const Status t = other.ch->send(Cancel{1});
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.error().code, Code::Unavailable);
  }

  uv_loop_t loop_{};
  uv_timer_t timer_{};
  Side host_, ext_;
  std::shared_ptr<RingPair> pair_;  // a ring pair one end of which is still to be made
  bool taken_[2] = {false, false};
  std::shared_ptr<RingPair> raw_peer_pair_;
  RingWriter raw_peer_out_;
};

TEST_P(ChannelTest, EncodingIsTheOneAskedFor) {
  open_pair();
  EXPECT_EQ(host_.ch->encoding(), enc());
  EXPECT_EQ(ext_.ch->encoding(), enc());
}

TEST_P(ChannelTest, RequestAndResponseRoundTrip) {
  open_pair();
  Request req;
  req.id = 7;
  req.parent_id = 3;
  req.timeout_us = 1500;
  req.target = "echo";
  req.method = "run";
  req.payload = std::string("\0\x01\xffpayload", 10);
  req.shm_refs = {{1, 2, 3}, {4, 5, 6}};
  ASSERT_TRUE(host_.ch->send(req).ok());
  ASSERT_TRUE(run_until([&] { return ext_.frames.size() == 1; }));
  ASSERT_TRUE(std::holds_alternative<Request>(ext_.frames[0]));
  EXPECT_EQ(std::get<Request>(ext_.frames[0]), req);

  Response resp;
  resp.id = 7;
  resp.code = Code::Trap;
  resp.trap = TrapKind::DivideByZero;
  resp.error = "divided by zero";
  resp.payload = std::string("out\0put", 7);
  resp.shm_refs = {{9, 8, 7}};
  ASSERT_TRUE(ext_.ch->send(resp).ok());
  ASSERT_TRUE(run_until([&] { return host_.frames.size() == 1; }));
  ASSERT_TRUE(std::holds_alternative<Response>(host_.frames[0]));
  EXPECT_EQ(std::get<Response>(host_.frames[0]), resp);
  EXPECT_FALSE(host_.closed);
  EXPECT_FALSE(ext_.closed);
}

TEST_P(ChannelTest, EveryFrameKindCrosses) {
  open_pair();
  const std::vector<Frame> to_ext = {Cancel{5}, LoadSkill{6, "s", "\0asm", "", 16, 100, {}}, UnloadSkill{7, "s"},
                                     Health{8}, Shutdown{250}};
  const std::vector<Frame> to_host = {Ready{kProtocolVersion, 1234, "ext", ""}, Log{3, "a log line", "skill"}};
  for (const Frame& f : to_ext) ASSERT_TRUE(host_.ch->send(f).ok()) << frame_name(f);
  for (const Frame& f : to_host) ASSERT_TRUE(ext_.ch->send(f).ok()) << frame_name(f);
  ASSERT_TRUE(run_until([&] { return ext_.frames.size() == to_ext.size() && host_.frames.size() == to_host.size(); }));
  EXPECT_EQ(ext_.frames, to_ext);
  EXPECT_EQ(host_.frames, to_host);
}

TEST_P(ChannelTest, FramesSentBeforeThePeerExistsArrive) {
  // The extension announces itself first thing, before the host's side is even created.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ext_.ch = make(Role::Extension, sv[1]);
  const Ready ready{kProtocolVersion, 42, "early", ""};
  ASSERT_TRUE(ext_.ch->send(ready).ok());
  start(ext_);
  run_for(20ms);
  host_.ch = make(Role::Host, sv[0]);
  start(host_);
  ASSERT_TRUE(run_until([&] { return !host_.frames.empty(); }));
  EXPECT_EQ(host_.frames[0], Frame(ready));
}

TEST_P(ChannelTest, BurstOf1000FramesArrivesInOrderBothWays) {
  open_pair();
  constexpr uint64_t kN = 1000;
  for (uint64_t i = 1; i <= kN; ++i) {
    Request r;
    r.id = i;
    r.target = "burst";
    r.payload = std::to_string(i);
    ASSERT_TRUE(host_.ch->send(r).ok());
    Response p;
    p.id = i;
    p.payload = std::to_string(i * 2);
    ASSERT_TRUE(ext_.ch->send(p).ok());
  }
  ASSERT_TRUE(run_until([&] { return ext_.frames.size() == kN && host_.frames.size() == kN; }, 30s))
      << ext_.frames.size() << " and " << host_.frames.size() << " of " << kN;
  for (uint64_t i = 1; i <= kN; ++i) {
    const auto& r = std::get<Request>(ext_.frames[i - 1]);
    ASSERT_EQ(r.id, i);
    ASSERT_EQ(r.payload, std::to_string(i));
    const auto& p = std::get<Response>(host_.frames[i - 1]);
    ASSERT_EQ(p.id, i);
    ASSERT_EQ(p.payload, std::to_string(i * 2));
  }
  EXPECT_FALSE(host_.closed);
  EXPECT_FALSE(ext_.closed);
}

TEST_P(ChannelTest, TwentyMiBPayloadArrivesIntactAndEchoesBack) {
  open_pair();
  const std::string big = random_bytes(20u << 20, 1);
  ext_.on_frame = [&](const Frame& f) {
    const auto& r = std::get<Request>(f);
    Response p;
    p.id = r.id;
    p.payload = r.payload;
    ASSERT_TRUE(ext_.ch->send(p).ok());
  };
  Request r;
  r.id = 1;
  r.target = "big";
  r.payload = big;
  const auto t0 = Clock::now();
  ASSERT_TRUE(host_.ch->send(r).ok());
  ASSERT_TRUE(run_until([&] { return !host_.frames.empty() || host_.closed || ext_.closed; }, 60s));
  ASSERT_FALSE(host_.closed) << host_.closed->to_string();
  ASSERT_FALSE(ext_.closed) << ext_.closed->to_string();
  std::printf("20 MiB there and back: %.1f ms\n",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  // EXPECT_TRUE, not EXPECT_EQ: a failure should not print 20 MiB.
  EXPECT_TRUE(std::get<Request>(ext_.frames.at(0)).payload == big);
  EXPECT_TRUE(std::get<Response>(host_.frames.at(0)).payload == big);
}

TEST_P(ChannelTest, OversizedFrameIsRefusedAndTheChannelKeepsWorking) {
  constexpr uint32_t kMax = 64 * 1024;
  open_pair(kMax);
  Request r;
  r.target = "t";
  for (const size_t n : {size_t(kMax) + 1, size_t(kMax)}) {  // the cheap bound; the exact size
    r.id = n;
    r.payload.assign(n, 'x');
    const Status s = host_.ch->send(r);
    ASSERT_FALSE(s.ok()) << n;
    EXPECT_EQ(s.error().code, Code::ResourceExhausted) << s.error().to_string();
  }
  Response big;
  big.id = 9;
  big.payload.assign(kMax, 'y');
  const Status s = ext_.ch->send(big);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::ResourceExhausted);

  r.id = 1;
  r.payload.assign(kMax - 100, 'z');  // just under the limit
  ASSERT_TRUE(host_.ch->send(r).ok());
  r.id = 2;
  r.payload = "small";
  ASSERT_TRUE(host_.ch->send(r).ok());
  Response p;
  p.id = 1;
  ASSERT_TRUE(ext_.ch->send(p).ok());
  ASSERT_TRUE(run_until([&] { return ext_.frames.size() == 2 && host_.frames.size() == 1; }));
  EXPECT_EQ(std::get<Request>(ext_.frames[0]).id, 1u);
  EXPECT_EQ(std::get<Request>(ext_.frames[0]).payload.size(), kMax - 100);
  EXPECT_EQ(std::get<Request>(ext_.frames[1]).id, 2u);
  EXPECT_EQ(std::get<Response>(host_.frames[0]).id, 1u);
  run_for(20ms);
  EXPECT_EQ(ext_.frames.size(), 2u) << "an oversized frame went out";
  EXPECT_FALSE(host_.closed);
  EXPECT_FALSE(ext_.closed);
}

TEST_P(ChannelTest, HostCloseReachesExtension) {
  open_pair();
  ASSERT_TRUE(host_.ch->send(Health{1}).ok());
  ASSERT_TRUE(run_until([&] { return !ext_.frames.empty(); }));
  expect_close_reaches_peer(host_, ext_);
}

TEST_P(ChannelTest, ExtensionCloseReachesHost) {
  open_pair();
  ASSERT_TRUE(host_.ch->send(Health{1}).ok());
  ASSERT_TRUE(run_until([&] { return !ext_.frames.empty(); }));
  expect_close_reaches_peer(ext_, host_);
}

TEST_P(ChannelTest, CloseRightAfterOpeningReachesThePeer) {
  open_pair();
  expect_close_reaches_peer(host_, ext_);
  ext_.ch.reset();
  host_.ch.reset();
  host_ = Side{};
  ext_ = Side{};
  open_pair();
  expect_close_reaches_peer(ext_, host_);
}

TEST_P(ChannelTest, PeerSocketClosedIsUnavailable) {
  for (const Role role : {Role::Host, Role::Extension}) {
    SCOPED_TRACE(role == Role::Host ? "host" : "extension");
    Side side;
    const int peer = open_one(role, side);
    run_for(10ms);
    ::close(peer);  // the peer process died
    // Promptly: within run_until's generous 5 s.
    ASSERT_TRUE(run_until([&] { return side.closed.has_value(); }, 5s)) << "not told within 5 s";
    EXPECT_EQ(side.closed->code, Code::Unavailable) << side.closed->to_string();
    EXPECT_FALSE(side.closed->message.empty());
  }
}

TEST_P(ChannelTest, CloseIsPromptWhenThePeerIsStuck) {
  for (const Role role : {Role::Host, Role::Extension}) {
    SCOPED_TRACE(role == Role::Host ? "host" : "extension");
    Side side;
    const int peer = open_one(role, side);  // never reads, never answers
    Request r;
    r.payload.assign(8u << 20, 'x');  // more than the socket holds
    ASSERT_TRUE(side.ch->send(r).ok());
    run_for(50ms);
    const auto t0 = Clock::now();
    side.ch->close();
    // Generous: a close() that waited for the stuck peer to read would never return.
    EXPECT_LT(Clock::now() - t0, 5s);
    side.ch.reset();
    EXPECT_FALSE(side.closed);
    ::close(peer);
  }
}

TEST_P(ChannelTest, CloseInsideOnFrameStopsDelivery) {
  open_pair();
  ext_.on_frame = [&](const Frame&) { ext_.ch->close(); };
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_TRUE(host_.ch->send(Cancel{i}).ok());
  ASSERT_TRUE(run_until([&] { return !ext_.frames.empty(); }));
  run_for(50ms);
  EXPECT_EQ(ext_.frames.size(), 1u);
  EXPECT_FALSE(ext_.closed);
  ext_.ch->close();  // idempotent
}

TEST_P(ChannelTest, DestroyInsideOnClosedIsSafe) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  host_.ch = make(Role::Host, sv[0]);
  ext_.ch = make(Role::Extension, sv[1]);
  start(host_);
  bool told = false;
  ext_.ch->start({[](Frame&&) {}, [&](const Error&) {
                    told = true;
                    ext_.ch.reset();
                  },
                  nullptr});
  ASSERT_TRUE(host_.ch->send(Health{1}).ok());
  run_for(20ms);
  host_.ch->close();
  ASSERT_TRUE(run_until([&] { return told; }, 3s));
  EXPECT_EQ(ext_.ch, nullptr);
}

TEST_P(ChannelTest, ClosedChannelsReleaseTheirDescriptors) {
  open_pair();  // warm-up: the library may keep process-wide descriptors
  ASSERT_TRUE(host_.ch->send(Health{1}).ok());
  ASSERT_TRUE(run_until([&] { return !ext_.frames.empty(); }));
  host_.ch.reset();
  ext_.ch.reset();
  run_for(50ms);
  const int before = count_open_fds();
  for (int i = 0; i < 10; ++i) {
    host_ = Side{};
    ext_ = Side{};
    open_pair();
    ASSERT_TRUE(host_.ch->send(Health{1}).ok());
    ASSERT_TRUE(run_until([&] { return !ext_.frames.empty(); }));
    host_.ch.reset();
    ext_.ch.reset();
  }
  const auto deadline = Clock::now() + 2s;
  while (count_open_fds() > before && Clock::now() < deadline) run_for(5ms);
  EXPECT_LE(count_open_fds(), before);
}

TEST_P(ChannelTest, GarbageFromThePeerClosesTheChannelWithoutCrashing) {
  for (const Role role : {Role::Host, Role::Extension}) {
    for (uint32_t seed = 1; seed <= 3; ++seed) {
      SCOPED_TRACE((role == Role::Host ? "host, seed " : "extension, seed ") + std::to_string(seed));
      Side side;
      const int peer = open_one(role, side);
      const std::string junk = random_bytes(4096, seed);
      peer_write(peer, junk);
      // Then hang up: a random length prefix may promise more than was sent, and a gRPC
      // server cannot tell us its connection broke, only the peer hanging up can.
      ::close(peer);
      ASSERT_TRUE(run_until([&] { return side.closed.has_value(); }, 3s));
      EXPECT_NE(side.closed->code, Code::Ok);
    }
  }
}

// Raw malformed frames are written in msgpack's framing: this suite runs on msgpack only.
class MsgpackChannelTest : public ChannelTest {};
class RingChannelTest : public ChannelTest {
 protected:
  // The mapping open_one's raw peer shares with the channel.
  std::byte* raw_peer_base() {
    void* m = ::mmap(nullptr, 2 * ring_bytes(kTestRingBytes), PROT_READ | PROT_WRITE, MAP_SHARED, raw_peer_pair_->fd(), 0);
    EXPECT_NE(m, MAP_FAILED);
    mappings_.push_back(m);
    return static_cast<std::byte*>(m);
  }
  void TearDown() override {
    for (void* m : mappings_) ::munmap(m, 2 * ring_bytes(kTestRingBytes));
    ChannelTest::TearDown();
  }
  std::vector<void*> mappings_;
};

TEST_P(MsgpackChannelTest, MalformedFrameIsInvalidArgument) {
  const std::vector<std::string> frames = {
      std::string("\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1", 9),  // 0xc1 is never valid msgpack
      std::string("\x01\x00\x00\x00\x2a", 5),                  // an int, not an array
      std::string("\x03\x00\x00\x00\x92\x01\x02", 7),          // Request with 1 of 7 fields
      std::string("\x02\x00\x00\x00\x91\x63", 6),              // unknown tag 99
      std::string("\x00\x00\x00\x00", 4),                      // empty frame
  };
  for (size_t i = 0; i < frames.size(); ++i) {
    SCOPED_TRACE("frame " + std::to_string(i));
    Side side;
    const int peer = open_one(Role::Extension, side);
    peer_write(peer, frames[i]);
    ASSERT_TRUE(run_until([&] { return side.closed.has_value(); }, 3s));
    EXPECT_EQ(side.closed->code, Code::InvalidArgument) << side.closed->to_string();
    EXPECT_TRUE(side.frames.empty());
    EXPECT_EQ(side.ch->send(Cancel{1}).error().code, Code::Unavailable);
    ::close(peer);
  }
}

// spin_us: after a frame is sent or handled the loop keeps polling (one more active
// handle: an idle, so libuv polls without sleeping), and the spinner stops on its own
// once the window has passed; frames still cross both ways. Without it, nothing spins.
TEST_P(MsgpackChannelTest, ASpinningLoopPollsAfterAFrameThenSleepsAgain) {
  for (const uint32_t spin_us : {0u, 2000u}) {
    SCOPED_TRACE("spin_us " + std::to_string(spin_us));
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    host_.ch = make(Role::Host, sv[0], kDefaultMaxFrameBytes, spin_us);
    ext_.ch = make(Role::Extension, sv[1], kDefaultMaxFrameBytes, spin_us);
    host_.frames.clear();
    ext_.frames.clear();
    start(host_);
    start(ext_);
    const unsigned before = loop_.active_handles;
    ASSERT_TRUE(host_.ch->send(Cancel{7}).ok());
    EXPECT_EQ(loop_.active_handles, before + (spin_us ? 1 : 0));  // the host's loop spins
    ASSERT_TRUE(run_until([&] { return ext_.frames.size() == 1; }));
    ASSERT_TRUE(ext_.ch->send(Cancel{8}).ok());
    ASSERT_TRUE(run_until([&] { return host_.frames.size() == 1; }));
    EXPECT_EQ(std::get<Cancel>(host_.frames[0]).id, 8u);
    // Back to sleep: both spinners stop by themselves (the loop polls meanwhile).
    const auto deadline = Clock::now() + 5s;
    while (loop_.active_handles != before && Clock::now() < deadline) uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(loop_.active_handles, before);
    host_.ch.reset();
    ext_.ch.reset();
  }
}

// A waiting caller reading its own answers (DirectReader::lead): it takes what `take`
// accepts while nothing waits for the loop; from the first frame it does not take, that
// frame and all after it go to the loop, in the order they came. The loop does not run
// while the leader reads here, so only the leader can have read them.
TEST_P(MsgpackChannelTest, ALeaderTakesAnswersAndHandsTheRestToTheLoopInOrder) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  host_.ch = make(Role::Host, sv[0]);
  ext_.ch = make(Role::Extension, sv[1]);
  std::mutex mu;
  std::vector<uint64_t> taken;
  host_.ch->start({[this](Frame&& f) { host_.frames.push_back(std::move(f)); },
                   [this](const Error& e) { host_.closed = e; },
                   [&](Frame& f) {
                     auto* r = std::get_if<Response>(&f);
                     if (!r) return false;
                     std::lock_guard lk(mu);
                     taken.push_back(r->id);
                     return true;
                   }});
  start(ext_);
  auto reader = host_.ch->direct_reader();
  ASSERT_TRUE(reader);
  auto taken_count = [&] {
    std::lock_guard lk(mu);
    return taken.size();
  };
  auto leader = std::async(std::launch::async, [&] {
    return reader->lead([] { return false; }, Clock::now() + 60s);
  });
  Response first;
  first.id = 1;
  ASSERT_TRUE(ext_.ch->send(first).ok());
  const auto end = Clock::now() + 10s;
  while (taken_count() < 1 && Clock::now() < end) std::this_thread::yield();
  ASSERT_EQ(taken_count(), 1u) << "the leader never took the answer";
  Log log;
  log.message = "between";
  Response third, fifth;
  third.id = 3;
  fifth.id = 5;
  ASSERT_TRUE(ext_.ch->send(log).ok());
  ASSERT_TRUE(ext_.ch->send(third).ok());
  ASSERT_TRUE(ext_.ch->send(fifth).ok());
  ASSERT_EQ(leader.wait_for(10s), std::future_status::ready) << "the leader did not step down";
  EXPECT_TRUE(leader.get()) << "it handed frames to the loop";
  ASSERT_TRUE(run_until([&] { return host_.frames.size() >= 3; }));
  ASSERT_EQ(host_.frames.size(), 3u);
  EXPECT_TRUE(std::holds_alternative<Log>(host_.frames[0]));
  ASSERT_TRUE(std::holds_alternative<Response>(host_.frames[1]));
  EXPECT_EQ(std::get<Response>(host_.frames[1]).id, 3u);
  ASSERT_TRUE(std::holds_alternative<Response>(host_.frames[2]));
  EXPECT_EQ(std::get<Response>(host_.frames[2]).id, 5u);
  EXPECT_EQ(taken, (std::vector<uint64_t>{1})) << "nothing after a handed frame is taken";
  // The socket is the loop's again: a later answer reaches it without a leader.
  Response seventh;
  seventh.id = 7;
  ASSERT_TRUE(ext_.ch->send(seventh).ok());
  ASSERT_TRUE(run_until([&] { return host_.frames.size() >= 4; }));
  EXPECT_EQ(std::get<Response>(host_.frames[3]).id, 7u);
}

// Closing the channel wakes a leader that waits for an answer that never comes, and
// waits for it to let go of the socket; a reader kept past its channel leads nothing.
TEST_P(MsgpackChannelTest, ClosingTheChannelWakesItsLeader) {
  open_pair();
  auto reader = host_.ch->direct_reader();
  ASSERT_TRUE(reader);
  std::atomic<bool> started{false};
  auto leader = std::async(std::launch::async, [&] {
    started = true;
    return reader->lead([] { return false; }, Clock::now() + 10min);
  });
  while (!started) std::this_thread::yield();
  host_.ch->close();
  ASSERT_EQ(leader.wait_for(60s), std::future_status::ready) << "the leader was not woken";
  EXPECT_FALSE(leader.get());
  EXPECT_FALSE(reader->lead([] { return false; }, Clock::now() + 10min)) << "a closed channel has no socket to read";
}

// A ring the peer broke: an impossible head (what we read) or tail (what we write) ends
// the channel with an error that says so, as a malformed frame does.
TEST_P(RingChannelTest, AnImpossibleIndexFromThePeerFailsTheChannelNamingTheRing) {
  for (const bool head : {true, false}) {
    SCOPED_TRACE(head ? "head" : "tail");
    Side side;
    const int peer = open_one(Role::Host, side);
    // The host reads ring 1 (the peer's head at its start) and writes ring 0 (the peer's
    // tail 64 bytes into it).
    std::byte* base = raw_peer_base();
    const uint64_t bad = head ? kTestRingBytes + 1 : 12345;
    std::memcpy(base + (head ? ring_bytes(kTestRingBytes) : 64), &bad, 8);
    if (head) {
      ASSERT_EQ(::write(peer, "d", 1), 1);
    } else {
      ASSERT_TRUE(side.ch->send(Health{1}).ok());
    }
    ASSERT_TRUE(run_until([&] { return side.closed.has_value(); }, 3s));
    EXPECT_EQ(side.closed->code, Code::InvalidArgument) << "as for a malformed frame";
    EXPECT_NE(side.closed->message.find("malformed ring"), std::string::npos) << side.closed->to_string();
    ::close(peer);
  }
}

// Frames many times the ring's size, both loops spinning: the writer waits for room
// again and again, and the doorbell for room can be read by a loop's last look before
// it sleeps (rpc_bench's 8 MiB inputs through a 256 KiB ring stalled so, after 36-90
// calls, until the loops looked for room after every read of doorbells).
TEST_P(RingChannelTest, FramesLargerThanTheRingCrossWhileBothLoopsSpin) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  host_.ch = make(Role::Host, sv[0], kDefaultMaxFrameBytes, 300);
  ext_.ch = make(Role::Extension, sv[1], kDefaultMaxFrameBytes, 300);
  ext_.on_frame = [this](const Frame& f) {
    if (auto* r = std::get_if<Request>(&f)) {
      ASSERT_TRUE(ext_.ch->send(make_response(r->id, r->payload)).ok());
    }
  };
  start(host_);
  start(ext_);
  for (uint64_t i = 1; i <= 40; i++) {
    Request r;
    r.id = i;
    r.payload = random_bytes((1u << 20) + i * 4099, static_cast<uint32_t>(i));
    ASSERT_TRUE(host_.ch->send(r).ok());
    ASSERT_TRUE(run_until([&] { return host_.frames.size() == i; })) << "echo " << i << " did not come back";
    EXPECT_EQ(std::get<Response>(host_.frames.back()).id, i);
    EXPECT_EQ(std::get<Response>(host_.frames.back()).payload, r.payload);
  }
}

INSTANTIATE_TEST_SUITE_P(Links, ChannelTest,
                         ::testing::Values(Link{Encoding::Msgpack}, Link{Encoding::Msgpack, true}, Link{Encoding::Grpc}),
                         link_name);
INSTANTIATE_TEST_SUITE_P(Msgpack, MsgpackChannelTest,
                         ::testing::Values(Link{Encoding::Msgpack}, Link{Encoding::Msgpack, true}), link_name);
INSTANTIATE_TEST_SUITE_P(Msgpack, RingChannelTest, ::testing::Values(Link{Encoding::Msgpack, true}), link_name);

}  // namespace
}  // namespace airlock::proto
