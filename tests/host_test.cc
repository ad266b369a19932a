// The host library end to end, on both transports: real extension processes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "airlock/host.h"
#include "airlock/skill_set.h"

using namespace airlock;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

namespace {

std::string skill(const std::string& n) { return std::string(AIRLOCK_SKILL_DIR) + "/" + n + ".wasm"; }

bool process_gone(int pid) {
  // Extension::pid() is 0 once the host has reaped its process (kill(0, 0) would ask
  // about our own process group).
  if (pid <= 0) return true;
  if (kill(pid, 0) != 0) return true;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  std::getline(f, s);
  auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() && s[p + 2] == 'Z';  // a zombie is gone too
}

bool wait_gone(int pid, std::chrono::milliseconds within) {
  auto end = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < end) {
    if (process_gone(pid)) return true;
    std::this_thread::sleep_for(5ms);
  }
  return process_gone(pid);
}

// Polls `done` every few milliseconds until it holds or `within` has passed: waits on
// an event the test cannot be told of directly. Returns done().
template <class Pred>
bool wait_until(Pred done, std::chrono::milliseconds within) {
  const auto end = std::chrono::steady_clock::now() + within;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= end) return done();
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// CPU time (user + system, all threads) a process has used so far, in ms; -1 if unknown.
long cpu_ms(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  std::getline(f, s);
  auto p = s.rfind(')');
  if (p == std::string::npos) return -1;
  std::istringstream in(s.substr(p + 1));
  std::string skip;
  for (int field = 3; field <= 13; ++field) in >> skip;  // state .. cmajflt
  long utime = -1, stime = -1;
  in >> utime >> stime;
  if (!in || utime < 0 || stime < 0) return -1;
  return (utime + stime) * 1000 / sysconf(_SC_CLK_TCK);
}

// A host service "hold" that never answers: it keeps each request, unanswered, and
// counts them, so a test can wait until calls are really inside the extension (a
// caller skill's request arrives only once the extension is running that call).
// Declare it after the Host: it drops the requests while the host is still alive.
class HoldService {
 public:
  explicit HoldService(Host& h) {
    h.register_service("hold", [s = state_](ServiceRequest req) {
      {
        std::lock_guard lk(s->mu);
        s->held.push_back(std::move(req));
      }
      s->cv.notify_all();
    });
  }
  ~HoldService() {
    std::lock_guard lk(state_->mu);
    state_->held.clear();
  }
  // Waits until `n` requests have arrived; false if they did not within `within`.
  bool wait_for(size_t n, std::chrono::milliseconds within) {
    std::unique_lock lk(state_->mu);
    return state_->cv.wait_for(lk, within, [&] { return state_->held.size() >= n; });
  }
  size_t count() {
    std::lock_guard lk(state_->mu);
    return state_->held.size();
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<ServiceRequest> held;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

uint64_t le64(const std::string& s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v |= uint64_t(uint8_t(s[i])) << (8 * i);
  return v;
}

// Every HostTest runs on both transports, and on msgpack twice more with the frames in
// shared-memory rings (HostOptions::ring_bytes; small, so that large frames wrap and
// wait for room): loops sleeping, and loops spinning (HostOptions::spin), the
// configuration the ring is for.
struct HostSetup {
  Transport transport;
  uint32_t ring_bytes = 0;
  std::chrono::microseconds spin{0};
};
void PrintTo(const HostSetup& h, std::ostream* os) {
  *os << to_string(h.transport) << ", ring " << h.ring_bytes << " bytes, spin " << h.spin.count() << " us";
}

class HostTest : public ::testing::TestWithParam<HostSetup> {
 protected:
  HostOptions opts() {
    HostOptions o;
    o.transport = GetParam().transport;
    o.ring_bytes = GetParam().ring_bytes;
    o.spin = GetParam().spin;
    o.extension_binary = AIRLOCK_EXTENSION_BIN;
    o.log_level = "warn";
    return o;
  }
  Extension spawn(Host& h, const std::string& name, ExtensionOptions eo = {}) {
    eo.name = name;
    auto r = h.spawn(eo);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return r.value();
  }
};

TEST_P(HostTest, EverySampleSkillThroughTheHost) {
  Host h(opts());
  auto ext = spawn(h, "samples");
  EXPECT_GT(ext.pid(), 0);
  for (auto n : {"echo", "sum", "greet", "fail", "trap"}) ASSERT_TRUE(ext.load_skill(n, skill(n)).ok()) << n;
  EXPECT_EQ(ext.skills(), (std::vector<std::string>{"echo", "fail", "greet", "sum", "trap"}));
  EXPECT_EQ(*ext.call("echo", std::string("a\0b", 3)), std::string("a\0b", 3));
  EXPECT_EQ(le64(*ext.call("sum", "\x01\x02\x03")), 6u);
  EXPECT_EQ(*ext.call("greet", "Ada,512,20"), "Hello, Ada!");
  auto f = ext.call("fail", "boom");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.error().message, HasSubstr("fail: boom"));
  auto t = ext.call("trap", "div0");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code, Code::Trap);
  EXPECT_EQ(t.error().trap, TrapKind::DivideByZero);
  EXPECT_EQ(*ext.call("echo", "after trap"), "after trap");
}

// GET http://127.0.0.1:PORT/metrics, the whole response (headers and body).
std::string http_get_metrics(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST_P(HostTest, ServeMetricsAnswersScrapesWithEveryExtension) {
  Host h(opts());
  auto ext = spawn(h, "scraped");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ext.call("echo", "x").ok());
  auto port = h.serve_metrics("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.error().to_string();
  ASSERT_GT(*port, 0);
  const std::string r = http_get_metrics(*port);
  EXPECT_THAT(r, HasSubstr("200 OK"));
  EXPECT_THAT(r, HasSubstr("airlock_calls_total{extension=\"scraped\"} 3"));
  EXPECT_THAT(r, HasSubstr("airlock_call_latency_us_count{extension=\"scraped\"} 3"));
  EXPECT_THAT(r, HasSubstr("airlock_memory_bytes{extension=\"scraped\",kind=\"rss\"}"));
  // A second endpoint is refused; a port in use is an error, not a crash.
  EXPECT_FALSE(h.serve_metrics("127.0.0.1:0").ok());
  Host other(opts());
  auto taken = other.serve_metrics("127.0.0.1:" + std::to_string(*port));
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, Code::Unavailable);
  // Still served, and counting.
  ASSERT_TRUE(ext.call("echo", "y").ok());
  EXPECT_THAT(http_get_metrics(*port), HasSubstr("airlock_calls_total{extension=\"scraped\"} 4"));
}

