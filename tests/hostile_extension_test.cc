// The host against a hostile extension (tests/fake_extension.cc speaks the real
// protocol on both transports, then lies) and a hostile zygote. Each case: the host
// cuts the liar off with a clear error, never signals a process it did not start, keeps
// serving other extensions, and its memory stays near where it was.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <future>
#include <mutex>
#include <thread>

#include "airlock/host.h"

using namespace airlock;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

std::string skill(const std::string& n) { return std::string(AIRLOCK_SKILL_DIR) + "/" + n + ".wasm"; }

long rss_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

template <class Pred>
bool wait_until(Pred p, std::chrono::milliseconds within) {
  auto end = std::chrono::steady_clock::now() + within;
  while (!p()) {
    if (std::chrono::steady_clock::now() > end) return p();
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

bool process_gone(int pid) {
  if (pid <= 0) return true;  // Extension::pid() is 0 once reaped (kill(0, 0) asks about our group)
  if (kill(pid, 0) != 0) return true;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  std::getline(f, s);
  auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() && s[p + 2] == 'Z';
}

// Log records, as the host's log callback hands them over.
struct Logs {
  std::mutex mu;
  std::vector<std::tuple<std::string, std::string, int, std::string>> records;  // ext, skill, level, message
  LogCallback callback() {
    return [this](const LogRecord& r) {
      std::lock_guard lk(mu);
      records.emplace_back(std::string(r.extension), std::string(r.skill), r.level, std::string(r.message));
    };
  }
  std::vector<std::string> messages() {
    std::lock_guard lk(mu);
    std::vector<std::string> out;
    for (auto& r : records) out.push_back(std::get<3>(r));
    return out;
  }
};

// Captures the host's own warnings and errors (spdlog's default logger).
struct HostLog {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512);
  HostLog() { spdlog::default_logger()->sinks().push_back(sink); }
  ~HostLog() {
    auto& s = spdlog::default_logger()->sinks();
    s.erase(std::remove(s.begin(), s.end(), sink), s.end());
  }
  bool has(const std::string& text, bool quiet = false) {
    for (auto& l : sink->last_formatted()) {
      if (l.find(text) != std::string::npos) return true;
    }
    if (quiet) return false;
    std::cerr << "the host's log has no \"" << text << "\"; it has:\n";
    for (auto& l : sink->last_formatted()) std::cerr << "  " << l;
    return false;
  }
};

class HostileTest : public ::testing::TestWithParam<Transport> {
 protected:
  // The host's memory before the case and after its Host is gone (for the record; the
  // cases that could grow it assert bounds themselves).
  void SetUp() override { rss_before_ = rss_kb(); }
  void TearDown() override {
    std::cout << "[rss] " << ::testing::UnitTest::GetInstance()->current_test_info()->name() << ": " << rss_before_
              << " -> " << rss_kb() << " KB\n";
  }
  long rss_before_ = 0;
  HostOptions opts() {
    HostOptions o;
    o.transport = GetParam();
    o.extension_binary = AIRLOCK_FAKE_EXTENSION_BIN;
    o.use_zygote = false;  // the zygote's own lies are ZygoteTest's
    o.log_level = "warn";
    o.log_callback = logs.callback();
    return o;
  }
  ExtensionOptions fake(const std::string& mode, const std::string& name = "fake") {
    ExtensionOptions e;
    e.name = name;
    e.env = {"AIRLOCK_FAKE=" + mode};
    e.start_timeout = 10s;
    return e;
  }
  // Waits until the host has given up on the extension and says why.
  void expect_cut_off(Extension& ext, const std::string& why) {
    ASSERT_TRUE(wait_until([&] { return !ext.alive(); }, 10s));
    auto r = ext.call("anything", "x");
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.error().message, HasSubstr(why)) << r.error().to_string();
    EXPECT_THAT(r.error().message, HasSubstr("extension 'fake'"));
  }
  Logs logs;
};

