// runtime_bench: cold start and compute, measured the way runtime papers do (Faasm's
// evaluation, issue 16).
//
// Cold start of a no-op, end to end (start + load + first call answered), and a warm
// call, for N workers (--workers 1,10,100), four ways side by side in one run:
//   native      posix_spawn (vfork + exec) of runtime_noop, a tiny C program; its call is
//               one byte through a pipe and back: the container-less floor
//   in-process  a new runtime::SkillRuntime (a V8 isolate) in this process, load noop,
//               call it (as rpc_bench's local_* baselines run skills)
//   exec        Host::spawn with HostOptions::use_zygote = false, load_skill, call
//   zygote      the same with use_zygote = true (the zygote started before measuring)
// Per start: wall time (median, p99), CPU time of the process tree (this host + zygote +
// the new workers), CPU cycles (perf_event_open, where the kernel has a PMU), PSS and
// RSS growth of the tree, disk I/O (/proc/PID/io). Then a compute suite: PolyBench-style
// kernels (benchmarks/kernels/), each one C source built natively (-O2) and as a skill,
// same checksum required, wasm/native time ratio per kernel.
// Targets (--check): zygote cold start median <= 20 ms; each kernel's wasm/native <= 3.
#include <CLI/CLI.hpp>
#include <linux/perf_event.h>
#include <nlohmann/json.hpp>
#include <spawn.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <uv.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "airlock/host.h"
#include "bench_util.h"
#include "kernels/polybench.h"
#include "runtime/skill_runtime.h"

extern char** environ;

using namespace airlock;
using namespace airlock::bench;
using std::chrono::milliseconds;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Config {
  std::vector<int> workers{1, 10, 100};
  std::vector<std::string> modes{"native", "in-process", "exec", "zygote"};
  int samples = 50;      // cold starts per (mode, N) at least: ceil(samples / N) batches of N
  int warm_calls = 200;  // warm calls per (mode, N), spread over the workers (>= 3 each)
  int runs = 10, warmup_runs = 3;
  double warmup_ms = 250;  // and warm-up runs until this much time went by (V8 tier-up)
  std::vector<std::string> datasets{"small", "medium"};
  std::vector<std::string> kernels;
  bool cold = true, compute = true, compute_ext = true;
  std::string skill_dir = AIRLOCK_BENCH_RT_SKILL_DIR, noop_bin = AIRLOCK_BENCH_NOOP_BIN, extension_binary;
};

// ---- probes of a process: CPU, cycles, I/O --------------------------------------------

// CPU time (user + sys, every thread, exited ones included) of a live process, in ms,
// from its CPU-time clock (clock_getcpuclockid: ns resolution, no ptrace access needed);
// /proc/PID/stat utime + stime (clock ticks) if that fails. pid 0: this process.
double cpu_ms(int pid) {
  clockid_t cid;
  timespec ts{};
  if (pid == 0) {
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0) return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
  } else if (clock_getcpuclockid(pid, &cid) == 0 && clock_gettime(cid, &ts) == 0) {
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
  }
  std::string stat = read_file("/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos) return kNaN;
  std::istringstream in(stat.substr(close + 2));
  std::string f;
  double ut = 0, st = 0;
  for (int i = 3; i <= 15 && in >> f; ++i) {
    if (i == 14) ut = std::atof(f.c_str());
    if (i == 15) st = std::atof(f.c_str());
  }
  return (ut + st) * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double rusage_ms(int who) {
  rusage ru{};
  getrusage(who, &ru);
  auto ms = [](const timeval& t) { return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3; };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

struct Io {
  bool ok = false;
  double read_kb = 0, write_kb = 0;
  std::string error;
};

// /proc/PID/io read_bytes / write_bytes (bytes that reached the block layer). Needs ptrace
// read access: a non-dumpable extension's is unreadable unless this runs as root.
Io proc_io(int pid) {
  Io io;
  const std::string path = "/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/io";
  std::ifstream f(path);
  if (!f) {
    io.error = path + ": " + std::strerror(errno);
    return io;
  }
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("read_bytes:", 0) == 0) io.read_kb = std::atof(line.c_str() + 11) / 1024, io.ok = true;
    if (line.rfind("write_bytes:", 0) == 0) io.write_kb = std::atof(line.c_str() + 12) / 1024;
  }
  if (!io.ok) io.error = path + ": unreadable (" + std::strerror(errno ? errno : EACCES) + ")";
  return io;
}

// CPU cycles of this process and everything it starts from now on: one hardware counter
// per existing thread, with inherit (threads and processes created later, the zygote's
// forks included, count into it; a child's count is folded in when it exits).
class Cycles {
 public:
  Cycles() {
    std::error_code ec;
    for (const auto& t : std::filesystem::directory_iterator("/proc/self/task", ec)) {
      const int tid = std::atoi(t.path().filename().c_str());
      perf_event_attr a{};
      a.type = PERF_TYPE_HARDWARE;
      a.size = sizeof a;
      a.config = PERF_COUNT_HW_CPU_CYCLES;
      a.inherit = 1;
      a.exclude_hv = 1;
      int fd = static_cast<int>(syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC));
      if (fd < 0 && (errno == EACCES || errno == EPERM)) {
        a.exclude_kernel = 1;  // perf_event_paranoid: user space only
        fd = static_cast<int>(syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC));
        if (fd >= 0) user_only_ = true;
      }
      if (fd < 0) {
        error_ = std::string("perf_event_open: ") + std::strerror(errno);
        break;
      }
      fds_.push_back(fd);
    }
    if (!error_.empty()) close_all();
  }
  ~Cycles() { close_all(); }
  Cycles(const Cycles&) = delete;
  Cycles& operator=(const Cycles&) = delete;
  bool ok() const { return error_.empty() && !fds_.empty(); }
  const std::string& error() const { return error_; }
  bool user_only() const { return user_only_; }
  double read() const {
    double total = 0;
    for (int fd : fds_) {
      uint64_t v = 0;
      if (::read(fd, &v, sizeof v) != sizeof v) return kNaN;
      total += static_cast<double>(v);
    }
    return ok() ? total : kNaN;
  }

 private:
  void close_all() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }
  std::vector<int> fds_;
  std::string error_;
  bool user_only_ = false;
};