// The compile cache's one file (tests use one skill per folder).
std::string only_entry(const std::string& dir) {
  std::string found;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (f.path().extension() == ".code") found = f.path().string();
  }
  return found;
}
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
void spill(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes; }
// The memfds a process has open (its fds that link to "/memfd:...").
size_t memfds_of(int pid) {
  size_t n = 0;
  std::error_code ec;
  for (const auto& f : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    if (std::filesystem::read_symlink(f.path(), ec).string().rfind("/memfd:", 0) == 0) n++;
  }
  return n;
}
// An empty compile-cache folder of this test process and transport.
std::string fresh_cache_dir(const std::string& tag, const HostSetup& h) {
  const std::string dir = ::testing::TempDir() + "/" + tag + "-" + std::to_string(getpid()) + "-" +
                          std::string(to_string(h.transport)) + (h.ring_bytes ? "-ring" : "") + (h.spin.count() ? "-spin" : "");
  std::filesystem::remove_all(dir);
  return dir;
}

// The code (~105 KB for greet) is lent in a sealed memfd, not carried in the LoadSkill:
// with frames capped at 64 KiB (the 32 KB module fits, module + code would not) loads
// still hit, from threads at once, and leave no buffer behind on either side.
TEST_P(HostTest, CompileCacheCodeTravelsInSharedMemoryNotInTheFrame) {
  const std::string dir = fresh_cache_dir("ccshm", GetParam());
  auto o = opts();
  o.compile_cache_dir = dir;
  o.max_frame_bytes = 64u << 10;
  Host h(o);
  auto ext = spawn(h, "lent");
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  h.wait_for_compile_cache();
  ASSERT_EQ(h.compile_cache_stats().built, 1u) << h.compile_cache_stats().last_failure;
  ASSERT_GT(std::filesystem::file_size(only_entry(dir)), uint64_t(o.max_frame_bytes));
  const int pid = ext.pid();
  const size_t memfds_before = memfds_of(pid), host_memfds_before = memfds_of(getpid());
  std::vector<std::thread> loaders;
  std::atomic<int> loaded{0};
  for (int t = 0; t < 6; ++t) {
    loaders.emplace_back([&, t] {
      if (ext.load_skill("greet_t" + std::to_string(t), skill("greet")).ok()) loaded++;
    });
  }
  for (auto& t : loaders) t.join();
  EXPECT_EQ(loaded.load(), 6);
  EXPECT_EQ(h.compile_cache_stats().hits, 6u);
  EXPECT_EQ(*ext.call("greet_t5", "Ada"), "Hello, Ada!");
  EXPECT_EQ(ext.pid(), pid);
  EXPECT_EQ(memfds_of(pid), memfds_before);  // each lent buffer was closed after its load
  EXPECT_EQ(memfds_of(getpid()), host_memfds_before);
}

// Whether any process's command line holds `marker` (a sleep of ours left running).
bool process_with_arg(const std::string& marker) {
  std::error_code ec;
  for (const auto& d : std::filesystem::directory_iterator("/proc", ec)) {
    std::string cmd = slurp(d.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(marker) != std::string::npos) return true;
  }
  return false;
}

// A producer that hangs, with its output open or closed and then lingering, is killed at
// compile_cache_build_timeout; the module is given up on (never tried again by this
// host) and loads by compiling, as before. The extension binary is a script that runs
// the real one, except for `compile`.
TEST_P(HostTest, AHangingCompileCacheProducerIsKilledAtItsTimeout) {
  int round = 0;
  for (const std::string hang : {"", "exec >&-; "}) {
    const std::string marker = fmt::format("777.0{}{}", getpid(), ++round);
    const std::string dir = fresh_cache_dir("cchang" + std::to_string(round), GetParam());
    const std::string script = dir + ".sh";
    spill(script, "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = compile ] && { " + hang + "exec /bin/sleep " + marker +
                      "; }; done\nexec " + AIRLOCK_EXTENSION_BIN + " \"$@\"\n");
    std::filesystem::permissions(script, std::filesystem::perms(0755));
    auto o = opts();
    o.extension_binary = script;
    o.compile_cache_dir = dir;
    o.compile_cache_build_timeout = std::chrono::milliseconds(300);
    Host h(o);
    auto ext = spawn(h, "hangs");
    ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
    h.wait_for_compile_cache();
    auto st = h.compile_cache_stats();
    EXPECT_EQ(st.built, 0u) << hang;
    EXPECT_EQ(st.build_failures, 1u) << hang;
    EXPECT_THAT(st.last_failure, HasSubstr("over 300 ms (killed)")) << hang;
    EXPECT_FALSE(process_with_arg(marker)) << hang;  // killed and reaped
    EXPECT_EQ(*ext.call("greet", "Ada"), "Hello, Ada!");
    // Given up on: the next load of that module compiles and builds nothing.
    ASSERT_TRUE(ext.load_skill("greet2", skill("greet")).ok());
    h.wait_for_compile_cache();
    EXPECT_EQ(h.compile_cache_stats().build_failures, 1u) << hang;
    EXPECT_EQ(h.compile_cache_stats().misses, 2u) << hang;
    EXPECT_EQ(*ext.call("greet2", "Bo"), "Hello, Bo!");
    std::filesystem::remove(script);
  }
}

