#include "script_runner.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "airlock/skill_set.h"
#include "process_tree.h"

namespace airlock::ctl {

namespace {

using Clock = std::chrono::steady_clock;

class Runner {
 public:
  Runner(const RunOptions& o, std::string wasm, std::ostream& progress)
      : o_(o), wasm_(std::make_shared<const std::vector<uint8_t>>(wasm.begin(), wasm.end())), progress_(progress) {}

  Status start() {
    HostOptions ho;
    ho.transport = o_.transport;
    ho.extension_binary = o_.extension_binary;
    ho.log_level = "warn";
    ho.engine = o_.engine;
    ho.compile_cache_dir = o_.compile_cache_dir;
    host_ = std::make_unique<Host>(ho);
    if (!o_.metrics_address.empty()) {
      auto port = host_->serve_metrics(o_.metrics_address);
      if (!port.ok()) return port.take_error();
      const std::string addr = o_.metrics_address.substr(0, o_.metrics_address.rfind(':'));
      progress_ << "metrics: http://" << addr << ":" << *port << "/metrics\n";
    }
    for (int i = 0; i < o_.extensions; ++i) {
      ExtensionOptions eo;
      eo.name = "ext" + std::to_string(i);
      auto e = host_->spawn(eo);
      if (!e.ok()) return e.take_error();
      exts_.push_back(*e);
    }
    set_ = std::make_unique<SkillSet>(SkillSetOptions{.extensions = exts_, .cache_bytes = o_.cache_kb << 10});
    return ok_status();
  }

  // Runs one command line (without its repeat count) into `rec`.
  Status run(const std::vector<std::string>& w, CommandRecord& rec) {
    const std::string& verb = w[0];
    auto need = [&](size_t n) -> Status {
      if (w.size() != n + 1) {
        return make_error(Code::InvalidArgument, "'" + verb + "' takes " + std::to_string(n) + " argument(s), got " +
                                                     std::to_string(w.size() - 1));
      }
      return ok_status();
    };
    auto count = [&](const Status& st) {
      if (st.ok()) {
        rec.ok++;
      } else {
        rec.failed++;
        if (rec.first_error.empty()) rec.first_error = st.error().to_string();
      }
    };
    if (verb == "add_c") {
      if (auto st = need(0); !st.ok()) return st;
      count(add(1));
    } else if (verb == "p_add_c") {
      if (auto st = need(1); !st.ok()) return st;
      auto k = number(w[1]);
      if (!k.ok()) return k.take_error();
      count(add(*k));
    } else if (verb == "skills" || verb == "cached_skills") {
      if (auto st = need(0); !st.ok()) return st;
      const size_t n = verb == "skills" ? set_->skills().size() : set_->cached().size();
      progress_ << "  " << verb << ": " << n << "\n";
      rec.ok = static_cast<int>(n);
    } else if (verb == "execute_skill") {
      if (auto st = need(4); !st.ok()) return st;
      if (!set_->placement(w[1])) {
        return make_error(Code::NotFound, "no skill '" + w[1] + "' (add_c names them sample_c1, sample_c2, ...)");
      }
      count(status_of(call(w[1], w[2] + "," + w[3] + "," + w[4]).get()));
    } else if (verb == "execute_all" || verb == "p_execute_all") {
      const bool parallel = verb == "p_execute_all";
      if (auto st = need(parallel ? 4 : 3); !st.ok()) return st;
      const std::string input = w[1] + "," + w[2] + "," + w[3];
      auto k = parallel ? number(w[4]) : Result<int>(1);
      if (!k.ok()) return k.take_error();
      if (parallel) {
        std::vector<std::future<CallResult>> fs;
        for (const auto& s : set_->skills()) {
          for (int i = 0; i < *k; ++i) fs.push_back(call(s, input));
        }
        for (auto& f : fs) count(status_of(f.get()));
      } else {
        for (const auto& s : set_->skills()) count(status_of(call(s, input).get()));
      }
    } else if (verb == "drop_cached_skill" || verb == "delete_skill") {
      if (auto st = need(0); !st.ok()) return st;
      // drop: the most recently called loaded skill; delete: the newest skill.
      const auto names = verb == "delete_skill" ? set_->skills() : set_->cached();
      if (names.empty()) {
        return make_error(Code::NotFound, verb == "delete_skill" ? "no skill to delete" : "no loaded skill to drop");
      }
      count(verb == "delete_skill" ? set_->remove(names.back()) : set_->drop(names.front()));
    } else if (verb == "idle") {
      // Nothing runs for MS milliseconds: the cpu(ms) column then shows background work
      // (V8's tier-up compiling the skills just used, collectors).
      if (auto st = need(1); !st.ok()) return st;
      auto ms = number(w[1]);
      if (!ms.ok()) return ms.take_error();
      std::this_thread::sleep_for(std::chrono::milliseconds(*ms));
      rec.ok = 1;
    } else if (verb == "wait_compile_cache") {
      // Until the compile cache has built every entry asked for so far.
      if (auto st = need(0); !st.ok()) return st;
      host_->wait_for_compile_cache();
      const auto cs = host_->compile_cache_stats();
      progress_ << "  compile cache: " << cs.hits << " hits, " << cs.misses << " misses, " << cs.built << " built, "
                << cs.rejected << " rejected, " << cs.corrupt << " corrupt, " << cs.build_failures << " failed"
                << (cs.last_failure.empty() ? "" : " (" + cs.last_failure + ")") << "\n";
      rec.ok = static_cast<int>(cs.built);
      rec.failed = static_cast<int>(cs.build_failures);
    } else if (verb == "stop") {
      if (auto st = need(0); !st.ok()) return st;
      host_->stop(2s);
      rec.ok = 1;
    } else {
      return make_error(Code::InvalidArgument, "unknown command '" + verb +
                                                   "' (add_c, p_add_c, skills, cached_skills, execute_skill, execute_all, "
                                                   "p_execute_all, drop_cached_skill, delete_skill, idle, wait_compile_cache, stop)");
    }
    return ok_status();
  }

