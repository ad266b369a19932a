// Call chains through host services, on both transports: host -> A -> host service ->
// B -> back, recursion, depth limit, deadlines, cancellation, permissions, crashes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "airlock/host.h"

using namespace airlock;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

namespace {

std::string skill(const std::string& n) { return std::string(AIRLOCK_SKILL_DIR) + "/" + n + ".wasm"; }

// Polls `done` every few milliseconds until it holds or `within` has passed; returns done().
template <class Pred>
bool wait_until(Pred done, std::chrono::milliseconds within) {
  const auto end = Clock::now() + within;
  while (!done()) {
    if (Clock::now() >= end) return done();
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Every chain test runs on both transports, and on msgpack once more with spinning loops
// (HostOptions::spin), and with the frames in shared-memory rings (HostOptions::
// ring_bytes, small enough that large frames wrap and wait for room), sleeping and
// spinning: the same answers, errors, deadlines and cancellations.
struct ChainSetup {
  Transport transport;
  std::chrono::microseconds spin{0};
  uint32_t ring_bytes = 0;
};
void PrintTo(const ChainSetup& c, std::ostream* os) {
  *os << to_string(c.transport) << ", spin " << c.spin.count() << " us, ring " << c.ring_bytes << " bytes";
}

class ChainTest : public ::testing::TestWithParam<ChainSetup> {
 protected:
  void SetUp() override {
    HostOptions o;
    o.transport = GetParam().transport;
    o.spin = GetParam().spin;
    o.ring_bytes = GetParam().ring_bytes;
    o.extension_binary = AIRLOCK_EXTENSION_BIN;
    o.log_level = "warn";
    host_ = std::make_unique<Host>(o);
    a_ = spawn("A", {});
    b_ = spawn("B", {});
    for (auto* e : {&*a_, &*b_}) {
      for (auto n : {"caller", "countdown", "echo", "sleeper"}) ASSERT_TRUE(e->load_skill(n, skill(n)).ok());
    }
  }
  std::optional<Extension> spawn(const std::string& name, std::vector<std::string> may_call) {
    ExtensionOptions eo;
    eo.name = name;
    eo.may_call = std::move(may_call);
    auto r = host_->spawn(eo);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return r.ok() ? std::optional<Extension>(r.value()) : std::nullopt;
  }
  std::unique_ptr<Host> host_;
  std::optional<Extension> a_, b_;
};

TEST_P(ChainTest, HostToAToHostServiceToBAndBack) {
  host_->register_service("relay", [](ServiceRequest req) {
    EXPECT_EQ(req.extension(), "A");
    EXPECT_EQ(req.depth(), 1u);
    req.call("B", "echo", "via B: " + req.input(), [req](CallResult r) { req.reply(std::move(r)); });
  });
  auto r = a_->call("caller", "relay|hello");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, "via B: hello");
}

TEST_P(ChainTest, RecursionThroughTheHostTenDeep) {
  host_->register_service("countdown", [](ServiceRequest req) {
    req.call(req.extension(), "countdown", req.input(), [req](CallResult r) { req.reply(std::move(r)); });
  });
  auto r = a_->call("countdown", "10");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, "10,9,8,7,6,5,4,3,2,1,0");
}

TEST_P(ChainTest, DepthLimitFailsWithTheChainNamed) {
  host_->register_service("countdown", [](ServiceRequest req) {
    req.call(req.extension(), "countdown", req.input(), [req](CallResult r) { req.reply(std::move(r)); });
  });
  auto t0 = Clock::now();
  auto r = a_->call("countdown", "40");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::ResourceExhausted) << r.error().to_string();
  EXPECT_THAT(r.error().message, HasSubstr("call chain too deep (17 > limit 16)"));
  EXPECT_THAT(r.error().message, HasSubstr("A/countdown -> countdown -> A/countdown"));
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(*a_->call("echo", "still fine"), "still fine");
}

TEST_P(ChainTest, NestedCallsInheritTheOuterDeadline) {
  std::promise<CallResult> nested;
  host_->register_service("slow", [&](ServiceRequest req) {
    EXPECT_LT(req.deadline() - Clock::now(), 300ms);
    req.call("B", "sleeper", "5000", [&nested, req](CallResult r) {
      nested.set_value(r);
      req.reply(std::move(r));
    });
  });
  CallOptions co;
  co.timeout = 200ms;
  auto t0 = Clock::now();
  auto r = a_->call("caller", "slow|x", co);
  EXPECT_EQ(r.error().code, Code::Timeout) << r.error().to_string();
  // Generous: half the 5000 ms the nested sleeper would take if it did not inherit the
  // chain's 200 ms deadline.
  const auto bound = 2500ms;
  auto f = nested.get_future();
  ASSERT_EQ(f.wait_until(t0 + bound), std::future_status::ready) << "the nested call outlived its chain";
  auto n = f.get();
  EXPECT_FALSE(n.ok());
  EXPECT_TRUE(n.error().code == Code::Timeout || n.error().code == Code::Cancelled) << n.error().to_string();
  EXPECT_LT(Clock::now() - t0, bound);
  EXPECT_EQ(*b_->call("echo", "B serves"), "B serves");
}

