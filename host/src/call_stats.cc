#include "call_stats.h"

#include <cmath>

namespace airlock::detail {

void CallStats::started() {
  std::lock_guard lk(mu_);
  in_flight_++;
}

void CallStats::finished(std::chrono::steady_clock::duration took, const Result<std::string>& r, bool was_started) {
  const double us = std::chrono::duration<double, std::micro>(took).count();
  int b = us < 1 ? 0 : static_cast<int>(std::log2(us) * kPerOctave);
  if (b >= kBuckets) b = kBuckets - 1;
  std::lock_guard lk(mu_);
  if (was_started && in_flight_) in_flight_--;
  calls_++;
  if (r.ok()) {
    ok_++;
  } else {
    errors_[r.error().code]++;
  }
  hist_[static_cast<size_t>(b)]++;
  sum_us_ += us;
}

void CallStats::restarted() {
  std::lock_guard lk(mu_);
  restarts_++;
}

double CallStats::quantile(double q) const {
  if (calls_ == 0) return 0;
  const auto want = static_cast<uint64_t>(std::ceil(q * static_cast<double>(calls_)));
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += hist_[static_cast<size_t>(i)];
    if (seen >= want) return std::exp2((i + 0.5) / kPerOctave);  // the bucket's middle
  }
  return std::exp2(32.0);
}

CallStats::Snapshot CallStats::snapshot() const {
  std::lock_guard lk(mu_);
  Snapshot s;
  s.calls = calls_;
  s.ok = ok_;
  for (auto [code, n] : errors_) s.errors[std::string(to_string(code))] = n;
  s.in_flight = in_flight_;
  s.restarts = restarts_;
  s.p50_us = quantile(0.5);
  s.p99_us = quantile(0.99);
  s.sum_us = sum_us_;
  return s;
}

}  // namespace airlock::detail