 private:
  static Result<int> number(const std::string& s) {
    try {
      size_t used = 0;
      long v = std::stol(s, &used);
      if (used == s.size() && v >= 0 && v <= 1'000'000) return static_cast<int>(v);
    } catch (...) {
    }
    return make_error(Code::InvalidArgument, "'" + s + "' is not a count from 0 to 1000000");
  }
  static Status status_of(const CallResult& r) { return r.ok() ? ok_status() : Status(r.error()); }

  // Adds k skills, loading them in parallel: kLoaders threads, each loading the next
  // skill not taken yet (a thread per skill cost 500 thread starts for 500 skills, and
  // 32 loads in flight keep every extension busy).
  Status add(int k) {
    static constexpr int kLoaders = 32;
    std::vector<std::string> fresh;
    for (int i = 0; i < k; ++i) {
      fresh.push_back("sample_c" + std::to_string(++added_));
      if (auto st = set_->add(fresh.back(), o_.distinct ? distinct_module(fresh.back()) : wasm_); !st.ok()) return st;
    }
    std::atomic<size_t> next{0};
    std::mutex mu;
    Status first = ok_status();
    std::vector<std::thread> loaders;
    for (int t = 0; t < std::min(k, kLoaders); ++t) {
      loaders.emplace_back([&] {
        for (size_t i; (i = next++) < fresh.size();) {
          Status st = set_->load(fresh[i]);
          std::lock_guard lk(mu);
          if (!st.ok() && first.ok()) first = st;
        }
      });
    }
    for (auto& t : loaders) t.join();
    return first;
  }

  // The sample with a custom section naming the skill right after the header: a module of
  // its own (V8 compiles identical bytes once per process; distinct bytes are compiled
  // each). First, not last: modules that differ only at their end are what V8's module
  // cache compares longest (a 32 KB memcmp per step of its lookup, 4% of a cached load),
  // and different programs differ from their first sections on.
  std::shared_ptr<const std::vector<uint8_t>> distinct_module(const std::string& name) const {
    constexpr size_t kHeader = 8;  // "\0asm" and the version
    const std::string section_name = "airlock.variant";
    std::vector<uint8_t> body;
    body.push_back(static_cast<uint8_t>(section_name.size()));
    body.insert(body.end(), section_name.begin(), section_name.end());
    body.insert(body.end(), name.begin(), name.end());
    std::vector<uint8_t> section{0};  // custom section
    for (size_t n = body.size();;) {  // LEB128 size
      const uint8_t b = n & 0x7f;
      n >>= 7;
      section.push_back(n ? b | 0x80 : b);
      if (!n) break;
    }
    section.insert(section.end(), body.begin(), body.end());
    auto m = std::make_shared<std::vector<uint8_t>>(*wasm_);
    m->insert(m->begin() + static_cast<std::ptrdiff_t>(std::min(kHeader, m->size())), section.begin(), section.end());
    return m;
  }

  // A call; the skill set loads a skill that is not loaded first.
  std::future<CallResult> call(const std::string& skill, const std::string& input) {
    CallOptions co;
    co.timeout = std::chrono::minutes(5);
    return set_->call_async(skill, input, co);
  }