std::set<int> children() {
  std::set<int> pids;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream f(task.path() / "children");
    for (int pid; f >> pid;) pids.insert(pid);
  }
  return pids;
}

// ---- the four ways to start a worker --------------------------------------------------

// One way to start workers. start(i) is one cold start, end to end: when it returns the
// worker's first call has been answered. pid: the worker's process (0: this process).
struct Starter {
  virtual ~Starter() = default;
  virtual std::string start(int i, int& pid) = 0;  // "" or why it failed
  virtual std::string warm(int i) = 0;             // one more call to worker i
  virtual void stop_all() = 0;                     // ends the batch's workers
  virtual int zygote_pid() { return 0; }
};

class NativeStarter : public Starter {
 public:
  explicit NativeStarter(std::string bin) : bin_(std::move(bin)) {}
  ~NativeStarter() override { stop_all(); }
  std::string start(int, int& pid) override {
    int in[2], out[2];  // in: we write, it reads (its stdin); out: it writes (its stdout)
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return std::string("pipe2: ") + std::strerror(errno);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    char* argv[] = {const_cast<char*>(bin_.c_str()), nullptr};
    pid_t p = 0;
    int rc = posix_spawn(&p, bin_.c_str(), &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    if (rc != 0) {
      ::close(in[1]), ::close(out[0]);
      return "posix_spawn " + bin_ + ": " + std::strerror(rc);
    }
    procs_.push_back({p, in[1], out[0]});
    pid = p;
    return ping(procs_.back());
  }
  std::string warm(int i) override { return ping(procs_.at(static_cast<size_t>(i))); }
  void stop_all() override {
    for (auto& p : procs_) {
      ::close(p.to), ::close(p.from);  // EOF: it exits
      waitpid(p.pid, nullptr, 0);
    }
    procs_.clear();
  }

 private:
  struct Proc {
    pid_t pid;
    int to, from;
  };
  static std::string ping(const Proc& p) {
    char c = 'x', r = 0;
    if (write(p.to, &c, 1) != 1) return std::string("write: ") + std::strerror(errno);
    ssize_t n = read(p.from, &r, 1);
    if (n != 1) return n == 0 ? "runtime_noop closed its stdout" : std::string("read: ") + std::strerror(errno);
    return r == c ? "" : "wrong byte echoed";
  }
  std::string bin_;
  std::vector<Proc> procs_;
};

// One SkillRuntime per worker, all on one private loop of this thread.
class InProcessStarter : public Starter {
 public:
  explicit InProcessStarter(std::string wasm) : wasm_(std::move(wasm)) { uv_loop_init(&loop_); }
  ~InProcessStarter() override {
    stop_all();
    uv_loop_close(&loop_);
  }
  std::string start(int, int& pid) override {
    pid = 0;
    rts_.push_back(std::make_unique<runtime::SkillRuntime>(&loop_));
    runtime::SkillLimits lim;  // the defaults an extension uses: 64 MiB, 10 s, Reset
    if (auto st = rts_.back()->load_file("noop", wasm_, lim); !st.ok()) return "load noop: " + st.error().to_string();
    return call(*rts_.back());
  }
  std::string warm(int i) override { return call(*rts_.at(static_cast<size_t>(i))); }
  void stop_all() override {
    rts_.clear();
    uv_run(&loop_, UV_RUN_DEFAULT);
  }

 private:
  std::string call(runtime::SkillRuntime& rt) {
    std::optional<Result<std::string>> r;
    rt.call("noop", std::string(), runtime::CallOptions{}, [&](Result<std::string> x) { r = std::move(x); });
    while (!r) uv_run(&loop_, UV_RUN_ONCE);
    if (!r->ok()) return "call noop: " + r->error().to_string();
    return r->value().empty() ? "" : "noop answered " + std::to_string(r->value().size()) + " bytes";
  }
  std::string wasm_;
  uv_loop_t loop_;
  std::vector<std::unique_ptr<runtime::SkillRuntime>> rts_;
};

class HostStarter : public Starter {
 public:
  HostStarter(const Config& cfg, bool zygote) : wasm_(cfg.skill_dir + "/rt_noop.wasm"), zygote_(zygote) {
    HostOptions ho;
    ho.use_zygote = zygote;
    ho.extension_binary = cfg.extension_binary;
    ho.log_level = "warn";
    host_ = std::make_unique<Host>(ho);
  }
  ~HostStarter() override {
    exts_.clear();
    host_.reset();  // stops and reaps every process
  }
  std::string start(int i, int& pid) override {
    ExtensionOptions eo;
    eo.name = "rt-" + std::to_string(batch_) + "-" + std::to_string(i);
    auto e = host_->spawn(eo);
    if (!e.ok()) return "spawn: " + e.error().to_string();
    exts_.push_back(*e);
    pid = e->pid();
    if (auto st = e->load_skill("noop", wasm_); !st.ok()) return "load_skill noop: " + st.error().to_string();
    return call(*e);
  }
  std::string warm(int i) override { return call(exts_.at(static_cast<size_t>(i))); }
  void stop_all() override {
    for (auto& e : exts_) e.stop(0ms);
    exts_.clear();
    ++batch_;
  }
  int zygote_pid() override {
    if (!zygote_) return 0;
    for (int p : children()) {
      std::string cmd = read_file("/proc/" + std::to_string(p) + "/cmdline");
      std::replace(cmd.begin(), cmd.end(), '\0', ' ');
      if (cmd.find(" zygote") != std::string::npos) return p;
    }
    return 0;
  }