TEST_P(HostTest, CompileCacheBuildsEntriesThatLaterLoadsUseAndRebuildsBadOnes) {
  const std::string dir = fresh_cache_dir("cc", GetParam());
  auto o = opts();
  o.compile_cache_dir = dir;
  Host h(o);
  auto ext = spawn(h, "cached");
  // First load: nothing cached; the entry is built in the background.
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  h.wait_for_compile_cache();
  auto st = h.compile_cache_stats();
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.built, 1u) << st.last_failure;
  const std::string entry = only_entry(dir);
  ASSERT_FALSE(entry.empty());
  // Loads from now on take the code from it, and the skill works the same.
  ASSERT_TRUE(ext.load_skill("greet2", skill("greet")).ok());
  EXPECT_EQ(h.compile_cache_stats().hits, 1u);
  EXPECT_EQ(*ext.call("greet2", "Ada,300,1"), "Hello, Ada!");

  // A flipped byte in the code: caught by the checksum, deleted, never sent, rebuilt.
  std::string good = slurp(entry);
  std::string bad = good;
  bad[bad.size() / 2] ^= 0x5a;
  spill(entry, bad);
  ASSERT_TRUE(ext.load_skill("greet3", skill("greet")).ok());
  EXPECT_EQ(h.compile_cache_stats().corrupt, 1u);
  EXPECT_EQ(*ext.call("greet3", "Bo"), "Hello, Bo!");
  h.wait_for_compile_cache();
  EXPECT_EQ(h.compile_cache_stats().built, 2u);
  // Truncated, and garbage: the same.
  spill(entry, good.substr(0, good.size() - 100));
  ASSERT_TRUE(ext.load_skill("greet4", skill("greet")).ok());
  h.wait_for_compile_cache();
  spill(entry, "not an entry");
  ASSERT_TRUE(ext.load_skill("greet5", skill("greet")).ok());
  h.wait_for_compile_cache();
  st = h.compile_cache_stats();
  EXPECT_EQ(st.corrupt, 3u);
  EXPECT_EQ(st.built, 4u);

  // Code V8 will not take (its own header says another V8 or other flags), filed with
  // an intact header and checksum: V8 refuses it, the load compiles instead, and the
  // entry is rebuilt. (File: 15-byte magic, 64-byte key, 8-byte length, SHA-256, code.)
  {
    std::string foreign = slurp(entry);
    ASSERT_GT(foreign.size(), 200u);
    foreign[119] ^= 0x01;  // the first byte of V8's own header (its magic number)
    unsigned char md[32];
    EVP_Digest(foreign.data() + 119, foreign.size() - 119, md, nullptr, EVP_sha256(), nullptr);
    foreign.replace(87, 32, reinterpret_cast<const char*>(md), 32);
    spill(entry, foreign);
  }
  ASSERT_TRUE(ext.load_skill("greet6", skill("greet")).ok());
  EXPECT_EQ(h.compile_cache_stats().rejected, 1u);
  EXPECT_EQ(*ext.call("greet6", "Cy"), "Hello, Cy!");
  h.wait_for_compile_cache();
  EXPECT_EQ(h.compile_cache_stats().built, 5u);
  ASSERT_TRUE(ext.load_skill("greet7", skill("greet")).ok());
  EXPECT_EQ(h.compile_cache_stats().hits, 2u);
  EXPECT_EQ(*ext.call("greet7", "Di"), "Hello, Di!");
}

uint64_t vm_size_kb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7));
  }
  return 0;
}

TEST_P(HostTest, EngineOptionsReachEachExtension) {
  // Guard regions reserve ~10 GiB of address space per live instance; without them the
  // same skills run with bounds checks and no reservation. Lazy compilation and no
  // tier-up change how code is compiled, not what it does.
  Host h(opts());
  ExtensionOptions plain, lean;
  lean.engine = EngineOptions{.lazy_compilation = true, .tier_up = false, .guard_regions = GuardRegions::Off};
  auto a = spawn(h, "guarded", plain);
  auto b = spawn(h, "lean", lean);
  for (auto* e : {&a, &b}) {
    for (auto n : {"echo", "sum", "greet", "trap"}) ASSERT_TRUE(e->load_skill(n, skill(n)).ok()) << n;
    EXPECT_EQ(*e->call("echo", "x"), "x");
    EXPECT_EQ(le64(*e->call("sum", std::string(1000, '\x02'))), 2000u);
    EXPECT_EQ(*e->call("greet", "Ada,512,5"), "Hello, Ada!");
    auto t = e->call("trap", "oob");
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.error().trap, TrapKind::MemoryOutOfBounds) << e->name();
  }
  const uint64_t guarded = vm_size_kb(a.pid()), lean_kb = vm_size_kb(b.pid());
  EXPECT_GE(guarded, 10ull << 20) << "4 skills' instances with guard regions: 10 GiB each";
  EXPECT_LT(lean_kb + (20ull << 20), guarded) << "without them: no 10 GiB reservations";
}

