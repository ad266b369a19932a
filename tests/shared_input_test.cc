// Large inputs through shared memory, end to end on both transports: same results as
// inline, slices, refused slices and foreign buffers, no memfd or mapping leaks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "airlock/host.h"
#include "airlock/shm/accounting.h"

using namespace airlock;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

namespace {

std::string skill(const std::string& n) { return std::string(AIRLOCK_SKILL_DIR) + "/" + n + ".wasm"; }

uint64_t le64(const std::string& s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v |= uint64_t(uint8_t(s[i])) << (8 * i);
  return v;
}

size_t memfds() { return shm::count_open_memfds().value(); }

// What the make_bytes skill outputs for the input "n": byte i = (i * 131 + 7) mod 256.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(static_cast<uint8_t>(i * 131u + 7u));
  return s;
}

class SharedInputTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    base_memfds_ = memfds();
    base_bytes_ = shm::stats().mapped_bytes();
    HostOptions o;
    o.transport = GetParam();
    o.extension_binary = AIRLOCK_EXTENSION_BIN;
    o.log_level = "warn";
    o.auto_share_min_bytes = 0;  // "inline" in these tests means through the channel
    host_ = std::make_unique<Host>(o);
    ExtensionOptions eo;
    eo.name = "big";
    eo.restart.mode = RestartPolicy::Mode::OnFailure;
    eo.restart.initial_backoff = 10ms;
    auto e = host_->spawn(eo);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    ext_ = e.value();
    ASSERT_TRUE(ext_->load_skill("sum", skill("sum"), SkillLimits{128, 30'000}).ok());
    ASSERT_TRUE(ext_->load_skill("echo", skill("echo")).ok());
  }
  void TearDown() override {
    ext_.reset();
    host_.reset();
    // Everything the host mapped or opened for shared memory is gone with it.
    EXPECT_EQ(memfds(), base_memfds_);
    EXPECT_EQ(shm::stats().mapped_bytes(), base_bytes_);
  }
  std::unique_ptr<Host> host_;
  std::optional<Extension> ext_;
  size_t base_memfds_ = 0;
  uint64_t base_bytes_ = 0;
};

TEST_P(SharedInputTest, SumOverFiftyMiBSharedEqualsInline) {
  const size_t n = 50u << 20;
  auto buf = ext_->allocate(n);
  ASSERT_TRUE(buf.ok()) << buf.error().to_string();
  uint64_t expect = 0;
  auto d = buf->data();
  for (size_t i = 0; i < n; ++i) {
    d[i] = static_cast<uint8_t>(i * 31 + (i >> 12));
    expect += d[i];
  }
  auto shared = ext_->call("sum", *buf);
  ASSERT_TRUE(shared.ok()) << shared.error().to_string();
  EXPECT_EQ(le64(*shared), expect);
  auto inline_r = ext_->call("sum", std::string(reinterpret_cast<const char*>(d.data()), n));
  ASSERT_TRUE(inline_r.ok()) << inline_r.error().to_string();
  EXPECT_EQ(*inline_r, *shared);
}

// Mapped, not copied (input_window.h): a skill limited to 16 MiB reads a 256 MiB input,
// and an unaligned slice reads the same bytes as the same slice sent inline.
TEST_P(SharedInputTest, AMappedInputIsLargerThanTheSkillsMemoryLimit) {
  ASSERT_TRUE(ext_->load_skill("small_sum", skill("sum"), SkillLimits{16, 30'000}).ok());
  const size_t n = 256u << 20;
  auto buf = ext_->allocate(n);
  ASSERT_TRUE(buf.ok()) << buf.error().to_string();
  auto d = buf->data();
  d[0] = 3;
  d[n / 2] = 5;
  d[n - 1] = 7;
  auto r = ext_->call("small_sum", *buf);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(le64(*r), 15u);
  // Copied, the same input cannot fit in 16 MiB.
  auto copied = ext_->call("small_sum", std::string(20u << 20, '\1'));
  EXPECT_EQ(copied.error().code, Code::ResourceExhausted);
  for (size_t i = 0; i < (3u << 20); ++i) d[4097 + i] = static_cast<uint8_t>(i * 7 + (i >> 9));
  auto slice = ext_->call("small_sum", Payload(*buf, 4097, 3u << 20));
  auto same = ext_->call("sum", std::string(reinterpret_cast<const char*>(d.data()) + 4097, 3u << 20));
  ASSERT_TRUE(slice.ok()) << slice.error().to_string();
  EXPECT_EQ(*slice, *same);
}

// wasm32 has 4 GiB of address space: a skill limited to 64 MiB sums a 1 GiB input, twice
// (the second call finds the window still mapped).
TEST_P(SharedInputTest, AOneGiBInputIsSummedByASixtyFourMiBSkill) {
  ASSERT_TRUE(ext_->load_skill("sum64", skill("sum"), SkillLimits{64, 60'000}).ok());
  const size_t n = size_t{1} << 30;
  auto buf = ext_->allocate(n);
  ASSERT_TRUE(buf.ok()) << buf.error().to_string();
  auto d = buf->data();
  uint64_t expect = 0;
  for (size_t i = 0; i < n; i += n / 64 + 4093) d[i] = static_cast<uint8_t>(i >> 20), expect += d[i];
  d[n - 1] = 0xFF, expect += 0xFF;
  for (int round = 0; round < 2; ++round) {
    auto r = ext_->call("sum64", *buf, {.func = "run", .timeout = std::chrono::milliseconds(60'000)});
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(le64(*r), expect) << "round " << round;
  }
}

// A mapped input's instance is reset and kept for the next mapped call (window_pool):
// it must keep nothing of the last one. The skill writes over its input, past it, at
// the end of its memory and into a static; every call still sees a fresh state, and the
// caller's buffers are unchanged. Both sizes share one window (64 pages), so the
// instance of one call serves the next.
TEST_P(SharedInputTest, APooledInputWindowKeepsNothingOfTheLastCall) {
  ASSERT_TRUE(ext_->load_skill("scribble", std::string(AIRLOCK_TEST_WASM_DIR) + "/window_scribble.wasm",
                               SkillLimits{16, 30'000})
                  .ok());
  auto a = ext_->allocate((3u << 20) + 100);
  auto b = ext_->allocate((3u << 20) - 100);
  ASSERT_TRUE(a.ok() && b.ok());
  std::fill(a->data().begin(), a->data().end(), uint8_t{0x11});
  std::fill(b->data().begin(), b->data().end(), uint8_t{0x22});
  for (int round = 0; round < 3; ++round) {
    for (auto [buf, byte] : {std::pair{&*a, '\x11'}, std::pair{&*b, '\x22'}}) {
      auto r = ext_->call("scribble", *buf);
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      EXPECT_EQ(*r, std::string({byte, '\0', '\1', '\0'})) << "round " << round;
      EXPECT_EQ(buf->data().front(), static_cast<uint8_t>(byte));
      EXPECT_EQ(buf->data().back(), static_cast<uint8_t>(byte));
    }
  }
}

TEST_P(SharedInputTest, SlicesAndRefusedSlices) {
  auto buf = ext_->allocate(1 << 20);
  ASSERT_TRUE(buf.ok());
  auto d = buf->data();
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(*ext_->call("echo", Payload(*buf, 10, 5)), std::string("\x0a\x0b\x0c\x0d\x0e"));
  EXPECT_EQ(*ext_->call("echo", Payload(*buf, 0, 0)), "");
  auto past = ext_->call("echo", Payload(*buf, (1 << 20) - 2, 4));
  EXPECT_EQ(past.error().code, Code::InvalidArgument);
  EXPECT_THAT(past.error().message, HasSubstr("outside"));
  EXPECT_EQ(ext_->call("echo", Payload(*buf, SIZE_MAX - 1, 4)).error().code, Code::InvalidArgument);
  // A buffer of another extension is refused.
  ExtensionOptions eo;
  eo.name = "other";
  auto other = host_->spawn(eo);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(other->load_skill("echo", skill("echo")).ok());
  auto foreign = other->call("echo", Payload(*buf, 0, 4));
  EXPECT_EQ(foreign.error().code, Code::InvalidArgument);
  EXPECT_THAT(foreign.error().message, HasSubstr("another extension"));
}

TEST_P(SharedInputTest, WritesAfterAnAnswerAreSeenByTheNextCall) {
  auto buf = ext_->allocate(4096);
  ASSERT_TRUE(buf.ok());
  for (int round = 0; round < 5; ++round) {
    std::fill(buf->data().begin(), buf->data().end(), static_cast<uint8_t>(round + 1));
    EXPECT_EQ(le64(*ext_->call("sum", *buf)), 4096u * (round + 1));
  }
}

TEST_P(SharedInputTest, ThousandBufferCallsAndACrashLeaveNoLeak) {
  std::optional<size_t> warm_memfds;
  for (int i = 0; i < 1000; ++i) {
    auto buf = ext_->allocate(64 * 1024 + static_cast<size_t>(i % 3) * 4096);
    ASSERT_TRUE(buf.ok());
    buf->data()[0] = 1;
    ASSERT_EQ(le64(*ext_->call("sum", *buf)), 1u) << "call " << i;
    if (i == 0) warm_memfds = memfds();
  }
  // Pooled buffers are reused, not piled up: a few size classes (and a lease released
  // just after its answer) at most, where a leak would show ~1,000.
  EXPECT_LE(memfds(), *warm_memfds + 3);
  // Crash the extension while it holds shared inputs; after the restart, counts are the same.
  auto a = ext_->allocate(1 << 20), b = ext_->allocate(2 << 20);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(ext_->call("sum", *a).ok());
  ASSERT_TRUE(ext_->call("sum", *b).ok());
  int pid = ext_->pid();
  kill(pid, SIGKILL);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while ((ext_->pid() == pid || !ext_->alive()) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(ext_->alive());
  auto again = ext_->call("sum", *a);  // re-sent to the new process
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(le64(*again), 0u);
}

TEST_P(SharedInputTest, OneHostWideBufferForSeveralExtensions) {
  auto buf = host_->allocate(4u << 20);
  ASSERT_TRUE(buf.ok()) << buf.error().to_string();
  std::fill(buf->data().begin(), buf->data().end(), uint8_t{2});
  ExtensionOptions eo;
  eo.name = "second";
  auto second = host_->spawn(eo);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(second->load_skill("sum", skill("sum"), SkillLimits{128, 30'000}).ok());
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(le64(*ext_->call("sum", *buf)), 8u << 20);
    EXPECT_EQ(le64(*second->call("sum", Payload(*buf, 0, 1u << 20))), 2u << 20);
  }
}

// An output the skill writes in place (airlock_output_buffer: output_buffer.h) reaches
// the caller as it was written; each is a memfd of its own, sealed by the extension,
// which the host maps, copies, gives back, and is told to drop: none piles up.
TEST_P(SharedInputTest, OutputsWrittenInPlaceArriveWhole) {
  ASSERT_TRUE(ext_->load_skill("make_bytes", skill("make_bytes")).ok());
  std::optional<size_t> warm;
  for (int round = 0; round < 40; ++round) {
    for (size_t n : {size_t{10}, size_t{100'000}, (size_t{3} << 20) + 5}) {
      auto r = ext_->call("make_bytes", std::to_string(n));
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      ASSERT_EQ(r->size(), n);
      ASSERT_TRUE(*r == pattern(n)) << "size " << n << " round " << round;
    }
    if (round == 0) warm = memfds();
  }
  EXPECT_LE(memfds(), *warm + 2) << "written outputs are dropped once given back";
  auto copied = ext_->call("make_bytes", "2000000,copy");
  ASSERT_TRUE(copied.ok()) << copied.error().to_string();
  EXPECT_TRUE(*copied == pattern(2'000'000));
}

// CallOptions::output_view: a large output is handed over where the extension put it,
// without the host's copy. While a view is held, its buffer is not reused (the next
// outputs come in other buffers); when it goes, the buffer goes back; a view outlives
// even the extension's process.
TEST_P(SharedInputTest, LargeOutputsCanBeViewedInPlace) {
  ASSERT_TRUE(ext_->load_skill("make_bytes", skill("make_bytes")).ok());
  auto as_string = [](const OutputView& v) { return std::string(reinterpret_cast<const char*>(v.data().data()), v.size()); };
  const size_t n = (2u << 20) + 11;
  std::vector<std::shared_ptr<OutputView>> held;
  for (int i = 0; i < 4; ++i) {
    CallOptions o;
    o.output_view = std::make_shared<OutputView>();
    auto r = ext_->call("make_bytes", std::to_string(n), o);  // written in place
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, "") << "the bytes are in the view";
    ASSERT_TRUE(*o.output_view);
    held.push_back(o.output_view);
  }
  std::string echoed(300'000, 'e');
  CallOptions eo;
  eo.output_view = std::make_shared<OutputView>();
  auto r = ext_->call("echo", echoed, eo);  // copied into a pooled buffer by the extension
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(as_string(*eo.output_view) == echoed);
  for (const auto& v : held) EXPECT_TRUE(as_string(*v) == pattern(n)) << "a held view is never written again";
  // A view reused for the next call: its earlier output is given back, the new one is in it;
  // and a small output after that leaves it empty, not holding the one before.
  ASSERT_TRUE(ext_->call("make_bytes", "100000", eo).ok());
  EXPECT_TRUE(as_string(*eo.output_view) == pattern(100'000));
  EXPECT_EQ(*ext_->call("echo", "small", eo), "small");
  EXPECT_FALSE(*eo.output_view);
  // One view, one call in flight. The extension is stopped while the second call is
  // made, so the first is surely still in flight (on a loaded 2-vCPU machine the caller
  // can be preempted long enough for a running extension to answer it).
  CallOptions twice;
  twice.output_view = std::make_shared<OutputView>();
  ASSERT_EQ(kill(ext_->pid(), SIGSTOP), 0);
  auto first = ext_->call_async("make_bytes", "3000000", twice);
  auto second = ext_->call("make_bytes", "3000000", twice);
  ASSERT_EQ(kill(ext_->pid(), SIGCONT), 0);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Code::InvalidArgument) << second.error().to_string();
  ASSERT_TRUE(first.get().ok());
  EXPECT_TRUE(as_string(*twice.output_view) == pattern(3'000'000));
  // Small outputs come in the string; the view stays empty.
  CallOptions so;
  so.output_view = std::make_shared<OutputView>();
  EXPECT_EQ(*ext_->call("echo", "tiny", so), "tiny");
  EXPECT_FALSE(*so.output_view);
  // Views given back, buffers reused: many more calls do not pile up buffers.
  held.clear();
  eo.output_view.reset();
  std::optional<size_t> warm;
  for (int i = 0; i < 30; ++i) {
    CallOptions o;
    o.output_view = std::make_shared<OutputView>();
    ASSERT_TRUE(ext_->call("make_bytes", std::to_string(n), o).ok());
    ASSERT_TRUE(as_string(*o.output_view) == pattern(n)) << i;
    if (i == 0) warm = memfds();
  }
  EXPECT_LE(memfds(), *warm + 2);
  // A view outlives the process that wrote it.
  CallOptions last;
  last.output_view = std::make_shared<OutputView>();
  ASSERT_TRUE(ext_->call("make_bytes", std::to_string(n), last).ok());
  const int pid = ext_->pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while ((ext_->pid() == pid || !ext_->alive()) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(as_string(*last.output_view) == pattern(n));
  last.output_view.reset();  // gives nothing back to the new process
  ASSERT_TRUE(ext_->alive());
  EXPECT_EQ(*ext_->call("echo", "after"), "after");
}

// Buffers the extension wrote are pooled: one lent for an output again still holds the
// last output, and a skill writing in place must get it zeroed.
TEST_P(SharedInputTest, AnOutputBufferNeverShowsAnEarlierOutput) {
  ASSERT_TRUE(ext_->load_skill("make_bytes", skill("make_bytes")).ok());
  for (const char* n : {"100000", "2097152", "2100000"}) {
    ASSERT_TRUE(ext_->call("make_bytes", n).ok());
    auto r = ext_->call("make_bytes", std::string(n) + ",check");
    EXPECT_TRUE(r.ok()) << n << ": " << r.error().to_string();
  }
}

// Views pin the extension's buffers past the registry's count: they have their own
// budget (half of HostLimits::max_shared_bytes, so that outputs still fit beside them);
// past it, outputs are copied into the string.
TEST_P(SharedInputTest, ViewsHoldNoMoreThanTheSharedMemoryBudget) {
  ext_.reset();
  host_.reset();
  HostOptions o;
  o.transport = GetParam();
  o.extension_binary = AIRLOCK_EXTENSION_BIN;
  o.log_level = "warn";
  o.limits.max_shared_bytes = 16u << 20;  // views: two 4 MiB buffers (2 MiB + 11 bytes: the 4 MiB class)
  host_ = std::make_unique<Host>(o);
  ExtensionOptions eo;
  eo.name = "budget";
  auto e = host_->spawn(eo);
  ASSERT_TRUE(e.ok()) << e.error().to_string();
  ext_ = e.value();
  ASSERT_TRUE(ext_->load_skill("make_bytes", skill("make_bytes")).ok());
  const size_t n = (2u << 20) + 11;
  std::vector<std::shared_ptr<OutputView>> held;
  for (int i = 0; i < 2; ++i) {
    CallOptions co;
    co.output_view = std::make_shared<OutputView>();
    auto r = ext_->call("make_bytes", std::to_string(n), co);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_TRUE(*co.output_view) << "view " << i << " fits";
    held.push_back(co.output_view);
  }
  CallOptions co;
  co.output_view = std::make_shared<OutputView>();
  auto r = ext_->call("make_bytes", std::to_string(n), co);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_FALSE(*co.output_view) << "past the budget: copied";
  EXPECT_TRUE(*r == pattern(n));
  held.pop_back();
  auto again = ext_->call("make_bytes", std::to_string(n), co);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*co.output_view) << "room again once a view went";
}

TEST_P(SharedInputTest, LargeOutputsComeBackThroughSharedMemory) {
  // echo's output is as large as its input: above 64 KiB it returns in a pooled buffer of
  // the extension's, which the host copies out and gives back before it is reused.
  for (size_t n : {size_t{64} << 10, size_t{1} << 20, size_t{5} << 20}) {
    for (int round = 0; round < 20; ++round) {
      std::string in(n, '\0');
      for (size_t i = 0; i < n; i += 997) in[i] = static_cast<char>(round + i);
      auto r = ext_->call("echo", in);
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      ASSERT_EQ(r->size(), n);
      ASSERT_TRUE(*r == in) << "size " << n << " round " << round;
    }
  }
  // The same through a shared input: nothing large crosses the socket either way.
  auto buf = ext_->allocate(3 << 20);
  ASSERT_TRUE(buf.ok());
  std::fill(buf->data().begin(), buf->data().end(), uint8_t{7});
  auto r = ext_->call("echo", *buf);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, std::string(3 << 20, '\x07'));
}

INSTANTIATE_TEST_SUITE_P(Transports, SharedInputTest, ::testing::Values(Transport::Msgpack, Transport::Grpc),
                         [](const auto& i) { return std::string(to_string(i.param)); });

}  // namespace