  const RunOptions& o_;
  std::shared_ptr<const std::vector<uint8_t>> wasm_;  // one module under many names
  std::ostream& progress_;
  std::unique_ptr<Host> host_;
  std::vector<Extension> exts_;
  std::unique_ptr<SkillSet> set_;
  int added_ = 0;
};

}  // namespace

Result<RunLog> run_script(const RunOptions& o, std::ostream& progress) {
  std::ifstream sf;
  if (!o.script.empty()) {  // none: serve-metrics with no skills
    sf.open(o.script);
    if (!sf) return make_error(Code::NotFound, "cannot read script '" + o.script + "'");
  }
  std::ifstream wf(o.skill_wasm, std::ios::binary);
  if (!wf) return make_error(Code::NotFound, "cannot read the sample skill '" + o.skill_wasm + "' (--skill)");
  std::string wasm((std::istreambuf_iterator<char>(wf)), {});
  if (o.extensions < 1 || o.extensions > 1024) return make_error(Code::InvalidArgument, "--extensions must be 1 to 1024");

  // Parse everything first: a typo on line 40 must not surface after 39 commands ran.
  struct Line {
    int repeat;
    std::vector<std::string> words;
    std::string text;
    int number;
  };
  std::vector<Line> lines;
  int no = 0;
  for (std::string line; std::getline(sf, line);) {
    ++no;
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream in(line);
    std::vector<std::string> w{std::istream_iterator<std::string>(in), {}};
    if (w.empty()) continue;
    int repeat = 1;
    if (std::all_of(w[0].begin(), w[0].end(), ::isdigit)) {
      repeat = std::stoi(w[0].substr(0, 7));
      w.erase(w.begin());
      if (w.empty() || repeat < 1) return make_error(Code::InvalidArgument, o.script + ":" + std::to_string(no) + ": a count needs a command after it");
    }
    static const std::map<std::string, size_t> kArgs = {
        {"add_c", 0},         {"p_add_c", 1},       {"skills", 0},           {"cached_skills", 0},
        {"execute_skill", 4}, {"execute_all", 3},   {"p_execute_all", 4},    {"drop_cached_skill", 0},
        {"delete_skill", 0},  {"idle", 1},          {"wait_compile_cache", 0}, {"stop", 0}};
    const std::string where = o.script + ":" + std::to_string(no) + ": ";
    auto verb = kArgs.find(w[0]);
    if (verb == kArgs.end()) {
      return make_error(Code::InvalidArgument, where + "unknown command '" + w[0] +
                                                   "' (add_c, p_add_c, skills, cached_skills, execute_skill, execute_all, "
                                                   "p_execute_all, drop_cached_skill, delete_skill, idle, wait_compile_cache, stop)");
    }
    if (w.size() - 1 != verb->second) {
      return make_error(Code::InvalidArgument, where + "'" + w[0] + "' takes " + std::to_string(verb->second) +
                                                   " argument(s), got " + std::to_string(w.size() - 1));
    }
    std::string text;
    for (const auto& x : w) text += (text.empty() ? "" : " ") + x;
    lines.push_back({repeat, w, text, no});
  }

  RunLog log;
  log.header = machine_header();
  log.header["script"] = o.script;
  log.header["script_hash"] = file_hash(o.script);
  log.header["extensions"] = o.extensions;
  log.header["transport"] = o.transport == Transport::Grpc ? "grpc" : "msgpack";
  log.header["skill"] = o.skill_wasm;
  log.header["distinct"] = o.distinct;
  log.header["compile_cache"] = o.compile_cache_dir.empty() ? "off" : o.compile_cache_dir;
  log.header["engine"] = std::string("lazy compilation ") + (o.engine.lazy_compilation ? "on" : "off") + ", tier-up " +
                         (o.engine.tier_up ? "on" : "off") + ", guard regions " + std::string(to_string(o.engine.guard_regions));

  const auto t_start = Clock::now();
  Runner runner(o, std::move(wasm), progress);
  if (auto st = runner.start(); !st.ok()) return make_error(st.error().code, "starting the extensions: " + st.error().message);
  for (const auto& l : lines) {
    CommandRecord rec;
    rec.cmd = l.text;
    rec.repeat = l.repeat;
    const TreeMemory before = tree_memory(getpid());
    const auto t0 = Clock::now();
    for (int i = 0; i < l.repeat; ++i) {
      if (auto st = runner.run(l.words, rec); !st.ok()) {
        return make_error(st.error().code, o.script + ":" + std::to_string(l.number) + ": " + st.error().message);
      }
    }
    rec.took_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const TreeMemory after = tree_memory(getpid());
    rec.cpu_ms = after.cpu_ms - before.cpu_ms;
    rec.rss_diff_kb = after.rss_kb - before.rss_kb;
    rec.pss_diff_kb = after.pss_kb - before.pss_kb;
    log.max_rss_kb = std::max({log.max_rss_kb, before.rss_kb, after.rss_kb});
    log.max_pss_kb = std::max({log.max_pss_kb, before.pss_kb, after.pss_kb});
    progress << (l.repeat > 1 ? std::to_string(l.repeat) + " " : "") << l.text << ": " << static_cast<long>(rec.took_ms)
             << " ms, cpu " << static_cast<long>(rec.cpu_ms) << " ms, rss " << rec.rss_diff_kb << " KB, pss " << rec.pss_diff_kb << " KB, " << rec.ok << " ok, "
             << rec.failed << " failed" << (after.unreadable ? " (" + std::to_string(after.unreadable) + " processes unreadable)" : "")
             << "\n";
    log.commands.push_back(std::move(rec));
  }
  log.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_start).count();
  if (o.hold) {
    progress << "serving until SIGINT or SIGTERM\n";
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    progress << "signal " << sig << ": stopping\n";
  }
  return log;
}

}  // namespace airlock::ctl
