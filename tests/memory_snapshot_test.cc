// MemorySnapshot (extension/runtime/memory_snapshot.h): what it stores, that a restore
// gives back exactly the memory it was taken from whatever was written since, and that it
// leaves alone the pages nobody wrote.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "runtime/memory_snapshot.h"

namespace airlock::runtime {
namespace {

constexpr size_t kPage = 4096;

struct Mapping {
  explicit Mapping(size_t n) : size(n) {
    p = static_cast<uint8_t*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~Mapping() { munmap(p, size); }
  std::span<uint8_t> span() { return {p, size}; }
  uint8_t* p;
  size_t size;
};

TEST(MemorySnapshot, StoresOnlyThePagesHoldingData) {
  Mapping m(32 * kPage);
  m.p[1024] = 1;                    // page 0
  m.p[5 * kPage + 17] = 2;          // page 5
  m.p[6 * kPage] = 3;               // page 6: one run with page 5
  m.p[32 * kPage - 1] = 4;          // the last page
  MemorySnapshot s(m.span());
  EXPECT_EQ(s.size(), 32 * kPage);
  EXPECT_EQ(s.stored_bytes(), 4 * kPage);
}

TEST(MemorySnapshot, RestoreUndoesAnyWrites) {
  Mapping m(40 * kPage + 100);  // not a whole number of pages
  std::mt19937 rng(7);
  for (int i = 0; i < 50; ++i) m.p[rng() % m.size] = static_cast<uint8_t>(rng() | 1);
  std::vector<uint8_t> original(m.p, m.p + m.size);
  MemorySnapshot s(m.span());
  for (int round = 0; round < 20; ++round) {
    // Scribble: single bytes anywhere, whole pages, and the ragged end.
    for (int i = 0; i < 200; ++i) m.p[rng() % m.size] = static_cast<uint8_t>(rng());
    std::memset(m.p + (rng() % 40) * kPage, 0xab, kPage);
    m.p[m.size - 1] ^= 0xff;
    s.restore(m.span());
    ASSERT_EQ(std::memcmp(m.p, original.data(), m.size), 0) << "round " << round;
  }
}

TEST(MemorySnapshot, RestoreWritesNoPageThatIsAlreadyRight) {
  // Pages the call did not write are only read: made read-only here, a write to one
  // would fault. Those are what stays unbacked in a pooled instance.
  Mapping m(16 * kPage);
  m.p[3 * kPage + 5] = 9;
  MemorySnapshot s(m.span());
  m.p[8 * kPage] = 1;  // the call dirtied page 8 and page 3
  m.p[3 * kPage + 6] = 1;
  for (size_t page = 0; page < 16; ++page) {
    if (page != 8 && page != 3) ASSERT_EQ(mprotect(m.p + page * kPage, kPage, PROT_READ), 0);
  }
  s.restore(m.span());
  EXPECT_EQ(m.p[8 * kPage], 0);
  EXPECT_EQ(m.p[3 * kPage + 5], 9);
  EXPECT_EQ(m.p[3 * kPage + 6], 0);
}

TEST(MemorySnapshot, RestoreOntoZeroAfterThePagesWereGivenBack) {
  Mapping m(16 * kPage);
  for (size_t i = 0; i < kPage; ++i) m.p[2 * kPage + i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> original(m.p, m.p + m.size);
  MemorySnapshot s(m.span());
  std::memset(m.p, 0x55, m.size);
  ASSERT_EQ(madvise(m.p, m.size, MADV_DONTNEED), 0);  // what SkillRuntime::trim_idle does
  s.restore_onto_zero(m.span());
  EXPECT_EQ(std::memcmp(m.p, original.data(), m.size), 0);
}

TEST(MemorySnapshot, AnAllZeroMemoryStoresNothing) {
  Mapping m(8 * kPage);
  MemorySnapshot s(m.span());
  EXPECT_EQ(s.stored_bytes(), 0u);
  m.p[100] = 1;
  s.restore(m.span());
  EXPECT_EQ(m.p[100], 0);
}

}  // namespace
}  // namespace airlock::runtime
