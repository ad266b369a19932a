// Watchdog (extension/runtime/watchdog.h): it fires for a deadline that passes, not for
// one disarmed in time, and an earlier deadline armed while it sleeps towards a later one
// still fires (it is woken for it).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "runtime/watchdog.h"

namespace airlock::runtime {
namespace {

using namespace std::chrono_literals;
using Clock = Watchdog::Clock;

struct Fired {
  std::mutex mu;
  std::condition_variable cv;
  int count = 0;
  void fire() {
    std::lock_guard lk(mu);
    ++count;
    cv.notify_all();
  }
  bool wait_for_first(std::chrono::milliseconds limit) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, limit, [&] { return count > 0; });
  }
};

TEST(Watchdog, FiresWhenTheDeadlinePassesAndSaysSoOnDisarm) {
  Fired f;
  Watchdog w([&] { f.fire(); });
  const auto deadline = Clock::now() + 20ms;
  w.arm(deadline);
  ASSERT_TRUE(f.wait_for_first(60s));
  EXPECT_GE(Clock::now(), deadline);
  EXPECT_TRUE(w.disarm());
}

TEST(Watchdog, ManyCallsDisarmedInTimeNeverFire) {
  Fired f;
  Watchdog w([&] { f.fire(); });
  for (int i = 0; i < 100'000; ++i) {
    w.arm(Clock::now() + 10s);
    ASSERT_FALSE(w.disarm()) << "call " << i;
  }
  EXPECT_EQ(f.count, 0);
}

TEST(Watchdog, AnEarlierDeadlineArmedWhileItSleepsTowardsALaterOneFires) {
  Fired f;
  Watchdog w([&] { f.fire(); });
  // The thread now sleeps towards a deadline an hour away...
  w.arm(Clock::now() + 1h);
  EXPECT_FALSE(w.disarm());
  // ... and must be woken for this one.
  w.arm(Clock::now() + 10ms);
  ASSERT_TRUE(f.wait_for_first(60s));
  EXPECT_TRUE(w.disarm());
}

TEST(Watchdog, ALaterDeadlineAfterAnEarlierOneIsStillHonoured) {
  Fired f;
  Watchdog w([&] { f.fire(); });
  // The thread sleeps towards a deadline that will be disarmed; the one armed next is
  // later, so nobody wakes it: it must find the new deadline when it wakes for the old.
  w.arm(Clock::now() + 30ms);
  EXPECT_FALSE(w.disarm());
  const auto deadline = Clock::now() + 60ms;
  w.arm(deadline);
  ASSERT_TRUE(f.wait_for_first(60s));
  EXPECT_GE(Clock::now(), deadline);
  EXPECT_TRUE(w.disarm());
}

TEST(Watchdog, KeepsFiringUntilDisarmed) {
  Fired f;
  Watchdog w([&] { f.fire(); });
  w.arm(Clock::now());
  std::unique_lock lk(f.mu);
  ASSERT_TRUE(f.cv.wait_for(lk, 60s, [&] { return f.count >= 3; }));  // every kRefire
  lk.unlock();
  EXPECT_TRUE(w.disarm());
}

}  // namespace
}  // namespace airlock::runtime
