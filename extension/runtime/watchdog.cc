#include "runtime/watchdog.h"

namespace airlock::runtime {

Watchdog::Watchdog(std::function<void()> terminate)
    : terminate_(std::move(terminate)), thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void Watchdog::arm(Clock::time_point deadline) {
  bool earlier = false;
  {
    std::lock_guard lk(mu_);
    armed_ = true;
    fired_ = false;
    deadline_ = deadline;
    if (deadline < wake_at_) {
      wake_at_ = deadline;  // the thread re-reads it once woken
      earlier = true;
    }
  }
  if (earlier) cv_.notify_one();
}

bool Watchdog::disarm() {
  std::lock_guard lk(mu_);
  armed_ = false;
  return fired_;
}

void Watchdog::loop() {
  std::unique_lock lk(mu_);
  while (!stop_) {
    // Fired and not yet disarmed: the wasm has not returned, so ask again (a request
    // can be lost, e.g. during tier-up; see Engine::terminate).
    const auto refire = Clock::now() + kRefire;
    wake_at_ = !armed_ ? Clock::time_point::max() : fired_ ? refire : deadline_;
    if (wake_at_ == Clock::time_point::max()) {
      cv_.wait(lk);
    } else {
      cv_.wait_until(lk, wake_at_);
    }
    // Woken by the time, by an earlier deadline, or spuriously: whatever is armed now
    // decides (a deadline armed after the one slept for is simply slept for next).
    if (stop_ || !armed_) continue;
    const auto now = Clock::now();
    if (fired_ ? now >= refire : now >= deadline_) {
      fired_ = true;
      terminate_();  // under the lock: disarm() cannot return in between
    }
  }
}

}  // namespace airlock::runtime
