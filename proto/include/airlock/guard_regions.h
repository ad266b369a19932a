// Whether guard regions (V8's wasm trap handler: ~10 GiB of address space reserved per
// live linear memory, 8 GiB addressable plus guards, V8 10.2) fit `instances` live
// memories under this process's RLIMIT_AS, with 8 GiB for everything else. The one
// definition of GuardRegions::Auto: the host resolves it before an extension or a
// compile-cache producer starts, so both always agree (code compiled for guard regions
// must never run without them: V8 does not record which it was compiled for).
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace airlock {

inline constexpr uint32_t kGuardedInstanceCap = 8192;  // live instances with guard regions

inline bool guard_regions_fit(uint32_t instances = kGuardedInstanceCap) {
  rlimit as{};
  if (getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY) return true;
  constexpr uint64_t kPerInstance = 10ull << 30, kRest = 8ull << 30;
  return as.rlim_cur >= kRest + uint64_t(instances) * kPerInstance;
}

}  // namespace airlock