 private:
  static std::string call(Extension& e) {
    auto r = e.call("noop", "");
    if (!r.ok()) return "call noop: " + r.error().to_string();
    return r->empty() ? "" : "noop answered " + std::to_string(r->size()) + " bytes";
  }
  std::string wasm_;
  bool zygote_;
  std::unique_ptr<Host> host_;
  std::vector<Extension> exts_;
  int batch_ = 0;
};

// ---- cold start measurement -----------------------------------------------------------

struct ColdRow {
  std::string mode;
  int workers = 0, batches = 0;
  std::string status = "ok", error;
  std::vector<double> start_ms, warm_us;
  Summary cold, warm;
  double cpu_ms_per_start = kNaN;     // (Δ host + Δ zygote + Σ new workers) / N
  double host_cpu_ms_per_start = kNaN, worker_cpu_ms_per_start = kNaN, zygote_cpu_ms_per_start = kNaN;
  double cycles_per_start = kNaN;
  double pss_mb_per_start = kNaN, rss_mb_per_start = kNaN;  // tree growth / N (mean over batches)
  double tree_pss_mb = kNaN, tree_rss_mb = kNaN;            // tree with N workers (max over batches)
  double read_kb_per_start = kNaN, write_kb_per_start = kNaN;
  double children_cpu_ms_reaped = kNaN;  // getrusage(RUSAGE_CHILDREN) over the row (cross-check)
  std::vector<std::string> unreadable;   // /proc files that could not be read
  double ratio_to_native = kNaN;
};

ColdRow measure_cold(const Config& cfg, const std::string& mode, int n) {
  ColdRow row;
  row.mode = mode;
  row.workers = n;
  const int batches = std::max(1, (cfg.samples + n - 1) / n);
  const double children0 = rusage_ms(RUSAGE_CHILDREN);
  {
    Cycles cycles;  // before the host: its I/O thread, the zygote and every worker inherit it
    std::unique_ptr<Starter> s;
    if (mode == "native") s = std::make_unique<NativeStarter>(cfg.noop_bin);
    else if (mode == "in-process") s = std::make_unique<InProcessStarter>(cfg.skill_dir + "/rt_noop.wasm");
    else s = std::make_unique<HostStarter>(cfg, mode == "zygote");
    // One untimed start first: the zygote up, V8's platform initialised, files cached.
    int pid = 0;
    if (auto e = s->start(0, pid); !e.empty()) {
      row.status = "failed", row.error = "warm-up start: " + e;
      return row;
    }
    s->stop_all();
    const int zygote = s->zygote_pid();
    if (mode == "zygote" && !zygote) row.unreadable.push_back("zygote process not found among the children");
    double cpu_host = 0, cpu_zyg = 0, cpu_workers = 0, cyc = 0, pss = 0, rss = 0, rd = 0, wr = 0;
    bool cyc_ok = cycles.ok(), mem_ok = true, io_ok = true;
    auto note = [&](const std::string& what) {
      if (std::find(row.unreadable.begin(), row.unreadable.end(), what) == row.unreadable.end()) row.unreadable.push_back(what);
    };
    for (int b = 0; b < batches && row.status == "ok"; ++b) {
      ProcMem host_m0 = proc_mem(0), zyg_m0 = zygote ? proc_mem(zygote) : ProcMem{};
      Io host_io0 = proc_io(0), zyg_io0 = zygote ? proc_io(zygote) : Io{};
      const double host_c0 = cpu_ms(0), zyg_c0 = zygote ? cpu_ms(zygote) : 0, cyc0 = cycles.read();
      std::vector<int> pids;
      for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        std::string err = s->start(i, pid);
        const double ms = us_since(t0) / 1000;
        if (!err.empty()) {
          row.status = "failed", row.error = strf("batch %d, start %d of %d: ", b + 1, i + 1, n) + err;
          break;
        }
        row.start_ms.push_back(ms);
        if (pid) {  // the worker's own CPU and I/O up to its first answer
          pids.push_back(pid);
          double c = cpu_ms(pid);
          if (std::isnan(c)) note("CPU clock of pid " + std::to_string(pid));
          else cpu_workers += c;
          Io io = proc_io(pid);
          if (io.ok) rd += io.read_kb, wr += io.write_kb;
          else io_ok = false, note(mode + " worker /proc/PID/io (" + io.error + ")");
        }
      }
      if (row.status != "ok") break;
      cpu_host += cpu_ms(0) - host_c0;
      if (zygote) cpu_zyg += cpu_ms(zygote) - zyg_c0;
      if (cyc_ok) cyc += cycles.read() - cyc0;
      // The tree with all N workers alive (its peak: nothing has ended yet).
      ProcMem host_m = proc_mem(0), zyg_m = zygote ? proc_mem(zygote) : ProcMem{};
      double t_pss = host_m.pss + zyg_m.pss, t_rss = host_m.rss + zyg_m.rss;
      for (int p : pids) {
        ProcMem m = proc_mem(p);
        if (!m.ok) mem_ok = false, note(mode + " worker /proc/" + std::to_string(p) + "/smaps_rollup (non-dumpable: needs root)");
        t_pss += m.pss, t_rss += m.rss;
      }
      if (zygote && !zyg_m.ok) mem_ok = false, note("zygote /proc/PID/smaps_rollup");
      pss += (t_pss - host_m0.pss - zyg_m0.pss) / n;
      rss += (t_rss - host_m0.rss - zyg_m0.rss) / n;
      row.tree_pss_mb = std::isnan(row.tree_pss_mb) ? t_pss : std::max(row.tree_pss_mb, t_pss);
      row.tree_rss_mb = std::isnan(row.tree_rss_mb) ? t_rss : std::max(row.tree_rss_mb, t_rss);
      Io host_io = proc_io(0), zyg_io = zygote ? proc_io(zygote) : Io{};
      if (host_io.ok && host_io0.ok) rd += host_io.read_kb - host_io0.read_kb, wr += host_io.write_kb - host_io0.write_kb;
      else io_ok = false, note("host /proc/self/io");
      if (zygote) {
        if (zyg_io.ok && zyg_io0.ok) rd += zyg_io.read_kb - zyg_io0.read_kb, wr += zyg_io.write_kb - zyg_io0.write_kb;
        else io_ok = false, note("zygote /proc/PID/io (" + zyg_io.error + ")");
      }
      // Warm calls: the same workers again, round robin.
      const int per = std::max(3, cfg.warm_calls / n);
      for (int k = 0; k < per && row.status == "ok"; ++k) {
        for (int i = 0; i < n; ++i) {
          auto t0 = Clock::now();
          std::string err = s->warm(i);
          const double us = us_since(t0);
          if (!err.empty()) {
            row.status = "failed", row.error = strf("warm call %d to worker %d: ", k + 1, i + 1) + err;
            break;
          }
          row.warm_us.push_back(us);
        }
      }
      s->stop_all();
      ++row.batches;
    }
    if (row.status == "ok") {
      const double starts = static_cast<double>(row.start_ms.size());
      row.host_cpu_ms_per_start = cpu_host / starts;
      row.zygote_cpu_ms_per_start = cpu_zyg / starts;
      row.worker_cpu_ms_per_start = cpu_workers / starts;
      row.cpu_ms_per_start = (cpu_host + cpu_zyg + cpu_workers) / starts;
      if (cyc_ok) row.cycles_per_start = cyc / starts;
      if (mem_ok) row.pss_mb_per_start = pss / row.batches, row.rss_mb_per_start = rss / row.batches;
      else row.tree_pss_mb = row.tree_rss_mb = kNaN;
      if (io_ok) row.read_kb_per_start = rd / starts, row.write_kb_per_start = wr / starts;
      row.cold = summarize(row.start_ms);
      row.warm = summarize(row.warm_us);
    }
  }  // the starter (host, zygote, runtimes) is gone: every child reaped
  row.children_cpu_ms_reaped = rusage_ms(RUSAGE_CHILDREN) - children0;
  return row;
}

