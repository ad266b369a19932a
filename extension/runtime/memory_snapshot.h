// A skill's linear memory right after _initialize, kept to give each call fresh state
// (FreshState::Reset) by restoring it over a used instance.
//
// Only the 4 KiB pages holding a non-zero byte are stored, as runs; the rest is known to
// be zero. For the 32 KB sample skill (2 pages of memory, 128 KiB) that is 3 pages, not
// 32: 500 loaded skills held 56 MB of snapshots, now ~6 MB. A restore writes every byte
// of the memory (copying the runs, zeroing the gaps): the same cost as one memcpy
// (~2.5 us for 128 KiB), without knowing which pages the call touched.
//
// Measured and rejected for restoring (2 vCPU VM): a MAP_PRIVATE memfd image with
// madvise(MADV_DONTNEED) after each call, as wasmtime does: 2.5 us per page the next call
// touches (each is a copy-on-write fault), already slower than the memcpy at 2 pages.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace airlock::runtime {

class MemorySnapshot {
 public:
  explicit MemorySnapshot(std::span<const uint8_t> memory);

  size_t size() const { return size_; }               // bytes of memory it describes
  size_t stored_bytes() const { return data_.size(); }  // what it keeps of them
  // Makes `memory` (size() bytes) equal to the snapshot.
  void restore(std::span<uint8_t> memory) const;
  // The same, for a memory known to be all zero (fresh pages, or after MADV_DONTNEED):
  // only the stored runs are written, so the zero pages stay unbacked.
  void restore_onto_zero(std::span<uint8_t> memory) const;

 private:
  struct Run {
    size_t offset;  // in the memory; page-aligned
    size_t length;  // whole pages, or up to the end of the memory
    size_t at;      // in data_
  };
  size_t size_ = 0;
  std::vector<Run> runs_;
  std::vector<uint8_t> data_;
};

}  // namespace airlock::runtime