TEST_P(ChainTest, CancellingTheOuterCallCancelsTheNestedOne) {
  std::promise<CallResult> nested;
  std::promise<void> started;
  host_->register_service("slow", [&](ServiceRequest req) {
    req.call("B", "sleeper", "10000", [&nested, req](CallResult r) {
      nested.set_value(r);
      req.reply(std::move(r));
    });
    started.set_value();
  });
  std::promise<CallResult> outer;
  auto id = a_->call_async("caller", "slow|x", {}, [&](CallResult r) { outer.set_value(std::move(r)); });
  ASSERT_EQ(started.get_future().wait_for(2s), std::future_status::ready);
  // No pause needed: the handler runs on the I/O thread, where req.call() has sent the
  // nested request to B before `started` is set; the cancel is posted to that thread
  // after it, and its Cancel frame follows the request on B's channel.
  auto t0 = Clock::now();
  a_->cancel(id);
  EXPECT_EQ(outer.get_future().get().error().code, Code::Cancelled);
  // Generous: half the 10 000 ms the nested sleeper would take if it were not cancelled.
  const auto bound = 5000ms;
  auto f = nested.get_future();
  ASSERT_EQ(f.wait_until(t0 + bound), std::future_status::ready);
  EXPECT_EQ(f.get().error().code, Code::Cancelled);
  EXPECT_LT(Clock::now() - t0, bound);
}

TEST_P(ChainTest, ExtensionToExtensionNeedsPermission) {
  auto r = a_->call("caller", "@B/echo|hi");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::PermissionDenied) << r.error().to_string();
  EXPECT_THAT(r.error().message, HasSubstr("may not call 'B/echo'"));
  auto c = spawn("C", {"B/echo"});
  ASSERT_TRUE(c->load_skill("caller", skill("caller")).ok());
  auto ok = c->call("caller", "@B/echo|hi");
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  EXPECT_EQ(*ok, "hi");
  EXPECT_EQ(c->call("caller", "@B/sleeper|1").error().code, Code::PermissionDenied);
}

// "@EXT/SKILL" chains while the caller waits in Extension::call: the waiting thread may
// serve them itself (msgpack: calls.cc, serve_chain_here) instead of the loop. Whoever
// serves it, the answers, the errors (where in the chain, who said it), the deadline
// and recursion through the calling extension are the same.
TEST_P(ChainTest, ExtensionToExtensionChainsAnswerFailAndKeepTheirDeadline) {
  auto c = spawn("C", {"B", "C"});
  for (auto n : {"caller", "echo", "sleeper"}) ASSERT_TRUE(c->load_skill(n, skill(n)).ok());
  for (int i = 0; i < 30; ++i) {
    const std::string in = "round " + std::to_string(i);
    auto r = c->call("caller", "@B/echo|" + in);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, in);
  }
  // Through the calling extension again (C -> C -> B): its socket is not held while the
  // nested call runs in it.
  auto twice = c->call("caller", "@C/caller|@B/echo|deep");
  ASSERT_TRUE(twice.ok()) << twice.error().to_string();
  EXPECT_EQ(*twice, "deep");
  // B's error, named where it happened.
  auto bad = c->call("caller", "@B/sleeper|not a number");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.error().message, HasSubstr("in B/sleeper: "));
  EXPECT_THAT(bad.error().message, HasSubstr("extension 'B'"));
  EXPECT_THAT(bad.error().message, HasSubstr("bad milliseconds"));
  // The outer deadline bounds the nested call.
  CallOptions co;
  co.timeout = 300ms;
  auto slow = c->call("caller", "@B/sleeper|5000", co);
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.error().code, Code::Timeout) << slow.error().to_string();
  // A skill B does not have: NotFound from B, passed on.
  auto missing = c->call("caller", "@B/nothing|x");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error().message, HasSubstr("in B/nothing: ")) << missing.error().to_string();
  // Everyone still serves, and nothing is left in flight.
  EXPECT_EQ(*c->call("caller", "@B/echo|after"), "after");
  EXPECT_EQ(*b_->call("echo", "B serves"), "B serves");
  ASSERT_TRUE(wait_until([&] { return b_->stats().in_flight == 0 && c->stats().in_flight == 0; }, 10s));
}