TEST_P(HostileTest, RepeatedReadyCutsTheExtensionOffBeforeAnyResend) {
  Host h(opts());
  auto ext = h.spawn(fake("ready-flood"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  const long before = rss_kb();
  std::string module(1 << 20, 'w');  // 1 MiB: each Ready obeyed would resend it
  ASSERT_TRUE(ext->load_skill_bytes("big", std::span(reinterpret_cast<const uint8_t*>(module.data()), module.size())).ok());
  expect_cut_off(*ext, "sent Ready twice");
  const long after = rss_kb();
  std::cout << "host RSS " << before << " -> " << after << " KB after 2,000 Ready frames\n";
  EXPECT_LT(after - before, 32 * 1024);
}

TEST_P(HostileTest, AnotherProtocolVersionFailsTheSpawn) {
  Host h(opts());
  auto ext = h.spawn(fake("bad-version"));
  ASSERT_FALSE(ext.ok());
  EXPECT_THAT(ext.error().message, HasSubstr("protocol version 1"));
}

TEST_P(HostileTest, AResponseToARequestNeverSentCutsItOff) {
  Host h(opts());
  auto ext = h.spawn(fake("stray-response"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  auto r = ext->call("echo", "x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::Unavailable);
  EXPECT_THAT(r.error().message, HasSubstr("which was never sent"));
  expect_cut_off(*ext, "which was never sent");
}

TEST_P(HostileTest, AnsweringTwiceCutsItOff) {
  Host h(opts());
  auto ext = h.spawn(fake("double-response"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_EQ(*ext->call("echo", "first"), "first");
  expect_cut_off(*ext, "twice");
}

TEST_P(HostileTest, AFrameOnlyHostsSendCutsItOff) {
  Host h(opts());
  auto ext = h.spawn(fake("host-frame"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_FALSE(ext->call("echo", "x").ok());
  expect_cut_off(*ext, "sent a Cancel frame, which only a host sends");
}

TEST_P(HostileTest, ARequestIdOutsideTheExtensionRangeCutsItOff) {
  Host h(opts());
  auto ext = h.spawn(fake("forged-service"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_FALSE(ext->call("echo", "x").ok());
  expect_cut_off(*ext, "outside the extension's id range");
}

TEST_P(HostileTest, AnAbsurdSharedOutputIsAnErrorNotAnAbort) {
  auto o = opts();
  const long before = rss_kb();
  {
    Host h(o);
    auto ext = h.spawn(fake("huge-output"));
    ASSERT_TRUE(ext.ok()) << ext.error().to_string();
    auto r = ext->call("echo", "x");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Code::ResourceExhausted) << r.error().to_string();
    EXPECT_THAT(r.error().message, HasSubstr("extension 'fake'"));
    auto other = h.spawn(fake("echo", "other"));
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(*other->call("echo", "still here"), "still here");
  }
  o.limits.max_shared_bytes = 1ull << 40;  // the buffer is accepted; the output is still too large
  {
    Host h(o);
    auto ext = h.spawn(fake("huge-output"));
    ASSERT_TRUE(ext.ok()) << ext.error().to_string();
    auto r = ext->call("echo", "x");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Code::ResourceExhausted);
    EXPECT_THAT(r.error().message, HasSubstr("HostLimits::max_output_bytes"));
  }
  EXPECT_LT(rss_kb() - before, 16 * 1024);
}

TEST_P(HostileTest, LogLinesAreEscapedAndAttributedByTheHost) {
  Host h(opts());
  auto ext = h.spawn(fake("log-forge"));
  ASSERT_TRUE(ext.ok());
  ASSERT_TRUE(ext->call("echo", "x").ok());
  ASSERT_TRUE(wait_until([&] { return logs.messages().size() >= 2; }, 5s));
  std::lock_guard lk(logs.mu);
  bool forged = false, escapes = false;
  for (auto& [e, sk, level, msg] : logs.records) {
    EXPECT_EQ(e, "fake");
    EXPECT_EQ(msg.find_first_of("\n\r\x1b\x07"), std::string::npos) << msg;
    EXPECT_EQ(sk.find_first_of("\n\r\x1b\x07"), std::string::npos) << sk;
    if (msg.find("\\n[2026-12-01 00:00:00.000] [critical] [host] FORGED") == 0) forged = true;
    if (msg.find("\\e[2J\\e[31mred\\rover\\x9b6n") != std::string::npos) {
      escapes = true;
      EXPECT_EQ(sk, "\\e]0;title\\x07");
    }
  }
  EXPECT_TRUE(forged);
  EXPECT_TRUE(escapes);
}

TEST_P(HostileTest, AFloodOfLogLinesIsCutToTheRateAndCounted) {
  auto o = opts();
  o.limits.log_lines_per_second = 100;
  Host h(o);
  auto ext = h.spawn(fake("log-flood"));
  ASSERT_TRUE(ext.ok());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(ext->call("echo", "x").ok());
  auto count = [&](uint64_t& passed, uint64_t& dropped) {
    passed = dropped = 0;
    for (auto& m : logs.messages()) {
      if (m.rfind("flood ", 0) == 0) passed++;
      if (auto p = m.find(" log lines dropped"); p != std::string::npos) dropped += std::stoull(m.substr(0, p));
    }
    return passed + dropped;
  };
  uint64_t passed = 0, dropped = 0;
  // The count of what was dropped arrives with the next health tick (1 s by default).
  ASSERT_TRUE(wait_until([&] { return count(passed, dropped) == 20000; }, 10s)) << passed << " + " << dropped;
  // At most the burst of 200 plus 100 a second for as long as the flood can have lasted.
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LE(passed, 200 + static_cast<uint64_t>(100 * secs) + 1) << "in " << secs << " s";
  EXPECT_GT(dropped, 15000u);
}

TEST_P(HostileTest, OneCallCannotOpenUnlimitedServiceRequests) {
  auto o = opts();
  Host h(o);
  std::mutex mu;
  std::vector<ServiceRequest> held;  // never answered while the call runs
  h.register_service("svc", [&](ServiceRequest r) {
    std::lock_guard lk(mu);
    held.push_back(r);
  });
  auto ext = h.spawn(fake("service-flood"));
  ASSERT_TRUE(ext.ok());
  const long before = rss_kb();
  auto f = ext->call_async("echo", "x");
  ASSERT_TRUE(wait_until([&] { std::lock_guard lk(mu); return held.size() >= o.limits.max_service_requests_per_call; }, 10s));
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(f.get().ok());
  {
    std::lock_guard lk(mu);
    EXPECT_EQ(held.size(), o.limits.max_service_requests_per_call);  // 5,000 asked, the rest refused at once
    for (auto& r : held) EXPECT_TRUE(r.cancelled());                 // ended with their call
  }
  EXPECT_LT(rss_kb() - before, 32 * 1024);
  EXPECT_TRUE(ext->alive());
}

TEST_P(HostileTest, AnExtensionThatStopsAnsweringHealthChecksIsKilledAndRestarted) {
  auto o = opts();
  o.health_interval = 50ms;
  o.health_timeout = 300ms;
  Host h(o);
  auto eo = fake("no-health");
  eo.restart.mode = RestartPolicy::Mode::OnFailure;
  eo.restart.initial_backoff = 10ms;
  HostLog log;
  auto ext = h.spawn(eo);
  ASSERT_TRUE(ext.ok());
  const int first = ext->pid();
  ASSERT_TRUE(wait_until([&] { return ext->pid() != first && ext->pid() != 0 && ext->alive(); }, 10s));
  EXPECT_TRUE(process_gone(first));
  EXPECT_TRUE(log.has("did not answer a health check within 300 ms"));
}

INSTANTIATE_TEST_SUITE_P(Transports, HostileTest, ::testing::Values(Transport::Msgpack, Transport::Grpc),
                         [](const auto& i) { return std::string(to_string(i.param)); });

// The ring pairs this process holds open ("/memfd:airlock-ring" in /proc/self/fd).
int open_rings() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    n += !ec && target.string().find("memfd:airlock-ring") != std::string::npos;
  }
  return n;
}

// The shared-memory ring (HostOptions::ring_bytes) is memory the extension writes: an
// index it could not have published cuts it off with the reason, a flood of doorbell
// bytes costs it nothing but reads, and the host goes on serving others.
class HostileRingTest : public HostileTest {
 protected:
  HostOptions ring_opts() {
    HostOptions o = opts();
    o.ring_bytes = 64 * 1024;
    // No health checks: a ping the fake read would publish a good tail again before the
    // call that is to find the bad one.
    o.health_interval = 0ms;
    return o;
  }
};

TEST_P(HostileRingTest, AnImpossibleHeadCutsTheExtensionOff) {
  Host h(ring_opts());
  auto ext = h.spawn(fake("ring-bad-head"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_EQ(*ext->call("echo", "first"), "first");
  auto second = ext->call("echo", "second");  // answered by a broken ring
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.error().message, HasSubstr("malformed ring: the writer's head")) << second.error().to_string();
  expect_cut_off(*ext, "malformed ring: the writer's head");
  // The cut-off process's ring is gone with its channel: none is left to pile up.
  EXPECT_TRUE(wait_until([] { return open_rings() == 0; }, 5s)) << open_rings() << " ring memfds still open";
  auto other = h.spawn(fake("echo", "other"));
  ASSERT_TRUE(other.ok()) << other.error().to_string();
  EXPECT_EQ(*other->call("echo", "still served"), "still served");
  EXPECT_EQ(open_rings(), 1) << "one ring pair per live extension process";
}

TEST_P(HostileRingTest, AnImpossibleTailCutsTheExtensionOffAtTheNextWrite) {
  Host h(ring_opts());
  auto ext = h.spawn(fake("ring-bad-tail"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_EQ(*ext->call("echo", "first"), "first");
  auto second = ext->call("echo", "second");  // the write that finds the tail
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.error().message, HasSubstr("malformed ring: the reader's tail")) << second.error().to_string();
  expect_cut_off(*ext, "malformed ring: the reader's tail");
}

TEST_P(HostileRingTest, AFloodOfDoorbellBytesIsReadAndIgnored) {
  Host h(ring_opts());
  auto ext = h.spawn(fake("ring-doorbells"));
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  for (int i = 0; i < 50; i++) {
    auto r = ext->call("echo", "call " + std::to_string(i));
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, "call " + std::to_string(i));
  }
  EXPECT_TRUE(ext->alive());
}

INSTANTIATE_TEST_SUITE_P(Msgpack, HostileRingTest, ::testing::Values(Transport::Msgpack),
                         [](const auto& i) { return std::string(to_string(i.param)); });

// ---- the same bounds against a real extension ----------------------------------------

class BoundsTest : public ::testing::TestWithParam<Transport> {
 protected:
  HostOptions opts() {
    HostOptions o;
    o.transport = GetParam();
    o.extension_binary = AIRLOCK_EXTENSION_BIN;
    o.log_level = "warn";
    return o;
  }
  Extension spawn(Host& h, const std::string& name) {
    ExtensionOptions eo;
    eo.name = name;
    auto r = h.spawn(eo);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return r.value();
  }
};

TEST_P(BoundsTest, AStoppedExtensionGetsBackpressureThenIsDeclaredDead) {
  auto o = opts();
  o.limits.max_queued_bytes = 8u << 20;
  o.auto_share_min_bytes = 0;  // 512 KiB inputs travel inline: they queue in the host
  o.health_interval = 100ms;
  o.health_timeout = 500ms;
  Host h(o);
  auto ext = spawn(h, "stopped");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo"), SkillLimits{64, 1000}).ok());
  const long before = rss_kb();
  ASSERT_EQ(kill(ext.pid(), SIGSTOP), 0);
  const std::string input(512 << 10, 'q');
  std::vector<std::future<CallResult>> fs;
  for (int i = 0; i < 1000; ++i) fs.push_back(ext.call_async("echo", input));
  int refused = 0, failed = 0;
  long peak = 0;
  for (auto& f : fs) {
    ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
    auto r = f.get();
    ASSERT_FALSE(r.ok());
    if (r.error().code == Code::ResourceExhausted) {
      refused++;
      EXPECT_THAT(r.error().message, HasSubstr("HostLimits::max_queued_bytes"));
    } else {
      failed++;
      EXPECT_THAT(r.error().message, HasSubstr("health check")) << r.error().to_string();
    }
    peak = std::max(peak, rss_kb());
  }
  EXPECT_GT(refused, 900);
  EXPECT_GT(failed, 0);
  ASSERT_TRUE(wait_until([&] { return !ext.alive() && ext.pid() == 0; }, 10s));
  const long after = rss_kb();
  std::cout << "host RSS " << before << " KB, peak " << peak << " KB, after " << after << " KB; " << refused
            << " refused, " << failed << " failed when it was declared dead\n";
  EXPECT_LT(peak - before, 64 * 1024);
  EXPECT_LT(after - before, 24 * 1024);
}

TEST_P(BoundsTest, CallsInFlightPerExtensionAreBounded) {
  auto o = opts();
  o.limits.max_calls_in_flight = 10;
  Host h(o);
  auto ext = spawn(h, "busy");
  ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper")).ok());
  std::vector<std::future<CallResult>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(ext.call_async("sleeper", "300"));
  auto r = ext.call("sleeper", "1");
  EXPECT_EQ(r.error().code, Code::ResourceExhausted);
  EXPECT_THAT(r.error().message, HasSubstr("HostLimits::max_calls_in_flight"));
  for (auto& f : fs) EXPECT_TRUE(f.get().ok());
  EXPECT_EQ(*ext.call("sleeper", "1"), "slept 1");  // room again
}

TEST_P(BoundsTest, ServicesAnswerOnlyTheExtensionsTheyAllow) {
  auto o = opts();
  Host h(o);
  h.register_service("for_b", [](ServiceRequest r) { r.reply(std::string("b only")); }, {.allow = {{"B"}}});
  auto a = spawn(h, "A");
  auto b = spawn(h, "B");
  for (auto* e : {&a, &b}) ASSERT_TRUE(e->load_skill("caller", skill("caller")).ok());
  auto denied = a.call("caller", "for_b|x");
  EXPECT_EQ(denied.error().code, Code::PermissionDenied) << denied.error().to_string();
  EXPECT_THAT(denied.error().message, HasSubstr("extension 'A' may not call host service 'for_b'"));
  EXPECT_EQ(*b.call("caller", "for_b|x"), "b only");
}

TEST_P(BoundsTest, DenyByDefaultNeedsEveryServiceToNameItsCallers) {
  auto o = opts();
  o.default_service_access = {};
  Host h(o);
  h.register_service("open", [](ServiceRequest r) { r.reply(std::string("no")); });
  h.register_service("named", [](ServiceRequest r) { r.reply(std::string("yes")); }, {.allow = {{"A"}}});
  auto a = spawn(h, "A");
  ASSERT_TRUE(a.load_skill("caller", skill("caller")).ok());
  EXPECT_EQ(a.call("caller", "open|x").error().code, Code::PermissionDenied);
  EXPECT_EQ(*a.call("caller", "named|x"), "yes");
}

TEST_P(BoundsTest, ABlockedExtensionCannotStarveAnotherOfBlockingServiceWorkers) {
  auto o = opts();
  o.service_threads = 2;
  Host h(o);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> blocked{0};
  h.register_blocking_service("slow", [&](const ServiceRequest&) -> CallResult {
    blocked++;
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return release; });
    return std::string("slow done");
  });
  h.register_blocking_service("fast", [](const ServiceRequest&) -> CallResult { return std::string("fast done"); });
  auto a = spawn(h, "A");
  auto b = spawn(h, "B");
  for (auto* e : {&a, &b}) ASSERT_TRUE(e->load_skill("caller", skill("caller")).ok());
  std::vector<std::future<CallResult>> slow;
  for (int i = 0; i < 10; ++i) slow.push_back(a.call_async("caller", "slow|x"));
  ASSERT_TRUE(wait_until([&] { return blocked.load() >= 1; }, 10s));
  // A's ten jobs hold one worker (never both); B's job takes the other while A's wait.
  EXPECT_EQ(*b.call("caller", "fast|y"), "fast done");
  EXPECT_EQ(blocked.load(), 1);
  {
    std::lock_guard lk(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& f : slow) EXPECT_EQ(*f.get(), "slow done");
}

INSTANTIATE_TEST_SUITE_P(Transports, BoundsTest, ::testing::Values(Transport::Msgpack, Transport::Grpc),
                         [](const auto& i) { return std::string(to_string(i.param)); });

// ---- a hostile zygote ---------------------------------------------------------------------

// The fake as the extension binary, through a symlink in a folder of its own: the zygote
// (started with an empty environment) reads its mode from a file there.
class ZygoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("airlock-zygote-" + std::to_string(getpid()) + "-" +
                                                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::filesystem::create_symlink(AIRLOCK_FAKE_EXTENSION_BIN, dir_ / "airlock-extension");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void mode(const std::string& m) { std::ofstream(dir_ / "zygote-mode") << m << "\n"; }
  HostOptions opts() {
    HostOptions o;
    o.extension_binary = (dir_ / "airlock-extension").string();
    o.log_level = "warn";
    return o;
  }
  ExtensionOptions echo(const std::string& name) {
    ExtensionOptions e;
    e.name = name;
    e.env = {"AIRLOCK_FAKE=echo"};
    return e;
  }
  // Spawns until the host has logged `text`: the first spawn starts the zygote (and execs
  // meanwhile, as every spawn does until the zygote has said hello); a later one asks the
  // zygote and meets the lie. Every spawn must succeed (through exec) and answer.
  void spawn_until_logged(Host& h, HostLog& log, const std::string& text) {
    for (int i = 0; i < 50; ++i) {
      auto name = "e" + std::to_string(i);
      auto e = h.spawn(echo(name));
      ASSERT_TRUE(e.ok()) << e.error().to_string();
      EXPECT_EQ(*e->call("echo", name), name);
      if (log.has(text, /*quiet=*/true)) return;
    }
    EXPECT_TRUE(log.has(text));
  }
  std::filesystem::path dir_;
};

TEST_F(ZygoteTest, APidfdOfAProcessWeDidNotAskForIsRefusedAndNeverSignalled) {
  // The canary is a child of this process (so of the host too): only the socket it does
  // not hold says it was not forked for the host's request.
  pid_t canary = fork();
  if (canary == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    for (;;) pause();
  }
  std::ofstream(dir_ / "canary-pid") << canary << "\n";
  mode("hello-then-canary");
  HostLog log;
  {
    Host h(opts());
    spawn_until_logged(h, log, "does not hold the socket made for it");
  }
  EXPECT_EQ(waitpid(canary, nullptr, WNOHANG), 0) << "the canary was killed";
  EXPECT_EQ(kill(canary, 0), 0);
  kill(canary, SIGKILL);
  waitpid(canary, nullptr, 0);
}

TEST_F(ZygoteTest, ItsOwnPidfdIsRefused) {
  mode("own-pidfd");
  HostLog log;
  Host h(opts());
  spawn_until_logged(h, log, "names the zygote itself");
}

TEST_F(ZygoteTest, ASilentZygoteIsKilledAndTheSpawnExecs) {
  mode("silent-after-hello");
  HostLog log;
  Host h(opts());
  spawn_until_logged(h, log, "did not answer a spawn request within 2000 ms");
}

TEST_F(ZygoteTest, GarbageAndOldStylePidRepliesAreRefused) {
  for (const char* m : {"garbage-reply", "pid-number"}) {
    mode(m);
    HostLog log;
    Host h(opts());
    spawn_until_logged(h, log, "sent a bad reply");
  }
}

TEST_F(ZygoteTest, AFrameInsteadOfAHelloIsRefused) {
  mode("ready-frame");
  HostLog log;
  Host h(opts());
  spawn_until_logged(h, log, "sent a bad hello");
}

// The real zygote, killed between spawns: the next spawn still works.
TEST(RealZygoteTest, KillNineBetweenSpawns) {
  HostOptions o;
  o.extension_binary = AIRLOCK_EXTENSION_BIN;
  o.log_level = "warn";
  Host h(o);
  auto find_zygote = [] {
    for (auto& p : std::filesystem::directory_iterator("/proc")) {
      std::ifstream stat(p.path() / "stat");
      std::string s;
      if (!std::getline(stat, s)) continue;
      auto close = s.rfind(')');
      if (close == std::string::npos) continue;
      int ppid = 0;
      char state = 0;
      if (sscanf(s.c_str() + close + 2, "%c %d", &state, &ppid) != 2 || ppid != getpid() || state == 'Z') continue;
      std::ifstream cmd(p.path() / "cmdline");
      std::string c((std::istreambuf_iterator<char>(cmd)), {});
      if (c.find(std::string("zygote\0--fd", 11)) != std::string::npos) return std::stoi(p.path().filename());
    }
    return 0;
  };
  std::vector<Extension> exts;
  for (const char* n : {"a", "b"}) {
    ExtensionOptions eo;
    eo.name = n;
    auto e = h.spawn(eo);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    exts.push_back(*e);
  }
  int zygote = 0;
  ASSERT_TRUE(wait_until([&] { return (zygote = find_zygote()) != 0; }, 10s));
  ASSERT_EQ(kill(zygote, SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return process_gone(zygote); }, 5s));
  for (const char* n : {"c", "d"}) {
    ExtensionOptions eo;
    eo.name = n;
    auto e = h.spawn(eo);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    exts.push_back(*e);
  }
  for (auto& e : exts) {
    ASSERT_TRUE(e.load_skill("echo", skill("echo")).ok());
    EXPECT_EQ(*e.call("echo", e.name()), e.name());
  }
}

// A Host's destructor returns only when every process it started is gone and reaped:
// its extensions and its zygote. (The zygote's pidfd is non-blocking, libuv's poll made
// it so; waitid on it returned EAGAIN at once and the zygote was left running down,
// then a zombie, once per Host.)
TEST(RealZygoteTest, DestroyingTheHostReapsEveryProcessItStarted) {
  auto children = [] {
    std::vector<int> pids;
    for (auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream f(t.path() / "children");
      for (int pid; f >> pid;) pids.push_back(pid);
    }
    return pids;
  };
  ASSERT_TRUE(children().empty());
  for (int round = 0; round < 3; ++round) {
    {
      HostOptions o;
      o.extension_binary = AIRLOCK_EXTENSION_BIN;
      o.log_level = "warn";
      Host h(o);
      for (const char* n : {"a", "b"}) {
        ExtensionOptions eo;
        eo.name = n;
        auto e = h.spawn(eo);
        ASSERT_TRUE(e.ok()) << e.error().to_string();
        ASSERT_TRUE(e->load_skill("echo", skill("echo")).ok());
        EXPECT_EQ(*e->call("echo", n), n);
      }
      EXPECT_EQ(children().size(), 3u) << "two extensions and the zygote";
    }
    EXPECT_EQ(children(), std::vector<int>{}) << "round " << round;
  }
}

}  // namespace
