// A mapped input kept across calls (extension/runtime/input_window.h): the next call on
// the same range of the same buffer finds it still mapped, sees the file as it is now,
// and sees nothing the last call left; a call that wrote its input, another buffer or a
// buffer nobody holds any more gets a fresh mapping or none.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "runtime_test_util.h"

using namespace airlock;
using namespace airlock::testing;

namespace {

// A memfd of `size` bytes filled with `byte`, written through `rw`, seen through `ro`.
struct Buffer {
  explicit Buffer(size_t n, const char* name) : size(n) {
    fd = memfd_create(name, MFD_CLOEXEC);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(n)), 0);
    rw = static_cast<uint8_t*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ro = static_cast<const uint8_t*>(mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0));
    keep = std::make_shared<int>(0);
  }
  ~Buffer() {
    munmap(rw, size);
    munmap(const_cast<uint8_t*>(ro), size);
    close(fd);
  }
  void fill(uint8_t byte) { std::memset(rw, byte, size); }
  runtime::InputView view() const { return runtime::InputView{{ro, size}, keep, fd, 0}; }

  size_t size;
  int fd = -1;
  uint8_t* rw = nullptr;
  const uint8_t* ro = nullptr;
  std::shared_ptr<const void> keep;  // stands for the registry's hold on the buffer
};

// Mappings of the memfd called `name` in this process.
int mappings_of(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("/memfd:" + name + " ") != std::string::npos;
  return n;
}

class InputWindowFixture : public RuntimeFixture {
 protected:
  std::string call_view(const std::string& func, const Buffer& b) {
    std::optional<Result<std::string>> out;
    runtime::CallOptions o;
    o.func = func;
    rt_->call("scribble", b.view(), o, [&](Result<std::string> r) { out.emplace(std::move(r)); });
    while (!out) uv_run(&loop_, UV_RUN_ONCE);
    EXPECT_TRUE(out->ok()) << out->error().to_string();
    return out->ok() ? out->value() : std::string();
  }
  static std::string expect(uint8_t first, uint8_t last) { return std::string{char(first), char(last), '\1', '\0'}; }
};

}  // namespace

