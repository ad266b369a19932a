// Stops runaway wasm: one thread per runtime that terminates the engine's current
// execution when an armed deadline passes, and again every 10 ms until the wasm has
// returned. Arm before entering wasm, disarm after;
// terminate() and disarm() share a lock so a finished call can never be hit by a
// termination meant for it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace airlock::runtime {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kRefire = std::chrono::milliseconds(10);  // repeat until disarmed
  explicit Watchdog(std::function<void()> terminate);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void arm(Clock::time_point deadline);
  // Returns true if the watchdog fired for this arming (the engine was terminated).
  bool disarm();

 private:
  void loop();
  std::function<void()> terminate_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  bool fired_ = false;
  bool stop_ = false;
  Clock::time_point deadline_{};
  std::thread thread_;
};

}  // namespace airlock::runtime