// A crash of B while the waiting thread serves the chain reaches the caller, and C
// keeps serving.
TEST_P(ChainTest, ACrashOfBDuringAnExtensionToExtensionChainReachesTheCaller) {
  auto c = spawn("C", {"B"});
  ASSERT_TRUE(c->load_skill("caller", skill("caller")).ok());
  ASSERT_TRUE(c->load_skill("echo", skill("echo")).ok());
  auto f = std::async(std::launch::async, [&] { return c->call("caller", "@B/sleeper|60000"); });
  ASSERT_TRUE(wait_until([&] { return b_->stats().in_flight == 1; }, 10s));
  const int pid = b_->pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(f.wait_for(60s), std::future_status::ready);
  auto r = f.get();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message, HasSubstr("in B/sleeper: ")) << r.error().to_string();
  EXPECT_EQ(*c->call("echo", "C serves"), "C serves");
}

TEST_P(ChainTest, CrashOfBMidChainReachesTheCallerAndASurvives) {
  std::promise<void> started;
  host_->register_service("viaB", [&](ServiceRequest req) {
    req.call("B", "sleeper", "10000", [req](CallResult r) { req.reply(std::move(r)); });
    started.set_value();
  });
  auto f = a_->call_async("caller", "viaB|x");
  ASSERT_EQ(started.get_future().wait_for(2s), std::future_status::ready);
  // No pause needed: the handler runs on the I/O thread, where req.call() has sent the
  // nested request to B (it is in flight there) before `started` is set.
  kill(b_->pid(), SIGKILL);
  ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
  auto r = f.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::ExtensionCrashed) << r.error().to_string();
  EXPECT_THAT(r.error().message, HasSubstr("in B/sleeper"));
  EXPECT_THAT(r.error().message, HasSubstr("extension 'B'"));
  EXPECT_EQ(*a_->call("echo", "A serves"), "A serves");
}

TEST_P(ChainTest, UnknownServiceIsNotFound) {
  auto r = a_->call("caller", "nothing.here|x");
  EXPECT_EQ(r.error().code, Code::NotFound);
  EXPECT_THAT(r.error().message, HasSubstr("no host service 'nothing.here'"));
}

struct Counter {
  std::atomic<int> n{0};
  CallResult add(const ServiceRequest& r) { return std::to_string(n += std::stoi(r.input())); }
  CallResult get(const ServiceRequest&) { return std::to_string(n.load()); }
};

TEST_P(ChainTest, BlockingServicesAndAProxiedSingleton) {
  auto counter = std::make_shared<Counter>();
  host_->register_object<Counter>("counter", counter, {{"add", &Counter::add}, {"get", &Counter::get}});
  host_->register_blocking_service("nested", [](const ServiceRequest& req) { return req.call("B", "echo", req.input()); });
  EXPECT_EQ(*a_->call("caller", "counter.add|5"), "5");
  EXPECT_EQ(*b_->call("caller", "counter.add|2"), "7");
  EXPECT_EQ(*a_->call("caller", "counter.get|"), "7");
  EXPECT_EQ(*a_->call("caller", "nested|blocking ok"), "blocking ok");
}

TEST_P(ChainTest, ALateServiceDoesNotBlockOtherCalls) {
  std::vector<ServiceRequest> held;
  std::mutex mu;
  host_->register_service("later", [&](ServiceRequest req) {
    std::lock_guard lk(mu);
    held.push_back(req);
  });
  auto f = a_->call_async("caller", "later|x");
  for (int i = 0; i < 20; ++i) ASSERT_EQ(*a_->call("echo", "meanwhile"), "meanwhile");
  // The service request may still be on its way; wait for it rather than for a while.
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lk(mu);
        return !held.empty();
      },
      5s))
      << "the service request never arrived";
  {
    std::lock_guard lk(mu);
    ASSERT_EQ(held.size(), 1u);
    std::thread([req = held[0]] { req.reply(std::string("answered later")); }).detach();
  }
  EXPECT_EQ(*f.get(), "answered later");
}

INSTANTIATE_TEST_SUITE_P(Transports, ChainTest,
                         ::testing::Values(ChainSetup{Transport::Msgpack}, ChainSetup{Transport::Grpc},
                                           ChainSetup{Transport::Msgpack, std::chrono::microseconds(50)},
                                           ChainSetup{Transport::Msgpack, {}, 64 * 1024},
                                           ChainSetup{Transport::Msgpack, std::chrono::microseconds(50), 64 * 1024}),
                         [](const auto& i) {
                           return std::string(to_string(i.param.transport)) + (i.param.ring_bytes ? "_ring" : "") +
                                  (i.param.spin.count() ? "_spinning" : "");
                         });

}  // namespace
