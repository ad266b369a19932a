// Leak accounting: what this process holds in shared memory right now.
// Tests take a baseline, run 1,000 calls or kill a peer, and expect the same numbers back.
#pragma once

#include <cstddef>
#include <cstdint>

#include "airlock/status.h"

namespace airlock::shm {

struct Stats {
  uint64_t buffers = 0;        // live Buffer objects (writer side)
  uint64_t buffer_bytes = 0;   // bytes mapped by them
  uint64_t mappings = 0;       // live ReadOnlyMapping objects (reader side)
  uint64_t mapping_bytes = 0;  // bytes mapped by them
  uint64_t mapped_bytes() const { return buffer_bytes + mapping_bytes; }
};

// Counters kept by Buffer and ReadOnlyMapping themselves (cheap, atomic).
Stats stats();

// Open fds of this process that are memfds, by scanning /proc/self/fd for links named
// "/memfd:..." -- catches leaks from any code, not just this library.
Result<size_t> count_open_memfds();

namespace detail {
void count_buffer(int64_t delta_count, int64_t delta_bytes);
void count_mapping(int64_t delta_count, int64_t delta_bytes);
}  // namespace detail

}  // namespace airlock::shm