TEST_P(HostTest, StatsCountEveryOutcomeAndMetricsTextListsThem) {
  Host h(opts());
  auto ext = spawn(h, "counted");
  auto other = spawn(h, "idle");
  for (auto n : {"echo", "trap", "sleeper"}) ASSERT_TRUE(ext.load_skill(n, skill(n)).ok()) << n;
  EXPECT_EQ(ext.stats().calls, 0u);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ext.call("echo", "x").ok());
  EXPECT_EQ(ext.call("trap", "div0").error().code, Code::Trap);
  EXPECT_EQ(ext.call("nope", "x").error().code, Code::NotFound);
  std::promise<CallResult> p;
  auto id = ext.call_async("sleeper", "5000", {}, [&](CallResult r) { p.set_value(std::move(r)); });
  // Sent and not ended: in flight, not yet counted.
  ASSERT_TRUE(wait_until([&] { return ext.stats().in_flight == 1; }, 5s));
  EXPECT_EQ(ext.stats().calls, 7u);
  ext.cancel(id);
  EXPECT_EQ(p.get_future().get().error().code, Code::Cancelled);
  ASSERT_TRUE(wait_until([&] { return ext.stats().in_flight == 0; }, 5s));

  auto st = ext.stats();
  EXPECT_EQ(st.name, "counted");
  EXPECT_EQ(st.pid, ext.pid());
  EXPECT_TRUE(st.alive);
  EXPECT_EQ(st.calls, 8u);
  EXPECT_EQ(st.ok, 5u);
  EXPECT_EQ(st.errors, (std::map<std::string, uint64_t>{{"Cancelled", 1}, {"NotFound", 1}, {"Trap", 1}}));
  EXPECT_EQ(st.restarts, 0u);
  EXPECT_EQ(st.skills, (std::vector<std::string>{"echo", "sleeper", "trap"}));
  EXPECT_GT(st.latency_p50_us, 0);
  EXPECT_GE(st.latency_p99_us, st.latency_p50_us);
  EXPECT_THAT(st.sandbox, HasSubstr("applied:"));
  // Its memory, read from /proc: a V8 process holds megabytes; PSS and USS are parts of RSS.
  EXPECT_GT(st.rss_bytes, 1u << 20);
  EXPECT_GT(st.pss_bytes, 0u);
  EXPECT_GT(st.uss_bytes, 0u);
  EXPECT_LE(st.pss_bytes, st.rss_bytes);
  EXPECT_LE(st.uss_bytes, st.pss_bytes);
  EXPECT_EQ(other.stats().calls, 0u);

  const auto names = [&] {
    std::vector<std::string> v;
    for (const auto& e : h.extensions()) v.push_back(e.name());
    return v;
  }();
  EXPECT_EQ(names, (std::vector<std::string>{"counted", "idle"}));
  const auto m = h.metrics_text();
  EXPECT_THAT(m, HasSubstr("# TYPE airlock_calls_total counter\n"));
  EXPECT_THAT(m, HasSubstr("airlock_calls_total{extension=\"counted\"} 8\n"));
  EXPECT_THAT(m, HasSubstr("airlock_calls_total{extension=\"idle\"} 0\n"));
  EXPECT_THAT(m, HasSubstr("airlock_call_errors_total{extension=\"counted\",code=\"Trap\"} 1\n"));
  EXPECT_THAT(m, HasSubstr("airlock_calls_in_flight{extension=\"counted\"} 0\n"));
  EXPECT_THAT(m, HasSubstr("airlock_skills_loaded{extension=\"counted\"} 3\n"));
  EXPECT_THAT(m, HasSubstr("airlock_call_latency_us_count{extension=\"counted\"} 8\n"));
  EXPECT_THAT(m, HasSubstr("airlock_memory_bytes{extension=\"counted\",kind=\"pss\"} "));
}

std::shared_ptr<const std::vector<uint8_t>> module_bytes(const std::string& name) {
  std::ifstream f(skill(name), std::ios::binary);
  return std::make_shared<const std::vector<uint8_t>>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

TEST_P(HostTest, SkillSetPlacesEvenlyLoadsOnFirstCallAndEvictsTheLeastRecentlyCalled) {
  Host h(opts());
  std::vector<Extension> exts{spawn(h, "a"), spawn(h, "b"), spawn(h, "c")};
  auto echo = module_bytes("echo");
  ASSERT_FALSE(echo->empty());
  SkillSet set({.extensions = exts, .cache_bytes = 2 * echo->size()});
  for (int i = 1; i <= 6; ++i) ASSERT_TRUE(set.add("e" + std::to_string(i), echo).ok());
  std::map<int, int> per_ext;
  for (const auto& n : set.skills()) per_ext[set.placement(n)->pid()]++;
  EXPECT_EQ(per_ext.size(), 3u);
  for (auto [pid, n] : per_ext) EXPECT_EQ(n, 2) << "pid " << pid;
  // Placed, not loaded.
  EXPECT_TRUE(set.cached().empty());
  for (auto& e : exts) EXPECT_TRUE(e.skills().empty()) << e.name();

  EXPECT_EQ(*set.call("e1", "one"), "one");
  EXPECT_EQ(*set.call("e2", "two"), "two");
  EXPECT_EQ(set.cached(), (std::vector<std::string>{"e2", "e1"}));
  EXPECT_EQ(set.placement("e1")->skills(), std::vector<std::string>{"e1"});
  EXPECT_EQ(*set.call("e3", "three"), "three");
  // e1 was the least recently called: unloaded from its extension, still known.
  EXPECT_EQ(set.cached(), (std::vector<std::string>{"e3", "e2"}));
  EXPECT_EQ(set.cached_bytes(), 2 * echo->size());
  EXPECT_TRUE(set.placement("e1")->skills().empty());
  EXPECT_EQ(*set.call("e1", "again"), "again");
  EXPECT_EQ(set.cached(), (std::vector<std::string>{"e1", "e3"}));

  ASSERT_TRUE(set.drop("e1").ok());
  EXPECT_TRUE(set.placement("e1")->skills().empty());
  EXPECT_EQ(set.cached(), std::vector<std::string>{"e3"});
  EXPECT_EQ(*set.call("e1", "back"), "back");
  ASSERT_TRUE(set.remove("e1").ok());
  auto gone = set.call("e1", "x");
  EXPECT_EQ(gone.error().code, Code::NotFound);
  EXPECT_THAT(gone.error().message, HasSubstr("'e1'"));
  EXPECT_EQ(set.skills(), (std::vector<std::string>{"e2", "e3", "e4", "e5", "e6"}));
  EXPECT_FALSE(set.placement("e1"));
}

TEST_P(HostTest, SkillSetNeverEvictsASkillWithACallInFlight) {
  Host h(opts());
  HoldService hold(h);
  auto ext = spawn(h, "one");
  auto echo = module_bytes("echo");
  auto caller = module_bytes("caller");
  SkillSet set({.extensions = {ext}, .cache_bytes = std::max(echo->size(), caller->size())});
  ASSERT_TRUE(set.add("held", caller).ok());
  ASSERT_TRUE(set.add("e1", echo).ok());
  ASSERT_TRUE(set.add("e2", echo).ok());
  auto held = set.call_async("held", "hold|x");
  ASSERT_TRUE(hold.wait_for(1, 10s));  // the call is inside the extension
  EXPECT_EQ(*set.call("e1", "1"), "1");
  EXPECT_EQ(set.cached(), (std::vector<std::string>{"e1", "held"}));  // over the budget while busy
  EXPECT_EQ(*set.call("e2", "2"), "2");
  EXPECT_EQ(set.cached(), (std::vector<std::string>{"e2", "held"}));
  EXPECT_EQ(ext.skills(), (std::vector<std::string>{"e2", "held"}));
}

TEST_P(HostTest, SkillSetErrorsNameTheSkillAndConcurrentFirstCallsAllSucceed) {
  Host h(opts());
  auto ext = spawn(h, "one");
  SkillSet none({});
  EXPECT_EQ(none.add("x", module_bytes("echo")).error().code, Code::InvalidArgument);
  SkillSet set({.extensions = {ext}});
  auto junk = std::make_shared<const std::vector<uint8_t>>(std::vector<uint8_t>{'n', 'o', 't', ' ', 'w', 'a', 's', 'm'});
  ASSERT_TRUE(set.add("junk", junk).ok());
  EXPECT_EQ(set.add("junk", junk).error().code, Code::InvalidArgument);
  EXPECT_EQ(set.add_file("nofile", "/nonexistent/x.wasm").error().code, Code::NotFound);
  auto bad = set.call("junk", "x");
  EXPECT_EQ(bad.error().code, Code::InvalidArgument);
  EXPECT_THAT(bad.error().message, HasSubstr("skill 'junk'"));
  EXPECT_TRUE(set.cached().empty());
  EXPECT_EQ(set.cached_bytes(), 0u);
  EXPECT_EQ(set.call("nope", "x").error().code, Code::NotFound);

  ASSERT_TRUE(set.add_file("echo", skill("echo")).ok());
  std::vector<std::future<CallResult>> fs;
  std::vector<std::thread> ts;
  std::mutex mu;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        auto f = set.call_async("echo", std::to_string(t * 100 + i));
        std::lock_guard lk(mu);
        fs.push_back(std::move(f));
      }
    });
  }
  for (auto& t : ts) t.join();
  int ok = 0;
  for (auto& f : fs) ok += f.get().ok();
  EXPECT_EQ(ok, 80);
  EXPECT_EQ(set.cached(), std::vector<std::string>{"echo"});
  EXPECT_EQ(ext.stats().calls, 80u);
}

