// What an extension's log lines pass before they reach the host's log: escaping (a
// line cannot fake another record, move the cursor or recolour a terminal) and a rate
// limit per extension (a skill printing in a loop cannot flood the host's disk).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace airlock::detail {

// `text` as one printable line: C0 and C1 control characters, DEL and bytes that are
// not UTF-8 become \n, \r, \t, \e or \xNN; a backslash becomes \\. At most `max_bytes`
// of output (cut at a character boundary, "..." appended when cut).
std::string escape_log_text(std::string_view text, size_t max_bytes);

// A token bucket: `per_second` lines, bursts of 2x. Not thread-safe (loop thread).
class LogGate {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogGate(uint32_t per_second) : rate_(per_second), tokens_(2.0 * per_second) {}
  // Whether a line may pass now; a refused line is counted in dropped().
  bool admit(Clock::time_point now = Clock::now());
  // Lines refused since the last call (so the caller can log "N lines dropped").
  uint64_t take_dropped() { return std::exchange(dropped_, 0); }
  uint32_t rate() const { return rate_; }

 private:
  uint32_t rate_;
  double tokens_;
  Clock::time_point last_{};
  uint64_t dropped_ = 0;
};

}  // namespace airlock::detail