TEST_F(InputWindowFixture, AnUnwrittenWindowIsKeptForTheNextCallOnTheSameBuffer) {
  ASSERT_TRUE(rt_->load_file("scribble", test_wasm_path("window_scribble"), runtime::SkillLimits{16, 30'000}).ok());
  Buffer a(3u << 20, "window-a");
  a.fill(0x33);
  // `look` writes only past the input (the window's last byte): the window is kept, and
  // the next call still sees zero there.
  EXPECT_EQ(call_view("look", a), expect(0x33, 0x33));
  EXPECT_EQ(call_view("look", a), expect(0x33, 0x33));
  EXPECT_EQ(rt_->stats().mapped_inputs, 2u);
  EXPECT_EQ(rt_->stats().kept_inputs, 1u);
  // The host writes the buffer anew between calls (a pooled buffer reused): a kept
  // window shows the file as it is now.
  a.fill(0x44);
  a.rw[a.size - 1] = 0x45;
  EXPECT_EQ(call_view("look", a), expect(0x44, 0x45));
  EXPECT_EQ(rt_->stats().kept_inputs, 2u);
  // `run` writes into its input: that window is not kept, and the next call sees the
  // buffer, not the last call's private copies.
  EXPECT_EQ(call_view("run", a), (std::string{char(0x44), '\0', '\1', '\0'}));
  EXPECT_EQ(rt_->stats().kept_inputs, 3u);  // it found the window kept
  EXPECT_EQ(call_view("look", a), expect(0x44, 0x45));
  EXPECT_EQ(rt_->stats().kept_inputs, 3u);  // ... and did not leave it
  // Writes from outside wasm code (V8's memory.fill, the random_get import) reach the
  // read-only window too: they land in private copies, and spoil the window as well.
  EXPECT_EQ(call_view("fill", a), (std::string{char(0xBB), '\0', '\1', '\0'}));
  EXPECT_EQ(a.ro[0], 0x44);
  EXPECT_EQ(call_view("look", a), expect(0x44, 0x45));
  EXPECT_EQ(rt_->stats().kept_inputs, 4u);  // `fill` found it kept; `look` mapped afresh
  // Another buffer of the same size takes the window over.
  Buffer b(3u << 20, "window-b");
  b.fill(0x55);
  EXPECT_EQ(call_view("look", b), expect(0x55, 0x55));
  EXPECT_EQ(call_view("look", a), expect(0x44, 0x45));
  EXPECT_EQ(rt_->stats().kept_inputs, 4u);
  EXPECT_EQ(call_view("look", a), expect(0x44, 0x45));
  EXPECT_EQ(rt_->stats().kept_inputs, 5u);
}

TEST_F(InputWindowFixture, AKeptWindowGoesWhenNobodyElseHoldsItsBuffer) {
  ASSERT_TRUE(rt_->load_file("scribble", test_wasm_path("window_scribble"), runtime::SkillLimits{16, 30'000}).ok());
  Buffer a((2u << 20) - 100'000, "window-orphan");  // the window (2 MiB) has a tail past it
  a.fill(0x66);
  const int own = mappings_of("window-orphan");  // the test's two views of it
  EXPECT_EQ(call_view("look", a), expect(0x66, 0x66));
  EXPECT_EQ(mappings_of("window-orphan"), own + 1) << "the window is kept mapped";
  rt_->release_orphaned_inputs();
  EXPECT_EQ(mappings_of("window-orphan"), own + 1) << "the buffer is still held";
  a.keep.reset();  // the registry released it (the host dropped it)
  rt_->release_orphaned_inputs();
  EXPECT_EQ(mappings_of("window-orphan"), own);
  // A call that holds the last reference itself does not keep its window.
  a.keep = std::make_shared<int>(1);
  {
    std::optional<Result<std::string>> out;
    runtime::CallOptions o;
    o.func = "look";
    auto v = a.view();
    a.keep.reset();
    rt_->call("scribble", std::move(v), o, [&](Result<std::string> r) { out.emplace(std::move(r)); });
    while (!out) uv_run(&loop_, UV_RUN_ONCE);
    ASSERT_TRUE(out->ok());
  }
  EXPECT_EQ(mappings_of("window-orphan"), own);
}

// The window's SIGSEGV handler is installed over V8's trap handler and chains to it:
// after a mapped call, out-of-bounds accesses and stack overflows are still wasm traps,
// reported with their kind, and the runtime goes on.
TEST_F(InputWindowFixture, TrapsStillWorkAfterAWindowWasWatched) {
  ASSERT_TRUE(rt_->load_file("scribble", test_wasm_path("window_scribble"), runtime::SkillLimits{16, 30'000}).ok());
  load("trap");
  Buffer a(3u << 20, "window-traps");
  a.fill(0x77);
  EXPECT_EQ(call_view("look", a), expect(0x77, 0x77));  // installs the handler, leaves a watched window
  for (auto [input, kind] : {std::pair{"oob", TrapKind::MemoryOutOfBounds}, std::pair{"stack", TrapKind::StackOverflow}}) {
    auto r = call("trap", input);
    ASSERT_FALSE(r.ok()) << input;
    EXPECT_EQ(r.error().trap, kind) << r.error().to_string();
  }
  EXPECT_EQ(call_view("look", a), expect(0x77, 0x77));
  EXPECT_EQ(rt_->stats().kept_inputs, 1u);
}

// Growing the memory (by 0 pages or 1) before writing into the input: whatever V8 does
// to the memory's protection when it grows, the write is seen, and the next call gets
// the buffer as it is.
TEST_F(InputWindowFixture, AWriteAfterGrowingTheMemoryIsStillSeen) {
  ASSERT_TRUE(rt_->load_file("scribble", test_wasm_path("window_scribble"), runtime::SkillLimits{16, 30'000}).ok());
  Buffer a(3u << 20, "window-grow");
  a.fill(0x12);
  for (const char* grow : {"grow0", "grow1", "grow0"}) {
    EXPECT_EQ(call_view("look", a), expect(0x12, 0x12)) << grow;
    EXPECT_EQ(call_view(grow, a), (std::string{char(0xCC), '\0', '\1', '\0'})) << grow;
    EXPECT_EQ(a.ro[0], 0x12) << grow;
    EXPECT_EQ(call_view("look", a), expect(0x12, 0x12)) << "after " << grow;
  }
}

// A call parked on a mapped input while another call moves the skill to a larger window
// class: when it ends, its instance (the old class's) must not join the new class's
// pool, or the next large input would be handed a window too small for it.
TEST_F(InputWindowFixture, AParkedCallsInstanceNeverJoinsAnotherWindowClassesPool) {
  load("sleeper");
  Buffer small(3u << 20, "window-class-small"), large(20u << 20, "window-class-large");
  small.fill(1);
  large.fill(2);
  runtime::CallOptions o;
  o.func = "sum_later";
  auto sum_of = [](const std::optional<Result<std::string>>& r) {
    uint64_t v = 0;
    if (r && r->ok() && (*r)->size() == 8) std::memcpy(&v, (*r)->data(), 8);
    return v;
  };
  std::optional<Result<std::string>> parked, next, last;
  rt_->call("sleeper", small.view(), o, [&](Result<std::string> r) { parked.emplace(std::move(r)); });
  ASSERT_FALSE(parked) << "it waits 50 ms";
  rt_->call("sleeper", large.view(), o, [&](Result<std::string> r) { next.emplace(std::move(r)); });
  while (!parked || !next) uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(sum_of(parked), uint64_t{3u << 20});
  EXPECT_EQ(sum_of(next), uint64_t{2} * (20u << 20));
  for (int i = 0; i < 3; ++i) {  // two at once: both pooled instances get used
    last.reset(), next.reset();
    rt_->call("sleeper", large.view(), o, [&](Result<std::string> r) { last.emplace(std::move(r)); });
    rt_->call("sleeper", large.view(), o, [&](Result<std::string> r) { next.emplace(std::move(r)); });
    while (!last || !next) uv_run(&loop_, UV_RUN_ONCE);
    ASSERT_TRUE(last->ok()) << last->error().to_string();
    ASSERT_TRUE(next->ok()) << next->error().to_string();
    EXPECT_EQ(sum_of(last), uint64_t{2} * (20u << 20)) << "round " << i;
    EXPECT_EQ(sum_of(next), uint64_t{2} * (20u << 20)) << "round " << i;
  }
}

// The host drops a buffer while a parked call still holds it and another skill keeps
// it mapped: the kept window goes as soon as the parked call lets go, not at some later
// side-channel message.
TEST_F(InputWindowFixture, AKeptWindowGoesWhenTheLastParkedCallOnItsBufferEnds) {
  ASSERT_TRUE(rt_->load_file("scribble", test_wasm_path("window_scribble"), runtime::SkillLimits{16, 30'000}).ok());
  load("sleeper");
  Buffer a((2u << 20) - 100'000, "window-parked");
  a.fill(0x21);
  const int own = mappings_of("window-parked");
  runtime::CallOptions later;
  later.func = "sum_later";
  std::optional<Result<std::string>> parked;
  rt_->call("sleeper", a.view(), later, [&](Result<std::string> r) { parked.emplace(std::move(r)); });
  EXPECT_EQ(call_view("look", a), expect(0x21, 0x21));
  ASSERT_FALSE(parked);
  EXPECT_EQ(mappings_of("window-parked"), own + 2) << "the parked call's window and the kept one";
  a.keep.reset();  // the host dropped it
  rt_->release_orphaned_inputs();
  EXPECT_EQ(mappings_of("window-parked"), own + 2) << "the parked call still holds it";
  while (!parked) uv_run(&loop_, UV_RUN_ONCE);
  ASSERT_TRUE(parked->ok()) << parked->error().to_string();
  EXPECT_EQ(mappings_of("window-parked"), own);
}