// ---- compute suite --------------------------------------------------------------------

struct KernelDef {
  std::string name, skill;
  pb_result (*fn)(int);
};
const std::vector<KernelDef>& all_kernels() {
  static const std::vector<KernelDef> k = {
      {"gemm", "pb_gemm", pb_gemm},
      {"2mm", "pb_2mm", pb_2mm},
      {"atax", "pb_atax", pb_atax},
      {"jacobi-2d", "pb_jacobi_2d", pb_jacobi_2d},
      {"seidel-2d", "pb_seidel_2d", pb_seidel_2d},
      {"floyd-warshall", "pb_floyd_warshall", pb_floyd_warshall},
      {"nussinov", "pb_nussinov", pb_nussinov},
  };
  return k;
}

struct KernelRow {
  std::string kernel, dataset, status = "ok", error;
  Summary native_ms, wasm_ms, wasm_call_ms, ext_ms, ext_call_ms;  // kernel time (inside) and whole call
  double native_checksum = kNaN, wasm_checksum = kNaN, ext_checksum = kNaN;
  bool ext_run = false;
  int native_warmups = 0, wasm_warmups = 0, ext_warmups = 0;
  double ratio = kNaN, ext_ratio = kNaN;
  double ratio_min = kNaN;  // fastest wasm run / fastest native run: what load next door cannot inflate
};

// A kernel skill's answer: checksum (double) + kernel ns (int64), little-endian.
std::optional<pb_result> decode(const std::string& out) {
  if (out.size() != 16) return std::nullopt;
  pb_result r;
  std::memcpy(&r.checksum, out.data(), 8);
  std::memcpy(&r.kernel_ns, out.data() + 8, 8);
  return r;
}

std::string checksum_mismatch(double native, double other) {
  if (native == other) return "";
  return strf("checksum %.17g, native %.17g", other, native);
}

