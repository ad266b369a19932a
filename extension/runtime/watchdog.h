// Stops runaway wasm: one thread per runtime that terminates the engine's current
// execution when an armed deadline passes, and again every 10 ms until the wasm has
// returned. Arm before entering wasm, disarm after;
// terminate() and disarm() share a lock so a finished call can never be hit by a
// termination meant for it.
//
// No system call per arming: the thread sleeps until the deadline it last saw (or for
// good while nothing is armed), and arm() wakes it only when the new deadline is earlier
// than that. Calls with one time limit arm ever later deadlines, so a stream of them
// wakes the thread about once per time limit, not twice per call. (Before: every arm()
// woke the thread to re-read the deadline: 2 context switches and a futex wake per entry
// into wasm, ~24% of the CPU of a 7 us echo call in reset mode.) The lock is
// uncontended on the hot path: a userspace atomic, no futex.
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
  Clock::time_point wake_at_ = Clock::time_point::max();  // when the thread will next look
  std::thread thread_;
};

}  // namespace airlock::runtime