TEST_P(HostTest, UnknownSkillIsNotFoundAndBadSkillFileIsAnError) {
  Host h(opts());
  auto ext = spawn(h, "e");
  EXPECT_EQ(ext.call("nope", "x").error().code, Code::NotFound);
  auto st = ext.load_skill("missing", "/nonexistent/x.wasm");
  EXPECT_EQ(st.error().code, Code::NotFound);
  std::string junk = "not wasm";
  auto st2 = ext.load_skill_bytes("junk", std::span(reinterpret_cast<const uint8_t*>(junk.data()), junk.size()));
  ASSERT_FALSE(st2.ok());
  EXPECT_EQ(st2.error().code, Code::InvalidArgument);
  EXPECT_THAT(st2.error().message, HasSubstr("skill 'junk'"));
  EXPECT_EQ(ext.skills(), std::vector<std::string>{});
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  ASSERT_TRUE(ext.unload_skill("echo").ok());
  EXPECT_EQ(ext.call("echo", "x").error().code, Code::NotFound);
}

TEST_P(HostTest, TimeoutAndTheExtensionKeepsServing) {
  Host h(opts());
  auto ext = spawn(h, "e");
  ASSERT_TRUE(ext.load_skill("spin", skill("spin"), SkillLimits{64, 200}).ok());
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  auto t0 = std::chrono::steady_clock::now();
  auto r = ext.call("spin", "");
  EXPECT_EQ(r.error().code, Code::Timeout) << r.error().to_string();
  // Generous: the 200 ms skill limit stopped it, not the extension's 10 s default limit
  // or the host's 30 s call timeout (the exact margin is the benchmarks' business).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  CallOptions co;
  co.timeout = 100ms;
  EXPECT_EQ(ext.call("spin", "", co).error().code, Code::Timeout);
  EXPECT_EQ(*ext.call("echo", "alive"), "alive");
}

TEST_P(HostTest, CancelAWaitingCall) {
  Host h(opts());
  auto ext = spawn(h, "e");
  ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper")).ok());
  std::promise<CallResult> p;
  auto id = ext.call_async("sleeper", "5000", {}, [&](CallResult r) { p.set_value(std::move(r)); });
  // No pause needed: the call and the cancel are posted to the I/O thread's queue in
  // this order (the Cancel frame follows the Request on the channel), and the host
  // completes a cancelled call at once, without waiting for the extension.
  auto t0 = std::chrono::steady_clock::now();
  ext.cancel(id);
  auto r = p.get_future().get();
  EXPECT_EQ(r.error().code, Code::Cancelled);
  // Generous: well below the 5000 ms the sleeper would take to answer.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2500ms);
}

// A restarted extension reloads its skills from the compile cache (the entries read off
// the loop thread); a damaged entry is not sent then either, and the skill compiles.
TEST_P(HostTest, ARestartReloadsItsSkillsFromTheCompileCache) {
  const std::string dir = fresh_cache_dir("ccr", GetParam());
  auto o = opts();
  o.compile_cache_dir = dir;
  Host h(o);
  ExtensionOptions eo;
  eo.restart.mode = RestartPolicy::Mode::OnFailure;
  eo.restart.initial_backoff = 10ms;
  auto ext = spawn(h, "phoenix", eo);
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  h.wait_for_compile_cache();
  ASSERT_EQ(h.compile_cache_stats().built, 1u) << h.compile_cache_stats().last_failure;
  const auto hits0 = h.compile_cache_stats().hits;
  auto restart = [&] {
    const int pid = ext.pid();
    ASSERT_GT(pid, 0);
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ASSERT_TRUE(wait_until([&] { return ext.alive() && ext.pid() != pid && ext.pid() != 0; }, 20s)) << "no restart";
  };
  restart();
  EXPECT_EQ(h.compile_cache_stats().hits, hits0 + 1) << "the reload took its code from the cache";
  EXPECT_EQ(*ext.call("greet", "Ada"), "Hello, Ada!");
  // Damaged while it runs: the next reload finds the checksum wrong, deletes the entry
  // and sends only the module.
  const std::string entry = only_entry(dir);
  ASSERT_FALSE(entry.empty());
  std::string bytes = slurp(entry);
  bytes[bytes.size() / 2] ^= 0x5a;
  spill(entry, bytes);
  restart();
  EXPECT_EQ(h.compile_cache_stats().corrupt, 1u);
  EXPECT_EQ(h.compile_cache_stats().hits, hits0 + 1);
  EXPECT_EQ(*ext.call("greet", "Bo"), "Hello, Bo!");
  std::filesystem::remove_all(dir);
}