// The kernels in-process: one SkillRuntime on a private loop, every kernel skill loaded.
class LocalKernels {
 public:
  explicit LocalKernels(const Config& cfg) {
    uv_loop_init(&loop_);
    rt_ = std::make_unique<runtime::SkillRuntime>(&loop_);
    runtime::SkillLimits lim{64, 120'000, runtime::FreshState::Reset};
    for (const auto& k : all_kernels())
      if (auto st = rt_->load_file(k.skill, cfg.skill_dir + "/" + k.skill + ".wasm", lim); !st.ok()) errors_[k.skill] = st.error().to_string();
  }
  ~LocalKernels() {
    rt_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
  std::string load_error(const std::string& skill) const {
    auto it = errors_.find(skill);
    return it == errors_.end() ? "" : "loading " + skill + ": " + it->second;
  }
  Result<std::string> call(const std::string& skill, const std::string& input) {
    std::optional<Result<std::string>> r;
    rt_->call(skill, input, runtime::CallOptions{}, [&](Result<std::string> x) { r = std::move(x); });
    while (!r) uv_run(&loop_, UV_RUN_ONCE);
    return std::move(*r);
  }

 private:
  uv_loop_t loop_;
  std::unique_ptr<runtime::SkillRuntime> rt_;
  std::map<std::string, std::string> errors_;
};

// The kernels through an extension (zygote, default sandbox): one host, one extension.
struct RemoteKernels {
  std::unique_ptr<Host> host;
  std::optional<Extension> ext;
  std::string error;
  explicit RemoteKernels(const Config& cfg) {
    HostOptions ho;
    ho.extension_binary = cfg.extension_binary;
    ho.log_level = "warn";
    ho.default_call_timeout = milliseconds(120'000);
    host = std::make_unique<Host>(ho);
    ExtensionOptions eo;
    eo.name = "rt-kernels";
    auto e = host->spawn(eo);
    if (!e.ok()) {
      error = "spawn: " + e.error().to_string();
      return;
    }
    for (const auto& k : all_kernels()) {
      if (auto st = e->load_skill(k.skill, cfg.skill_dir + "/" + k.skill + ".wasm", SkillLimits{64, 120'000}); !st.ok()) {
        error = "load_skill " + k.skill + ": " + st.error().to_string();
        return;
      }
    }
    ext = *e;
  }
};

// Native, in-process and (if given) extension runs of one kernel on one data set. Each
// side is warmed up first: at least warmup_runs runs and at least warmup_ms of them (a
// short kernel needs many calls before V8 has tiered it up), at most 10,000. Then the
// measured runs alternate native, in-process, extension, native, ...: on a shared
// machine a burst of load next door then hits every side alike instead of one of them.
// Every run's checksum must equal the native one.
KernelRow measure_kernel(const Config& cfg, const KernelDef& k, const std::string& dataset, LocalKernels& local,
                         RemoteKernels* remote) {
  KernelRow row;
  row.kernel = k.name;
  row.dataset = dataset;
  const int ds = dataset == "small" ? PB_SMALL : PB_MEDIUM;
  auto fail = [&](std::string why) {
    row.status = "failed";
    row.error = std::move(why);
    return row;
  };
  if (auto e = local.load_error(k.skill); !e.empty()) return fail(e);
  if (remote && !remote->error.empty()) return fail("extension: " + remote->error);
  std::optional<Extension> ext = remote ? remote->ext : std::nullopt;

  // One run of one side: the kernel's own time and the whole call's, in ms; "" or an error.
  struct Run {
    double kernel_ms = 0, call_ms = 0;
    std::string error;
  };
  row.native_checksum = k.fn(ds).checksum;
  auto native = [&]() -> Run {
    auto t0 = Clock::now();
    pb_result r = k.fn(ds);
    Run x{static_cast<double>(r.kernel_ns) / 1e6, us_since(t0) / 1000, ""};
    if (r.checksum != row.native_checksum) x.error = "native checksum differs between runs";
    return x;
  };
  auto skill = [&](const char* where, const std::function<Result<std::string>()>& call, double& checksum) -> Run {
    auto t0 = Clock::now();
    auto res = call();
    const double ms = us_since(t0) / 1000;
    if (!res.ok()) return {0, 0, std::string(where) + ": " + res.error().to_string()};
    auto r = decode(*res);
    if (!r) return {0, 0, std::string(where) + ": answer of " + std::to_string(res->size()) + " bytes, expected 16"};
    checksum = r->checksum;
    if (auto m = checksum_mismatch(row.native_checksum, r->checksum); !m.empty()) return {0, 0, std::string(where) + ": " + m};
    return {static_cast<double>(r->kernel_ns) / 1e6, ms, ""};
  };
  auto in_process = [&] { return skill("in-process", [&] { return local.call(k.skill, dataset); }, row.wasm_checksum); };
  auto extension = [&] { return skill("extension", [&] { return ext->call(k.skill, dataset); }, row.ext_checksum); };

  auto warm_up = [&](const std::function<Run()>& run, int& count) -> std::string {
    const auto t0 = Clock::now();
    for (count = 0; count < cfg.warmup_runs || (us_since(t0) < cfg.warmup_ms * 1000 && count < 10'000); ++count)
      if (Run r = run(); !r.error.empty()) return r.error;
    return "";
  };
  if (auto e = warm_up(native, row.native_warmups); !e.empty()) return fail(e);
  if (auto e = warm_up(in_process, row.wasm_warmups); !e.empty()) return fail(e);
  if (ext)
    if (auto e = warm_up(extension, row.ext_warmups); !e.empty()) return fail(e);

  std::vector<double> nat, wasm, wasm_call, ex, ex_call;
  for (int i = 0; i < cfg.runs; ++i) {
    Run n = native();
    if (!n.error.empty()) return fail(n.error);
    nat.push_back(n.kernel_ms);
    Run w = in_process();
    if (!w.error.empty()) return fail(w.error);
    wasm.push_back(w.kernel_ms), wasm_call.push_back(w.call_ms);
    if (ext) {
      Run e = extension();
      if (!e.error.empty()) return fail(e.error);
      ex.push_back(e.kernel_ms), ex_call.push_back(e.call_ms);
    }
  }
  row.native_ms = summarize(nat);
  row.wasm_ms = summarize(wasm);
  row.wasm_call_ms = summarize(wasm_call);
  row.ratio = row.wasm_ms.median / row.native_ms.median;
  row.ratio_min = row.wasm_ms.min / row.native_ms.min;
  if (ext) {
    row.ext_run = true;
    row.ext_ms = summarize(ex);
    row.ext_call_ms = summarize(ex_call);
    row.ext_ratio = row.ext_ms.median / row.native_ms.median;
  }
  return row;
}

// ---- reporting ------------------------------------------------------------------------

nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }
std::string f2(double v, const char* fmt = "%.2f") { return std::isnan(v) ? "-" : strf(fmt, v); }
std::string fms(double v) { return std::isnan(v) ? "-" : v < 10 ? strf("%.3f", v) : v < 1000 ? strf("%.2f", v) : strf("%.0f", v); }
std::string fus(double v) { return std::isnan(v) ? "-" : v < 100 ? strf("%.2f", v) : v < 10000 ? strf("%.1f", v) : strf("%.0f", v); }
std::string fcycles(double v) {
  if (std::isnan(v)) return "-";
  return v >= 1e9 ? strf("%.2fG", v / 1e9) : v >= 1e6 ? strf("%.1fM", v / 1e6) : v >= 1e3 ? strf("%.1fK", v / 1e3) : strf("%.0f", v);
}

nlohmann::json to_json(const ColdRow& r) {
  const bool ok = r.status == "ok";
  auto v = [&](double x) { return ok ? num(x) : nlohmann::json(nullptr); };
  return {{"mode", r.mode},
          {"workers", r.workers},
          {"batches", r.batches},
          {"starts", r.start_ms.size()},
          {"status", r.status},
          {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)},
          {"cold_ms_median", v(r.cold.median)},
          {"cold_ms_p99", v(r.cold.p99)},
          {"cold_ms_mean", v(r.cold.mean)},
          {"cold_ms_min", v(r.cold.min)},
          {"cold_ms_max", v(r.cold.max)},
          {"cold_ratio_to_native", v(r.ratio_to_native)},
          {"warm_calls", r.warm_us.size()},
          {"warm_us_median", v(r.warm.median)},
          {"warm_us_p99", v(r.warm.p99)},
          {"cpu_ms_per_start", v(r.cpu_ms_per_start)},
          {"host_cpu_ms_per_start", v(r.host_cpu_ms_per_start)},
          {"zygote_cpu_ms_per_start", v(r.zygote_cpu_ms_per_start)},
          {"worker_cpu_ms_per_start", v(r.worker_cpu_ms_per_start)},
          {"children_cpu_ms_reaped", num(r.children_cpu_ms_reaped)},
          {"cycles_per_start", v(r.cycles_per_start)},
          {"pss_mb_per_start", v(r.pss_mb_per_start)},
          {"rss_mb_per_start", v(r.rss_mb_per_start)},
          {"tree_pss_mb", v(r.tree_pss_mb)},
          {"tree_rss_mb", v(r.tree_rss_mb)},
          {"disk_read_kb_per_start", v(r.read_kb_per_start)},
          {"disk_write_kb_per_start", v(r.write_kb_per_start)},
          {"unreadable", r.unreadable}};
}

nlohmann::json to_json(const KernelRow& r) {
  const bool ok = r.status == "ok";
  auto v = [&](double x) { return ok ? num(x) : nlohmann::json(nullptr); };
  auto e = [&](double x) { return ok && r.ext_run ? num(x) : nlohmann::json(nullptr); };
  return {{"kernel", r.kernel},
          {"dataset", r.dataset},
          {"status", r.status},
          {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)},
          {"native_ms_median", v(r.native_ms.median)},
          {"native_ms_p99", v(r.native_ms.p99)},
          {"wasm_ms_median", v(r.wasm_ms.median)},
          {"wasm_ms_p99", v(r.wasm_ms.p99)},
          {"wasm_call_ms_median", v(r.wasm_call_ms.median)},
          {"ratio_wasm_to_native", v(r.ratio)},
          {"ratio_wasm_to_native_min", v(r.ratio_min)},
          {"native_ms_min", v(r.native_ms.min)},
          {"wasm_ms_min", v(r.wasm_ms.min)},
          {"ext_ms_median", e(r.ext_ms.median)},
          {"ext_ms_p99", e(r.ext_ms.p99)},
          {"ext_call_ms_median", e(r.ext_call_ms.median)},
          {"ratio_ext_to_native", e(r.ext_ratio)},
          {"warmup_runs", {{"native", r.native_warmups}, {"wasm", r.wasm_warmups}, {"ext", r.ext_warmups}}},
          {"checksum", num(r.native_checksum)},
          {"checksum_match", ok}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runtime_bench: cold start (native process, in-process runtime, exec, zygote) and compute\n"
               "(PolyBench-style kernels, wasm vs native). Table on stdout, progress on stderr."};
  Config cfg;
  std::string json_path, only;
  bool check_targets = false, no_ext_compute = false;
  app.add_option("--workers", cfg.workers, "Worker counts to start per mode")->delimiter(',')->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--modes", cfg.modes, "Cold-start modes")->delimiter(',')->capture_default_str()->check(CLI::IsMember({"native", "in-process", "exec", "zygote"}));
  app.add_option("--samples", cfg.samples, "Cold starts per mode and count at least (batches of N)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warm-calls", cfg.warm_calls, "Warm calls per mode and count (at least 3 per worker)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--runs", cfg.runs, "Measured runs per kernel and data set, each side")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup-runs", cfg.warmup_runs, "Unrecorded runs before them, at least")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--warmup-ms", cfg.warmup_ms, "... and until this much time went by (V8 tiers hot code up meanwhile)")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--datasets", cfg.datasets, "Kernel data sets")->delimiter(',')->capture_default_str()->check(CLI::IsMember({"small", "medium"}));
  app.add_option("--kernels", cfg.kernels, "Kernels to run (default: all)")->delimiter(',')
      ->check(CLI::IsMember({"gemm", "2mm", "atax", "jacobi-2d", "seidel-2d", "floyd-warshall", "nussinov"}));
  app.add_option("--only", only, "Run only one part")->check(CLI::IsMember({"cold", "compute"}));
  app.add_flag("--no-ext-compute", no_ext_compute, "Do not run the kernels through an extension (in-process and native only)");
  app.add_flag("--check", check_targets, "Exit 1 if a printed target is missed");
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  app.add_option("--skills-dir", cfg.skill_dir, "Folder with rt_noop.wasm and the pb_*.wasm kernels")->capture_default_str();
  app.add_option("--noop", cfg.noop_bin, "The native no-op program (runtime_noop)")->capture_default_str();
  app.add_option("--extension", cfg.extension_binary, "airlock-extension binary (default: the host library's choice)");
  CLI11_PARSE(app, argc, argv);
  cfg.cold = only != "compute";
  cfg.compute = only != "cold";
  cfg.compute_ext = !no_ext_compute;
  std::sort(cfg.workers.begin(), cfg.workers.end());
  cfg.workers.erase(std::unique(cfg.workers.begin(), cfg.workers.end()), cfg.workers.end());

  spdlog::set_default_logger(spdlog::stderr_color_mt("airlock"));
  spdlog::set_level(spdlog::level::warn);
  const auto run_start = Clock::now();
  int failed = 0;

  // ---- cold start
  std::vector<ColdRow> cold;
  std::string cycles_note;
  if (cfg.cold) {
    {
      Cycles probe;
      if (!probe.ok()) cycles_note = "cycles: not available (" + probe.error() + ")";
      else if (probe.user_only()) cycles_note = "cycles: user space only (perf_event_paranoid)";
    }
    // native first (this process is smallest then), in-process last (it leaves V8's
    // platform threads behind in this process).
    const std::vector<std::string> order = {"native", "zygote", "exec", "in-process"};
    for (const auto& mode : order) {
      if (std::find(cfg.modes.begin(), cfg.modes.end(), mode) == cfg.modes.end()) continue;
      for (int n : cfg.workers) {
        std::fprintf(stderr, "[cold] %-10s %3d worker(s)... ", mode.c_str(), n);
        auto t0 = Clock::now();
        cold.push_back(measure_cold(cfg, mode, n));
        const ColdRow& r = cold.back();
        if (r.status == "ok") {
          std::fprintf(stderr, "median %s ms, %zu starts (%.1f s)\n", fms(r.cold.median).c_str(), r.start_ms.size(), us_since(t0) / 1e6);
        } else {
          ++failed;
          std::fprintf(stderr, "failed: %s\n", r.error.c_str());
        }
      }
    }
    for (auto& r : cold) {
      for (const auto& b : cold)
        if (b.mode == "native" && b.workers == r.workers && b.status == "ok" && r.status == "ok") r.ratio_to_native = r.cold.median / b.cold.median;
    }
  }

  // ---- compute
  std::vector<KernelRow> kernels;
  if (cfg.compute) {
    std::fprintf(stderr, "[compute] loading the kernels in-process%s...\n", cfg.compute_ext ? " and into an extension" : "");
    LocalKernels local(cfg);
    std::unique_ptr<RemoteKernels> remote;
    if (cfg.compute_ext) remote = std::make_unique<RemoteKernels>(cfg);
    for (const auto& k : all_kernels()) {
      if (!cfg.kernels.empty() && std::find(cfg.kernels.begin(), cfg.kernels.end(), k.name) == cfg.kernels.end()) continue;
      for (const auto& ds : {std::string("small"), std::string("medium")}) {
        if (std::find(cfg.datasets.begin(), cfg.datasets.end(), ds) == cfg.datasets.end()) continue;
        std::fprintf(stderr, "[compute] %-15s %-6s ", k.name.c_str(), ds.c_str());
        auto t0 = Clock::now();
        kernels.push_back(measure_kernel(cfg, k, ds, local, remote.get()));
        const KernelRow& r = kernels.back();
        if (r.status == "ok") {
          std::fprintf(stderr, "native %s ms, wasm %s ms (%.2f×) (%.1f s)\n", fms(r.native_ms.median).c_str(),
                       fms(r.wasm_ms.median).c_str(), r.ratio, us_since(t0) / 1e6);
        } else {
          ++failed;
          std::fprintf(stderr, "failed: %s\n", r.error.c_str());
        }
      }
    }
  }
  std::fprintf(stderr, "done in %.1f s\n\n", us_since(run_start) / 1e6);

  // ---- report
  Machine m = machine();
  std::string bar(100, '=');
  std::printf("%s\nAIRLOCK RUNTIME BENCHMARK RESULTS  (cold start and compute, Faasm-style)\n%s\n", bar.c_str(), bar.c_str());
  std::printf("Machine: %s, %u cores, %.1f GB RAM, %s, commit %s, %s build\n", m.cpu.c_str(), m.cores, m.memory_gb,
              m.kernel.c_str(), m.commit.c_str(), m.build_type.c_str());
  if (cfg.cold) {
    std::printf("\nCold start of a no-op (start + load + first call answered), per start; warm call after it.\n"
                "Starts are sequential; N workers are alive at the end of each batch. CPU = user + sys of host + zygote\n"
                "+ the new workers; PSS/RSS = growth of that tree / N; Tree = the tree with all N alive.\n");
    Table t{{"Mode", "N", "Starts", "Cold median ms", "Cold p99 ms", "vs native", "CPU ms/start", "Cycles/start",
             "PSS MB/start", "RSS MB/start", "Tree PSS MB", "Tree RSS MB", "Disk rd/wr KB/start", "Warm median µs", "Warm p99 µs"},
            {},
            {false, true, true, true, true, true, true, true, true, true, true, true, true, true, true}};
    Table bad{{"Mode", "N", "Error"}, {}, {}};
    for (const auto& r : cold) {
      if (r.status != "ok") {
        bad.rows.push_back({r.mode, std::to_string(r.workers), r.error});
        continue;
      }
      t.rows.push_back({r.mode, std::to_string(r.workers), std::to_string(r.start_ms.size()), fms(r.cold.median), fms(r.cold.p99),
                        std::isnan(r.ratio_to_native) ? "-" : strf("%.1f×", r.ratio_to_native), fms(r.cpu_ms_per_start),
                        fcycles(r.cycles_per_start), f2(r.pss_mb_per_start), f2(r.rss_mb_per_start), f2(r.tree_pss_mb, "%.1f"),
                        f2(r.tree_rss_mb, "%.1f"),
                        std::isnan(r.read_kb_per_start) ? "unreadable" : strf("%.1f / %.1f", r.read_kb_per_start, r.write_kb_per_start),
                        fus(r.warm.median), fus(r.warm.p99)});
    }
    t.print();
    if (!bad.rows.empty()) std::printf("\nFailed:\n"), bad.print();
    std::printf("\nCPU split per start (ms): host / zygote / worker\n");
    for (const auto& r : cold)
      if (r.status == "ok")
        std::printf("  %-10s N=%-3d %8s / %8s / %8s   (children reaped over the row, getrusage: %.1f ms)\n", r.mode.c_str(), r.workers,
                    fms(r.host_cpu_ms_per_start).c_str(), fms(r.zygote_cpu_ms_per_start).c_str(), fms(r.worker_cpu_ms_per_start).c_str(),
                    r.children_cpu_ms_reaped);
    if (!cycles_note.empty()) std::printf("\n%s\n", cycles_note.c_str());
    std::set<std::string> unread;
    for (const auto& r : cold)
      for (const auto& u : r.unreadable) unread.insert(r.mode + ": " + u);
    if (!unread.empty()) {
      std::printf("\nUnreadable (the columns that need them show '-' / 'unreadable'):\n");
      for (const auto& u : unread) std::printf("  %s\n", u.c_str());
    }
  }
  if (cfg.compute) {
    std::printf("\nCompute: PolyBench-style kernels, one C source each, native (cc -O2) vs the same source as a skill\n"
                "(wasm32, clang-19 -O2, V8). Warm-up: >= %d runs and >= %.0f ms per side (V8 tiers up meanwhile); then the\n"
                "sides take turns, run by run. Kernel time measured inside the code (the same lines on every side), median of %d\n"
                "runs. Call ms: the whole call as a caller sees it (input, instance, kernel's initialisation, output).\n",
                cfg.warmup_runs, cfg.warmup_ms, cfg.runs);
    Table t{{"Kernel", "Data set", "Native ms", "Wasm ms (in-process)", "Wasm/native", "(min/min)", "Wasm call ms", "Ext ms",
             "Ext/native", "Ext call ms", "Checksum"},
            {},
            {false, false, true, true, true, true, true, true, true, true, false}};
    Table bad{{"Kernel", "Data set", "Error"}, {}, {}};
    for (const auto& r : kernels) {
      if (r.status != "ok") {
        bad.rows.push_back({r.kernel, r.dataset, r.error});
        continue;
      }
      t.rows.push_back({r.kernel, r.dataset, fms(r.native_ms.median), fms(r.wasm_ms.median), strf("%.2f×", r.ratio),
                        strf("%.2f×", r.ratio_min), fms(r.wasm_call_ms.median), r.ext_run ? fms(r.ext_ms.median) : "-",
                        r.ext_run ? strf("%.2f×", r.ext_ratio) : "-", r.ext_run ? fms(r.ext_call_ms.median) : "-",
                        strf("%.10g", r.native_checksum) + (r.ext_run ? " (all 3 equal)" : " (both equal)")});
    }
    t.print();
    if (!bad.rows.empty()) std::printf("\nFailed:\n"), bad.print();
    std::vector<double> ratios;
    for (const auto& r : kernels)
      if (r.status == "ok" && r.dataset == "medium") ratios.push_back(r.ratio);
    if (!ratios.empty()) {
      double g = 0;
      for (double x : ratios) g += std::log(x);
      std::printf("\nGeometric mean wasm/native (medium): %.2f× over %zu kernels\n", std::exp(g / static_cast<double>(ratios.size())),
                  ratios.size());
    }
  }

  // ---- targets
  std::printf("\nTargets (this run):\n");
  int missed = 0;
  nlohmann::json targets = nlohmann::json::array();
  auto target = [&](const std::string& what, double value, double limit, const std::string& unit, bool ran) {
    const bool met = ran && !std::isnan(value) && value <= limit;
    if (!met) ++missed;
    std::string v = !ran ? "failed (no measurement)" : strf("%.2f %s (target ≤ %g %s) %s", value, unit.c_str(), limit, unit.c_str(), met ? "met" : "NOT MET");
    std::printf("  %-52s %s\n", what.c_str(), v.c_str());
    targets.push_back({{"target", what}, {"value", num(value)}, {"limit", limit}, {"met", met}});
  };
  for (const auto& r : cold)
    if (r.mode == "zygote") target(strf("zygote cold start median, N=%d", r.workers), r.cold.median, 20, "ms", r.status == "ok");
  // The ratio that counts: wasm in-process vs native, on the largest data set run.
  const std::string main_ds = std::find(cfg.datasets.begin(), cfg.datasets.end(), "medium") != cfg.datasets.end() ? "medium" : "small";
  for (const auto& r : kernels)
    if (r.dataset == main_ds) target(r.kernel + " (" + main_ds + ") wasm/native", r.ratio, 3.0, "×", r.status == "ok");
  if (targets.empty()) std::printf("  (none: nothing measured that has a target)\n");
  std::printf("\nSummary: %zu cold-start rows, %zu kernel rows, %d failed; %d target(s) missed\n", cold.size(), kernels.size(), failed, missed);

  if (!json_path.empty()) {
    nlohmann::json jc = nlohmann::json::array(), jk = nlohmann::json::array();
    for (const auto& r : cold) jc.push_back(to_json(r));
    for (const auto& r : kernels) jk.push_back(to_json(r));
    nlohmann::json doc = {{"machine", to_json(m)},
                          {"config",
                           {{"workers", cfg.workers},
                            {"modes", cfg.modes},
                            {"samples", cfg.samples},
                            {"warm_calls", cfg.warm_calls},
                            {"runs", cfg.runs},
                            {"warmup_runs", cfg.warmup_runs},
                            {"warmup_ms", cfg.warmup_ms},
                            {"datasets", cfg.datasets},
                            {"skills_dir", cfg.skill_dir},
                            {"noop", cfg.noop_bin}}},
                          {"cycles", cycles_note.empty() ? nlohmann::json("available") : nlohmann::json(cycles_note)},
                          {"cold_start", jc},
                          {"compute", jk},
                          {"targets", targets}};
    std::ofstream f(json_path);
    f << doc.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "error: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  if (failed) return 1;
  if (check_targets && missed) {
    std::fprintf(stderr, "--check: %d target(s) missed\n", missed);
    return 1;
  }
  return 0;
}
