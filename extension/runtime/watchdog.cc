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
  {
    std::lock_guard lk(mu_);
    armed_ = true;
    fired_ = false;
    deadline_ = deadline;
  }
  cv_.notify_one();
}

bool Watchdog::disarm() {
  std::lock_guard lk(mu_);
  armed_ = false;
  return fired_;
}

void Watchdog::loop() {
  std::unique_lock lk(mu_);
  while (!stop_) {
    if (!armed_) {
      cv_.wait(lk);
      continue;
    }
    // Fired and not yet disarmed: the wasm has not returned, so ask again (a request
    // can be lost, e.g. during tier-up; see Engine::terminate).
    const auto when = fired_ ? Clock::now() + kRefire : deadline_;
    if (cv_.wait_until(lk, when) == std::cv_status::timeout && armed_ && !stop_ &&
        (fired_ || Clock::now() >= deadline_)) {
      fired_ = true;
      terminate_();  // under the lock: disarm() cannot return in between
    }
  }
}

}  // namespace airlock::runtime