TEST_P(HostTest, KillNineFailsInFlightCallsAndRestartRecovers) {
  Host h(opts());
  ExtensionOptions eo;
  eo.restart.mode = RestartPolicy::Mode::OnFailure;
  eo.restart.initial_backoff = 10ms;
  HoldService hold(h);
  auto ext = spawn(h, "victim", eo);
  ASSERT_TRUE(ext.load_skill("caller", skill("caller")).ok());
  ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper")).ok());
  int old_pid = ext.pid();
  std::vector<std::future<CallResult>> fs;
  for (int i = 0; i < 100; ++i) fs.push_back(ext.call_async("caller", "hold|" + std::to_string(i)));
  // All 100 are in flight in the extension, each suspended in its host-service call.
  ASSERT_TRUE(hold.wait_for(100, 10s)) << hold.count() << " of 100 calls reached the extension";
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(old_pid, SIGKILL), 0);
  // Generous: without the crash they would wait for the host's 30 s call timeout.
  const auto fail_by = t0 + 10s;
  for (auto& f : fs) {
    ASSERT_EQ(f.wait_until(fail_by), std::future_status::ready);
    auto r = f.get();
    ASSERT_EQ(r.error().code, Code::ExtensionCrashed) << r.error().to_string();
    EXPECT_THAT(r.error().message, HasSubstr("signal 9"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  // The restart reloads the skill; new calls succeed on the new process.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!ext.alive() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(ext.alive());
  EXPECT_NE(ext.pid(), old_pid);
  EXPECT_EQ(*ext.call("sleeper", "10"), "slept 10");
  auto st = ext.stats();
  EXPECT_EQ(st.restarts, 1u);
  EXPECT_EQ(st.errors["ExtensionCrashed"], 100u);
}

TEST_P(HostTest, WithoutRestartACrashedExtensionSaysSo) {
  Host h(opts());
  auto ext = spawn(h, "once");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  kill(ext.pid(), SIGKILL);
  // The host has seen the process exit (and recorded why) once it reports it down.
  ASSERT_TRUE(wait_until([&] { return !ext.alive() && ext.pid() == 0; }, 5s)) << "the exit was never noticed";
  auto r = ext.call("echo", "x");
  EXPECT_EQ(r.error().code, Code::ExtensionCrashed);
  EXPECT_THAT(r.error().message, HasSubstr("once"));
}

TEST_P(HostTest, ExtensionAndSkillLogLinesReachTheHostLogTagged) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  spdlog::default_logger()->sinks().push_back(sink);
  auto o = opts();
  o.log_level = "info";
  {
    Host h(o);
    auto ext = spawn(h, "chatty");
    ASSERT_TRUE(ext.load_skill("printer", skill("printer")).ok());
    ASSERT_EQ(*ext.call("printer", "xyz"), "printed");
    auto found = [&] {
      for (auto& l : sink->last_formatted()) {
        if (l.find("[ext chatty] [skill printer] hello from printer: xyz") != std::string::npos) return true;
      }
      return false;
    };
    auto end = std::chrono::steady_clock::now() + 2s;
    while (!found() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(found());
  }
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
}

TEST_P(HostTest, ThousandConcurrentWaitsOverlap) {
  Host h(opts());
  auto ext = spawn(h, "waits");
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  std::atomic<int> ok{0};
  std::promise<void> all;
  std::atomic<int> left{1000};
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) {
    ext.call_async("greet", "W,0,100", {}, [&](CallResult r) {
      if (r.ok() && *r == "Hello, W!") ok++;
      if (--left == 0) all.set_value();
    });
  }
  ASSERT_EQ(all.get_future().wait_for(60s), std::future_status::ready);
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ok.load(), 1000);
  // Generous: one after another the 1000 waits of 100 ms would take 100 s; a tenth of
  // that still proves they overlap (how fast they are is measured by a benchmark).
  EXPECT_LT(ms, 10'000.0);
}

TEST_P(HostTest, CallsFromEightThreads) {
  Host h(opts());
  auto ext = spawn(h, "mt");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  std::atomic<int> ok{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        std::string in = std::to_string(t) + ":" + std::to_string(i);
        auto r = ext.call("echo", in);
        if (r.ok() && *r == in) ok++;
      }
    });
  }
  for (auto& th : ts) th.join();
  EXPECT_EQ(ok.load(), 800);
}

// A caller blocked in Extension::call may read the socket itself (calls.cc, lead): the
// frames it does not take (a skill's log lines) go to the I/O thread, and so does
// everything after them, so a call's log lines are handled before its answer: by the
// time call() returns, they have reached the log callback.
TEST_P(HostTest, ASkillsLogLinesAreHandledBeforeItsAnswer) {
  auto o = opts();
  o.log_level = "info";
  std::mutex mu;
  std::vector<std::string> lines;
  o.log_callback = [&](const LogRecord& r) {
    std::lock_guard lk(mu);
    lines.emplace_back(r.message);
  };
  Host h(o);
  auto ext = spawn(h, "chatty");
  ASSERT_TRUE(ext.load_skill("printer", skill("printer")).ok());
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  for (int i = 0; i < 40; ++i) {
    const std::string in = "line " + std::to_string(i);
    ASSERT_EQ(*ext.call("printer", in), "printed");
    {
      std::lock_guard lk(mu);
      EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l == "hello from printer: " + in; }))
          << "call " << i << " returned before its log line was handled";
    }
    ASSERT_EQ(*ext.call("echo", in), in);  // between them, calls that send only their answer
  }
}

// The caller reading its own answer is woken by the end of the connection: a crash
// mid-call fails the call with the crash at once, not at its 10-minute deadline (were
// it not woken, this test would hang until ctest's timeout).
TEST_P(HostTest, AWaitingCallerHearsOfACrashAtOnce) {
  Host h(opts());
  auto ext = spawn(h, "doomed");
  ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper"), SkillLimits{64, 600'000}).ok());
  CallOptions co;
  co.timeout = std::chrono::minutes(10);
  auto waiting = std::async(std::launch::async, [&] { return ext.call("sleeper", "600000", co); });
  ASSERT_TRUE(wait_until([&] { return ext.stats().in_flight == 1; }, 10s));
  const int pid = ext.pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waiting.wait_for(60s), std::future_status::ready) << "the waiting caller was never told";
  auto r = waiting.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::ExtensionCrashed) << r.error().to_string();
}

