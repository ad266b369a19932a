#include "runtime/memory_snapshot.h"

#include <algorithm>
#include <cstring>

namespace airlock::runtime {

namespace {
constexpr size_t kPage = 4096;

// memcmp against a zero page: glibc's vector memcmp reads 128 KiB in ~1.2 us, where a
// word-at-a-time loop took 5.4 us (and was then most of a reset-mode call).
const uint8_t kZeroPage[kPage] = {};
bool all_zero(const uint8_t* p, size_t n) { return std::memcmp(p, kZeroPage, n) == 0; }
}  // namespace

MemorySnapshot::MemorySnapshot(std::span<const uint8_t> memory) : size_(memory.size()) {
  for (size_t off = 0; off < memory.size(); off += kPage) {
    const size_t len = std::min(kPage, memory.size() - off);
    if (all_zero(memory.data() + off, len)) continue;
    if (!runs_.empty() && runs_.back().offset + runs_.back().length == off) {
      runs_.back().length += len;
    } else {
      runs_.push_back({off, len, data_.size()});
    }
    data_.insert(data_.end(), memory.begin() + static_cast<ptrdiff_t>(off),
                 memory.begin() + static_cast<ptrdiff_t>(off + len));
  }
  data_.shrink_to_fit();
  runs_.shrink_to_fit();
}

namespace {
// Zeroes the pages of [p, p + n) that are not zero already: a page the call never wrote
// is only read (once mapped to the kernel's zero page, it stays unbacked).
void zero_dirty(uint8_t* p, size_t n) {
  for (size_t off = 0; off < n; off += kPage) {
    const size_t len = std::min(kPage, n - off);
    if (!all_zero(p + off, len)) std::memset(p + off, 0, len);
  }
}
void copy_dirty(uint8_t* dst, const uint8_t* src, size_t n) {
  for (size_t off = 0; off < n; off += kPage) {
    const size_t len = std::min(kPage, n - off);
    if (std::memcmp(dst + off, src + off, len) != 0) std::memcpy(dst + off, src + off, len);
  }
}
}  // namespace

void MemorySnapshot::restore(std::span<uint8_t> memory) const {
  size_t at = 0;  // first byte not yet restored
  for (const auto& r : runs_) {
    zero_dirty(memory.data() + at, r.offset - at);
    copy_dirty(memory.data() + r.offset, data_.data() + r.at, r.length);
    at = r.offset + r.length;
  }
  zero_dirty(memory.data() + at, size_ - at);
}

void MemorySnapshot::restore_onto_zero(std::span<uint8_t> memory) const {
  for (const auto& r : runs_) std::memcpy(memory.data() + r.offset, data_.data() + r.at, r.length);
}

}  // namespace airlock::runtime
