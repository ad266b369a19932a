// Outputs written in place (extension/runtime/output_buffer.h): airlock.output_buffer
// gives the skill a slot of shared memory, moved into its memory for the call, that
// becomes the output without a copy; with no source the bytes are the skill's own pages,
// copied once into the result. Limits hold, slots always come back, nothing leaks.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>

#include "runtime_test_util.h"

using namespace airlock;
using namespace airlock::testing;

namespace {

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(static_cast<uint8_t>(i * 131u + 7u));
  return s;
}

// Slots as the server makes them: a memfd mapped read-write, then sealed against any
// new writable mapping (F_SEAL_FUTURE_WRITE), as a pooled buffer shared with the host is.
class TestSlots : public runtime::OutputSource {
 public:
  ~TestSlots() override {
    for (auto& [t, s] : slots_) close_slot(s);
    for (auto& s : idle_) close_slot(s);
  }
  Result<runtime::OutputSlot> acquire(size_t len) override {
    const size_t size = (len + 4095) / 4096 * 4096;
    // Like the server's pool: a buffer given back is lent again, with what it held.
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->size != size) continue;
      Slot s = *it;
      idle_.erase(it);
      const uint64_t token = next_++;
      slots_[token] = s;
      return runtime::OutputSlot{s.data, s.size, token};
    }
    Slot s;
    s.fd = memfd_create("test-slot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (s.fd < 0 || ftruncate(s.fd, static_cast<off_t>(size)) != 0) return make_error(Code::Internal, "memfd");
    s.data = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, s.fd, 0));
    if (s.data == MAP_FAILED) return make_error(Code::Internal, "mmap");
    s.size = size;
    EXPECT_EQ(fcntl(s.fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK), 0);
    const uint64_t token = next_++;
    slots_[token] = s;
    return runtime::OutputSlot{s.data, s.size, token};
  }
  void release(uint64_t token) override {
    auto it = slots_.find(token);
    ASSERT_NE(it, slots_.end()) << "slot " << token << " given back twice or never lent";
    idle_.push_back(it->second);
    slots_.erase(it);
    ++released;
  }
  // The bytes of a slot the runtime named as an output, read through its own mapping.
  std::string read(uint64_t token, size_t len) {
    auto it = slots_.find(token);
    if (it == slots_.end()) return "<no such slot>";
    std::string out(reinterpret_cast<const char*>(it->second.data), len);
    release(token);
    return out;
  }
  size_t lent() const { return slots_.size(); }
  int released = 0;

 private:
  struct Slot {
    int fd = -1;
    uint8_t* data = nullptr;
    size_t size = 0;
  };
  static void close_slot(Slot& s) {
    munmap(s.data, s.size);
    close(s.fd);
  }
  uint64_t next_ = 1;
  std::map<uint64_t, Slot> slots_;
  std::vector<Slot> idle_;
};

}  // namespace

TEST_F(RuntimeFixture, AnOutputBufferIsTheOutputInProcess) {
  load("make_bytes");
  for (size_t n : {size_t{1}, size_t{4096}, size_t{70'000}, size_t{3u << 20}}) {
    auto r = call("make_bytes", std::to_string(n));
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, pattern(n)) << n;
    EXPECT_EQ(*call("make_bytes", std::to_string(n) + ",copy"), pattern(n)) << n;
  }
  EXPECT_EQ(rt_->stats().written_outputs, 4u);
}

TEST_F(RuntimeFixture, AnOutputBufferIsASlotOfTheSourceMovedInAndBack) {
  TestSlots slots;
  rt_->set_output_source(&slots);
  load("make_bytes");
  for (size_t n : {size_t{100}, (size_t{5} << 20) + 3, size_t{70'000}}) {
    runtime::CallOptions o;
    auto written = std::make_shared<runtime::WrittenOutput>();
    o.written_output = written;
    auto r = call("make_bytes", std::to_string(n), o);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, "") << "the bytes are in the slot, not the string";
    ASSERT_NE(written->token, 0u);
    EXPECT_EQ(written->length, n);
    // Written through the skill's memory, read through the slot's own mapping: the
    // mapping moved there and back, and the pages are the same.
    EXPECT_EQ(slots.read(written->token, n), pattern(n)) << n;
  }
  // A slot lent again still holds the last output: the skill must get it zeroed.
  ASSERT_TRUE(call("make_bytes", "100000").ok());  // fills a slot, which goes back
  auto fresh = call("make_bytes", "100000,check");
  EXPECT_TRUE(fresh.ok()) << fresh.error().to_string();
  // Without a taker, the slot's bytes are copied into the result and the slot goes back.
  EXPECT_EQ(*call("make_bytes", "200000"), pattern(200'000));
  // The copying way never takes a slot.
  runtime::CallOptions o;
  o.written_output = std::make_shared<runtime::WrittenOutput>();
  EXPECT_EQ(*call("make_bytes", "100,copy", o), pattern(100));
  EXPECT_EQ(o.written_output->token, 0u);
  EXPECT_EQ(slots.lent(), 0u) << "every slot came back";
  rt_->set_output_source(nullptr);
}

TEST_F(RuntimeFixture, AnOutputBufferCountsAgainstTheMemoryLimitAndComesBackOnFailure) {
  TestSlots slots;
  rt_->set_output_source(&slots);
  runtime::SkillLimits lim;
  lim.max_memory_mb = 8;
  load("make_bytes", lim);
  auto r = call("make_bytes", std::to_string(16u << 20));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::ResourceExhausted) << r.error().to_string();
  EXPECT_EQ(slots.lent(), 0u) << "the slot for a refused buffer went back";
  EXPECT_EQ(*call("make_bytes", std::to_string(4u << 20)), pattern(4u << 20)) << "within it, it works";
  const int before = slots.released;
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(call("make_bytes", std::to_string(2u << 20)).ok());
  EXPECT_EQ(slots.released, before + 20);
  EXPECT_EQ(slots.lent(), 0u);
  rt_->set_output_source(nullptr);
}

// The pages grown for an output are kept with the instance and used again: a Reset
// instance that only grew by them is reset and pooled (no new instance per call), a
// Reuse instance does not grow by another output's worth each call, and the next call
// sees them zero.
TEST_F(RuntimeFixture, OutputPagesAreReusedAndZeroForTheNextCall) {
  TestSlots slots;
  for (bool with_slots : {false, true}) {
    rt_->set_output_source(with_slots ? &slots : nullptr);
    for (auto fresh : {runtime::FreshState::Reset, runtime::FreshState::Reuse}) {
      runtime::SkillLimits lim;
      lim.max_memory_mb = 8;
      lim.fresh = fresh;
      ASSERT_TRUE(rt_->load_file("mb", skill_path("make_bytes"), lim).ok());
      ASSERT_EQ(*call("mb", "4000000"), pattern(4'000'000));
      const auto before = rt_->stats().instantiations;
      for (int i = 0; i < 10; ++i) {
        auto r = call("mb", i % 2 ? "4000000" : "4000000,check");
        ASSERT_TRUE(r.ok()) << "slots " << with_slots << " reuse " << (fresh == runtime::FreshState::Reuse) << " call " << i
                            << ": " << r.error().to_string();
        ASSERT_EQ(*r, pattern(4'000'000));
      }
      EXPECT_EQ(rt_->stats().instantiations, before) << "slots " << with_slots << ": the instance was kept";
    }
  }
  rt_->set_output_source(nullptr);
  EXPECT_EQ(slots.lent(), 0u);
}