// Callers on many threads wait at once; one of them reads the socket and completes the
// others' answers on its thread. Each gets its own answer, and the statistics count
// every call once, with none left in flight.
TEST_P(HostTest, ManyWaitingThreadsEachGetTheirOwnAnswer) {
  Host h(opts());
  auto ext = spawn(h, "crowd");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  std::atomic<int> ok{0}, wrong{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 150; ++i) {
        // Mixed lengths of wait: answers come back in another order than sent.
        const bool slow = (i + t) % 5 == 0;
        // (fmt, not "T" + std::to_string(..): g++ 12 warns -Wrestrict falsely on that.)
        const std::string in = slow ? fmt::format("T{}x{},0,{}", t, i, i % 7) : fmt::format("{}:{}", t, i);
        auto r = ext.call(slow ? "greet" : "echo", in);
        const std::string want = slow ? fmt::format("Hello, T{}x{}!", t, i) : in;
        (r.ok() && *r == want ? ok : wrong)++;
      }
    });
  }
  for (auto& th : ts) th.join();
  EXPECT_EQ(ok.load(), 900);
  EXPECT_EQ(wrong.load(), 0);
  auto st = ext.stats();
  EXPECT_EQ(st.in_flight, 0u);
  EXPECT_EQ(st.calls, 900u);
}

TEST_P(HostTest, OversizedRequestIsRefusedBeforeSending) {
  auto o = opts();
  o.max_frame_bytes = 1 << 20;
  o.auto_share_min_bytes = 0;  // inline only
  Host h(o);
  auto ext = spawn(h, "small");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  auto r = ext.call("echo", std::string(2 << 20, 'x'));
  EXPECT_EQ(r.error().code, Code::ResourceExhausted) << r.error().to_string();
  EXPECT_EQ(*ext.call("echo", "fine"), "fine");
}

// Large inline inputs one after another, each more than half of max_queued_bytes: once
// an answer is in, nothing of the request waits any more, whoever read the answer. The
// loop refreshes its figure of what waits on every frame it handles; a frame of another
// call arriving while a large request was still being written (here: a short wait's
// answer) left it high, the large call's answer went to its caller (a leader) without
// passing the loop, and the next large call was refused for bytes read long ago
// (rpc_bench large_bytes_50mb_inline, once in 102 iterations).
TEST_P(HostTest, SequentialLargeInlineCallsAreNotRefusedForBytesAlreadyRead) {
  auto o = opts();
  o.auto_share_min_bytes = 0;  // inline only
  o.limits.max_queued_bytes = 64u << 20;
  o.default_limits.max_memory_mb = 128;
  Host h(o);
  auto ext = spawn(h, "inline");
  ASSERT_TRUE(ext.load_skill("sum", skill("sum")).ok());
  ASSERT_TRUE(ext.load_skill("greet", skill("greet")).ok());
  const std::string in(40u << 20, '\x01');
  for (int i = 0; i < 10; ++i) {
    auto other = ext.call_async("greet", "Ada,0,2");  // answers while the next request is written
    auto r = ext.call("sum", in);
    ASSERT_TRUE(r.ok()) << "call " << i << ": " << r.error().to_string();
    ASSERT_EQ(r->size(), 8u);
    uint64_t sum = 0;
    std::memcpy(&sum, r->data(), 8);
    EXPECT_EQ(sum, in.size());
    EXPECT_EQ(*other.get(), "Hello, Ada!");
  }
}

TEST_P(HostTest, LargeInlineInputsGoThroughSharedMemoryPastTheFrameLimit) {
  auto o = opts();
  o.max_frame_bytes = 1 << 20;  // default auto_share_min_bytes (1 MiB) moves the input to shm
  Host h(o);
  auto ext = spawn(h, "big");
  ASSERT_TRUE(ext.load_skill("echo", skill("echo")).ok());
  std::string in(3 << 20, 'y');
  in[12345] = 'z';
  auto r = ext.call("echo", in);  // the 3 MiB output comes back in shared memory too
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, in);
}

TEST_P(HostTest, DestroyingAHostWithCallsInFlightIsPromptAndLeavesNoProcess) {
  int pid = 0;
  std::vector<std::future<CallResult>> fs;
  auto t0 = std::chrono::steady_clock::now();
  {
    Host h(opts());
    HoldService hold(h);
    auto ext = spawn(h, "doomed");
    ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper")).ok());
    ASSERT_TRUE(ext.load_skill("spin", skill("spin")).ok());
    ASSERT_TRUE(ext.load_skill("caller", skill("caller")).ok());
    pid = ext.pid();
    for (int i = 0; i < 20; ++i) fs.push_back(ext.call_async("sleeper", "10000"));
    fs.push_back(ext.call_async("caller", "hold|x"));
    // The extension takes requests in order on one loop: once the caller's host-service
    // request has arrived, the 20 sleepers sent before it are suspended in their waits.
    ASSERT_TRUE(hold.wait_for(1, 10s)) << "the calls never reached the extension";
    const long cpu0 = cpu_ms(pid);
    ASSERT_GE(cpu0, 0) << "cannot read the CPU time of " << pid;
    fs.push_back(ext.call_async("spin", ""));
    // Its other calls only wait: the extension burns CPU once the spin is running.
    ASSERT_TRUE(wait_until([&] { return cpu_ms(pid) >= cpu0 + 100; }, 10s)) << "the spin never ran";
    t0 = std::chrono::steady_clock::now();
  }
  // Generous: the calls would take 10 s (the sleepers, and the spin until its default
  // limit), the host-service call 30 s (the default call timeout).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_TRUE(process_gone(pid));
  for (auto& f : fs) {
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    EXPECT_FALSE(f.get().ok());
  }
}

