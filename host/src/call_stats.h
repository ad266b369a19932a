// Per-extension call statistics (Extension::stats(), Host::metrics_text()): counts by
// outcome and a log-scale latency histogram, written on the loop thread as calls finish,
// read from any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "airlock/status.h"

namespace airlock::detail {

class CallStats {
 public:
  void started();
  // `was_started`: false for a call refused before it was sent (it was never in flight).
  void finished(std::chrono::steady_clock::duration took, const Result<std::string>& r, bool was_started = true);
  void restarted();

  struct Snapshot {
    uint64_t calls = 0, ok = 0;
    std::map<std::string, uint64_t> errors;
    uint32_t in_flight = 0, restarts = 0;
    double p50_us = 0, p99_us = 0, sum_us = 0;
  };
  Snapshot snapshot() const;

 private:
  // Bucket i holds latencies in [2^(i/8), 2^((i+1)/8)) µs: 9 % wide, up to 2^32 µs.
  static constexpr int kPerOctave = 8;
  static constexpr int kBuckets = 32 * kPerOctave;
  double quantile(double q) const;  // under mu_

  mutable std::mutex mu_;
  uint64_t calls_ = 0, ok_ = 0;
  std::map<Code, uint64_t> errors_;
  uint32_t in_flight_ = 0, restarts_ = 0;
  double sum_us_ = 0;
  std::array<uint64_t, kBuckets> hist_{};
};

}  // namespace airlock::detail