TEST_P(HostTest, GracefulStopLetsInFlightCallsFinish) {
  Host h(opts());
  auto ext = spawn(h, "graceful");
  ASSERT_TRUE(ext.load_skill("sleeper", skill("sleeper")).ok());
  auto f = ext.call_async("sleeper", "100");
  // No pause needed: the call and stop()'s Shutdown are posted to the I/O thread in this
  // order and travel in order on the one channel, so the extension has the call in
  // flight when the Shutdown reaches it.
  int pid = ext.pid();
  ext.stop(2s);
  auto r = f.get();
  EXPECT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(process_gone(pid));
  EXPECT_EQ(ext.call("sleeper", "1").error().code, Code::Unavailable);
}

TEST_P(HostTest, ExtensionDiesWithItsHost) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  if (child == 0) {
    Host h(opts());
    ExtensionOptions eo;
    eo.name = "orphan";
    auto ext = h.spawn(eo);
    int pid = ext.ok() ? ext->pid() : -1;
    (void)!write(fds[1], &pid, sizeof pid);
    pause();
    _exit(0);
  }
  int ext_pid = 0;
  ASSERT_EQ(read(fds[0], &ext_pid, sizeof ext_pid), static_cast<ssize_t>(sizeof ext_pid));
  ASSERT_GT(ext_pid, 0);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(wait_gone(ext_pid, 2s));
  close(fds[0]);
  close(fds[1]);
}

INSTANTIATE_TEST_SUITE_P(Transports, HostTest,
                         ::testing::Values(HostSetup{Transport::Msgpack}, HostSetup{Transport::Grpc},
                                           HostSetup{Transport::Msgpack, 64 * 1024},
                                           HostSetup{Transport::Msgpack, 64 * 1024, std::chrono::microseconds(50)}),
                         [](const auto& i) {
                           return std::string(to_string(i.param.transport)) + (i.param.ring_bytes ? "_ring" : "") +
                                  (i.param.spin.count() ? "_spinning" : "");
                         });

// ---- spawn failures and misbehaving peers (msgpack: the fake peer speaks only that) ----

class SpawnTest : public ::testing::Test {
 protected:
  HostOptions fake(const char* mode) {
    setenv("AIRLOCK_FAKE", mode, 1);
    HostOptions o;
    o.extension_binary = AIRLOCK_FAKE_EXTENSION_BIN;
    o.log_level = "off";
    return o;
  }
  ExtensionOptions eo(const char* mode) {
    ExtensionOptions e;
    e.name = "fake";
    e.env = {std::string("AIRLOCK_FAKE=") + mode};
    e.start_timeout = 1s;
    return e;
  }
};

TEST_F(SpawnTest, MissingBinaryIsNotFound) {
  HostOptions o;
  o.extension_binary = "/nonexistent/airlock-extension";
  Host h(o);
  ExtensionOptions eo;
  eo.name = "x";
  auto r = h.spawn(eo);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::NotFound);
  EXPECT_THAT(r.error().message, HasSubstr("/nonexistent/airlock-extension"));
}

TEST_F(SpawnTest, CrashDuringStartIsReported) {
  Host h(fake("crash"));
  auto r = h.spawn(eo("crash"));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message, HasSubstr("exited with status 7"));
}

TEST_F(SpawnTest, HandshakeTimeoutIsReported) {
  Host h(fake("silent"));
  auto t0 = std::chrono::steady_clock::now();
  auto r = h.spawn(eo("silent"));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message, HasSubstr("did not report ready"));
  // Generous: the 1 s start_timeout ended it, not the 10 s default.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST_F(SpawnTest, MalformedFrameDisconnectsThePeerWithAClearError) {
  for (const char* mode : {"garbage", "oversized"}) {
    Host h(fake(mode));
    auto ext = h.spawn(eo(mode));
    ASSERT_TRUE(ext.ok()) << ext.error().to_string();
    int pid = ext->pid();
    EXPECT_TRUE(wait_gone(pid, 2s)) << mode << ": the peer was not disconnected";
    auto r = ext->call("echo", "x");
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.error().message, HasSubstr(std::string(mode) == "garbage" ? "malformed" : "exceeds")) << r.error().to_string();
  }
}

}  // namespace

namespace {
TEST(ResultValue, OnAnErrorThrowsTheErrorItself) {
  HostOptions o;
  o.extension_binary = "/nonexistent/airlock-extension";
  Host h(o);
  ExtensionOptions eo;
  eo.name = "nowhere";
  try {
    (void)h.spawn(eo).value();
    FAIL() << "value() of a failed spawn returned";
  } catch (const BadResultAccess& e) {
    EXPECT_EQ(e.error().code, Code::NotFound);
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/airlock-extension"));
  }
}
}  // namespace

namespace {
TEST(HostOptionsCheck, AnInvalidLogLevelIsASpawnErrorNamingIt) {
  HostOptions o;
  o.extension_binary = AIRLOCK_EXTENSION_BIN;
  o.log_level = "loud";
  Host h(o);
  ExtensionOptions eo;
  eo.name = "x";
  auto r = h.spawn(eo);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::InvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("log_level 'loud'"));
}

// A ring size the ring cannot have fails the spawn saying so, and a good one after it on
// another host works (nothing of the failed attempt is left behind to trip it).
TEST(HostOptionsCheck, AnInvalidRingSizeIsASpawnErrorNamingIt) {
  for (const uint32_t bad : {5000u, 1024u, 128u << 20}) {
    SCOPED_TRACE(bad);
    HostOptions o;
    o.extension_binary = AIRLOCK_EXTENSION_BIN;
    o.log_level = "warn";
    o.ring_bytes = bad;
    Host h(o);
    ExtensionOptions eo;
    eo.name = "x";
    auto r = h.spawn(eo);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Code::InvalidArgument) << r.error().to_string();
    EXPECT_THAT(r.error().message, HasSubstr("shared-memory ring: ring capacity must be a power of two"));
  }
  HostOptions o;
  o.extension_binary = AIRLOCK_EXTENSION_BIN;
  o.log_level = "warn";
  o.ring_bytes = 4096;
  Host h(o);
  ExtensionOptions eo;
  eo.name = "x";
  auto ext = h.spawn(eo);
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  ASSERT_TRUE(ext->load_skill("echo", skill("echo")).ok());
  EXPECT_EQ(*ext->call("echo", std::string(20000, 'r')), std::string(20000, 'r'));  // 5 times the ring
}
}  // namespace
