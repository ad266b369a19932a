// The loop thread, spawn(), and the public Host / Extension facade.
#include <spdlog/spdlog.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <optional>

#include "host_impl.h"
#include "compile_cache.h"
#include "metrics.h"

namespace airlock {

std::string_view to_string(Transport t) { return t == Transport::Grpc ? "grpc" : "msgpack"; }
std::string_view to_string(GuardRegions g) {
  return g == GuardRegions::On ? "on" : g == GuardRegions::Off ? "off" : "auto";
}

namespace detail {

std::string ExtensionState::label() const {
  return "extension '" + opts.name + "'" + (pid ? " (pid " + std::to_string(pid.load()) + ")" : "");
}

HostImpl::HostImpl(HostOptions o) : opts(std::move(o)) {
  auto bin = find_extension_binary(opts.extension_binary);
  if (bin.ok()) {
    binary = bin.value();
  } else {
    binary_error = bin.error();
  }
  // The extension accepts only spdlog's names (anything else would fail every spawn
  // with a bare "exited with status 2"): say so here, once, for every spawn.
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn", "warning", "error", "err", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), opts.log_level) == std::end(kLevels)) {
    binary.clear();
    binary_error = make_error(Code::InvalidArgument, "HostOptions::log_level '" + opts.log_level +
                                                         "' is not a level (trace, debug, info, warn, error, critical, off)");
  }
  if (!opts.compile_cache_dir.empty() && !binary.empty()) {
    compile_cache = std::make_unique<CompileCache>(opts.compile_cache_dir, binary, opts.sandbox, opts.compile_cache_build_timeout);
  }
  uv_loop_init(&loop_);
  if (!binary.empty() && opts.use_zygote) {
    zygote_ = std::make_unique<Zygote>(&loop_, binary, [this](pid_t pid) { return is_extension_pid(pid); });
  }
  uv_async_init(&loop_, &wake_, [](uv_async_t* a) { static_cast<HostImpl*>(a->data)->drain_posted(); });
  wake_.data = this;
  uv_timer_init(&loop_, &backstop_);
  backstop_.data = this;
  std::promise<void> started;
  thread_ = std::thread([this, &started] {
    // A write to a socket whose extension just died must be EPIPE, not SIGPIPE (which
    // would kill the application). SIGPIPE goes to the writing thread, so blocking it
    // here is enough, and the application's own disposition is left alone.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    loop_thread_id_ = std::this_thread::get_id();
    started.set_value();
    uv_run(&loop_, UV_RUN_DEFAULT);
  });
  started.get_future().wait();
}

HostImpl::~HostImpl() {
  stop_all(0ms);
  {
    std::lock_guard lk(reader_mu_);
    for (auto& [t, done] : cache_readers_) t.join();  // each posts once, to a loop still running
    cache_readers_.clear();
  }
  workers_.reset();  // after stop_all: blocked handlers' nested calls have failed by now
  post([this] {
    closing_ = true;
    zygote_.reset();  // kills and reaps it; closes its handles on this loop
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&backstop_), nullptr);
  });
  thread_.join();
  {
    // The last close callbacks run here, on the caller's thread: as on the loop thread,
    // a dead peer's socket must not raise SIGPIPE. A SIGPIPE left pending is taken
    // before the caller's mask comes back.
    sigset_t pipe, old;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    uv_run(&loop_, UV_RUN_DEFAULT);
    const timespec now{0, 0};
    while (sigtimedwait(&pipe, nullptr, &now) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  uv_loop_close(&loop_);
}

void HostImpl::post(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back(std::move(fn));
  }
  uv_async_send(&wake_);
}

void HostImpl::post_for(const std::shared_ptr<ExtensionState>& e, std::function<void()> fn) {
  e->posted_ops++;
  post([e, fn = std::move(fn)] {
    fn();
    e->posted_ops--;
  });
}

void HostImpl::drain_posted() {
  std::deque<std::function<void()>> q;
  {
    std::lock_guard lk(mu_);
    q.swap(queue_);
  }
  for (auto& fn : q) fn();
}

bool HostImpl::is_extension_pid(pid_t pid) const {
  std::lock_guard lk(ext_mu_);
  for (const auto& [n, e] : extensions_) {
    if (e->pid == pid) return true;
  }
  return false;
}

// ---- spawn ------------------------------------------------------------------------

Result<Extension> HostImpl::spawn(ExtensionOptions o) {
  if (o.name.empty()) return make_error(Code::InvalidArgument, "extension name is empty");
  if (binary.empty()) return binary_error;
  if (on_loop_thread()) return make_error(Code::InvalidArgument, "spawn() must not be called from a call callback");
  auto e = std::make_shared<ExtensionState>(this, std::move(o), opts.limits);
  e->engine = resolved_engine(*e);  // once: every restart and every cache key use this
  e->compile_cache = compile_cache && e->engine.tier_up && !e->engine.lazy_compilation ? compile_cache.get() : nullptr;
  {
    std::lock_guard lk(ext_mu_);
    if (extensions_.count(e->opts.name)) {
      return make_error(Code::InvalidArgument, "an extension named '" + e->opts.name + "' already exists");
    }
    extensions_[e->opts.name] = e;
  }
  auto ready = std::make_shared<std::promise<Status>>();
  post([this, e, ready] {
    e->on_ready = [ready](Status st) { ready->set_value(std::move(st)); };
    start_process(e);
  });
  auto fut = ready->get_future();
  Status st = fut.wait_for(e->opts.start_timeout) == std::future_status::ready
                  ? fut.get()
                  : Status(make_error(Code::Unavailable, "extension '" + e->opts.name + "' did not report ready within " +
                                                            std::to_string(e->opts.start_timeout.count()) + " ms"));
  if (!st.ok()) {
    std::promise<void> gone;
    post([this, e, &gone] {
      e->on_ready = nullptr;
      stop_extension(e, 0ms, [&gone] { gone.set_value(); });
    });
    gone.get_future().wait();
    std::lock_guard lk(ext_mu_);
    extensions_.erase(e->opts.name);
    return st.take_error();
  }
  return Extension(e);
}

std::vector<Extension> HostImpl::all_extensions() const {
  std::lock_guard lk(ext_mu_);
  std::vector<Extension> v;
  for (const auto& [name, e] : extensions_) v.push_back(Extension(e));
  return v;
}

std::optional<Extension> HostImpl::find(std::string_view name) const {
  std::lock_guard lk(ext_mu_);
  auto it = extensions_.find(name);
  if (it == extensions_.end()) return std::nullopt;
  return Extension(it->second);
}

}  // namespace detail

// ---- public API ------------------------------------------------------------------------

using detail::ExtensionState;

Host::Host(HostOptions options) : impl_(std::make_unique<detail::HostImpl>(std::move(options))) {}
void Host::register_service(const std::string& name, ServiceHandler handler, ServiceOptions options) {
  impl_->register_service(name, std::move(handler), nullptr, std::move(options));
}
void Host::register_blocking_service(const std::string& name, BlockingServiceHandler handler, ServiceOptions options) {
  impl_->register_service(name, nullptr, std::move(handler), std::move(options));
}
Host::~Host() {
  std::lock_guard lk(impl_->metrics_mu);
  impl_->metrics.reset();  // first: a scrape reads the extensions being torn down below
}
Result<Extension> Host::spawn(ExtensionOptions options) { return impl_->spawn(std::move(options)); }
std::optional<Extension> Host::find(std::string_view name) const { return impl_->find(name); }
void Host::stop(std::chrono::milliseconds grace) { impl_->stop_all(grace); }
const HostOptions& Host::options() const { return impl_->opts; }

std::span<const uint8_t> OutputView::data() const {
  if (!s_) return {};
  return {reinterpret_cast<const uint8_t*>(s_->view.bytes.data()), s_->view.bytes.size()};
}
size_t OutputView::size() const { return s_ ? s_->view.bytes.size() : 0; }

const std::string& Extension::name() const { return s_->opts.name; }
int Extension::pid() const { return s_->pid; }
bool Extension::alive() const { return s_->ready && !s_->stopping; }
std::string Extension::sandbox_report() const { return s_->sandbox_report(); }

bool Extension::on_io_thread() const { return s_->host->on_loop_thread(); }

namespace {
// RSS, PSS and USS of a process from /proc/PID/smaps_rollup (kB lines); zeros if unreadable.
void read_memory(int pid, ExtensionStats& st) {
  if (pid <= 0) return;
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  uint64_t priv = 0;
  for (std::string line; std::getline(f, line);) {
    auto kb = [&](const char* key) -> std::optional<uint64_t> {
      const size_t n = std::strlen(key);
      if (line.compare(0, n, key) != 0) return std::nullopt;
      return std::strtoull(line.c_str() + n, nullptr, 10) * 1024;
    };
    if (auto v = kb("Rss:")) st.rss_bytes = *v;
    else if (auto v = kb("Pss:")) st.pss_bytes = *v;
    else if (auto v = kb("Private_Clean:")) priv += *v;
    else if (auto v = kb("Private_Dirty:")) priv += *v;
  }
  st.uss_bytes = priv;
}
}  // namespace

ExtensionStats Extension::stats() const {
  auto snap = s_->stats.snapshot();
  ExtensionStats st;
  st.name = s_->opts.name;
  st.pid = pid();
  st.alive = alive();
  st.calls = snap.calls;
  st.ok = snap.ok;
  st.errors = std::move(snap.errors);
  st.in_flight = snap.in_flight;
  st.restarts = snap.restarts;
  st.latency_p50_us = snap.p50_us;
  st.latency_p99_us = snap.p99_us;
  st.latency_sum_us = snap.sum_us;
  st.skills = skills();
  st.sandbox = sandbox_report();
  read_memory(st.pid, st);
  return st;
}

std::vector<Extension> Host::extensions() const { return impl_->all_extensions(); }

std::string Host::metrics_text() const {
  std::vector<ExtensionStats> all;
  for (const auto& e : extensions()) all.push_back(e.stats());
  return detail::metrics_text(all);
}

CompileCacheStats Host::compile_cache_stats() const {
  return impl_->compile_cache ? impl_->compile_cache->stats() : CompileCacheStats{};
}
void Host::wait_for_compile_cache() {
  if (impl_->compile_cache) impl_->compile_cache->wait_idle();
}

Result<int> Host::serve_metrics(const std::string& address) {
  std::lock_guard lk(impl_->metrics_mu);
  if (impl_->metrics) return make_error(Code::InvalidArgument, "metrics are already served on port " + std::to_string(impl_->metrics->port()));
  auto* impl = impl_.get();
  auto e = detail::MetricsEndpoint::start(address, [impl] {
    std::vector<ExtensionStats> all;
    for (const auto& x : impl->all_extensions()) all.push_back(x.stats());
    return all;
  });
  if (!e.ok()) return e.take_error();
  impl_->metrics = std::move(e.value());
  return impl_->metrics->port();
}

namespace detail {
std::string ExtensionState::sandbox_report() const {
  std::lock_guard lk(report_mu_);
  return sandbox_report_;
}
void ExtensionState::set_sandbox_report(std::string r) {
  std::lock_guard lk(report_mu_);
  sandbox_report_ = std::move(r);
}
}  // namespace detail

namespace {
// Runs a control request and waits for its answer on the calling thread.
CallResult control(const std::shared_ptr<ExtensionState>& s, std::function<proto::Frame(uint64_t)> make) {
  auto* host = s->host;
  if (host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "blocking Extension methods must not be called from a call callback");
  }
  auto p = std::make_shared<std::promise<CallResult>>();
  uint64_t id = host->next_id();
  host->post_for(s, [s, host, id, make = std::move(make), p] {
    host->send_call(s, id, make(id), 60s, [p](CallResult r) { p->set_value(std::move(r)); }, {}, false);
  });
  return p->get_future().get();
}
}  // namespace

// The host reads the file and sends its bytes: an extension sees none of the host's
// files (its sandbox has an empty root).
Status Extension::load_skill(const std::string& skill, const std::string& wasm_path, std::optional<SkillLimits> limits) {
  std::ifstream f(wasm_path, std::ios::binary);
  if (!f) return make_error(Code::NotFound, s_->label() + ": skill '" + skill + "': cannot read '" + wasm_path + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  if (f.bad()) return make_error(Code::NotFound, s_->label() + ": skill '" + skill + "': error reading '" + wasm_path + "'");
  auto shared = std::make_shared<const std::string>(std::move(bytes));
  return load(skill, shared, *shared, "", limits);
}

Status Extension::load_skill_bytes(const std::string& skill, std::span<const uint8_t> wasm, std::optional<SkillLimits> limits) {
  auto shared = std::make_shared<const std::string>(reinterpret_cast<const char*>(wasm.data()), wasm.size());
  return load(skill, shared, *shared, "", limits);
}

// The skill is remembered (for reloading after a restart) only once it has loaded.
Status Extension::load(const std::string& skill, std::shared_ptr<const void> keep, std::string_view wasm, std::string path,
                       std::optional<SkillLimits> limits) {
  detail::LoadedSkill ls{std::move(keep), wasm, std::move(path),
                         limits ? *limits : (s_->opts.limits ? *s_->opts.limits : s_->host->opts.default_limits), {}};
  auto s = s_;
  if (s->host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "blocking Extension methods must not be called from a call callback");
  }
  // The compile cache, on this (the caller's) thread: it reads a file.
  auto* cache = s->compile_cache;
  const EngineOptions& engine = s->engine;
  std::string cache_key;
  std::optional<shm::Buffer> code;        // the entry, in a sealed memfd
  std::optional<proto::ShmRef> code_ref;  // ... lent to the extension for this load
  if (cache && ls.path.empty() && !ls.wasm.empty()) {
    cache_key = cache->key(ls.wasm, ls.limits.max_memory_mb, engine);
    ls.cache_key = cache_key;
    code = cache->lookup(cache_key);
    // Waits for room on the side channel as long as the load itself may take: the
    // extension reads its announcements as it reaches the loads queued before this one.
    if (code) code_ref = s->lend_code(*code, 60s);
  }
  auto r = control(s_, [s, skill, ls, code_ref](uint64_t id) {
    proto::LoadSkill l;
    l.id = id;
    l.name = skill;
    l.wasm = ls.wasm;
    if (code_ref) l.compiled.push_back(*code_ref);
    l.path = ls.path;
    l.max_memory_pages = ls.limits.max_memory_mb * 16;
    l.timeout_ms = ls.limits.timeout_ms;
    s->skills[skill] = ls;  // [loop] before a restart can happen; dropped again on failure below
    s->loads_in_flight++;
    return proto::Frame(std::move(l));
  });
  if (code_ref) s->code_returned(code_ref->buffer_id);
  s->host->post([s] { s->loads_in_flight--; });  // the health check waits for loads
  if (!r.ok()) {
    s->host->post([s, skill] { s->skills.erase(skill); });
    return r.take_error();
  }
  if (!cache_key.empty()) {
    // The extension's word decides nothing but whether to build: an entry it says it
    // refused is deleted and built again by a process of our own.
    if (!code) {
      cache->build(cache_key, std::string(ls.wasm), ls.limits.max_memory_mb, engine);
    } else if (!code_ref || *r == "cache: missing") {
      // Not sent (no side channel), or it did not reach this process (a restart between
      // the announcement and the frame): the entry is left as it is.
    } else if (*r == "cache: hit") {
      cache->hit();
    } else {
      cache->rejected(cache_key, std::string(ls.wasm), ls.limits.max_memory_mb, engine);
    }
  }
  return ok_status();
}

Status Extension::unload_skill(const std::string& skill) {
  auto s = s_;
  auto r = control(s_, [s, skill](uint64_t id) {
    s->skills.erase(skill);
    return proto::Frame(proto::UnloadSkill{id, skill});
  });
  if (!r.ok()) return r.take_error();
  return ok_status();
}

std::vector<std::string> Extension::skills() const {
  auto s = s_;
  auto names = [s] {  // [loop]
    std::vector<std::string> v;
    for (auto& [n, x] : s->skills) v.push_back(n);
    return v;
  };
  if (s->host->on_loop_thread()) return names();
  auto p = std::make_shared<std::promise<std::vector<std::string>>>();
  s->host->post([p, names] { p->set_value(names()); });
  return p->get_future().get();
}

CallId Extension::call_async(std::string_view skill, const Payload& input, const CallOptions& opts,
                             std::function<void(CallResult)> done) {
  return start_call(skill, input, opts, std::move(done), nullptr);
}

CallId Extension::start_call(std::string_view skill, const Payload& input, const CallOptions& opts,
                             std::function<void(CallResult)> done, bool* leads) {
  auto* host = s_->host;
  uint64_t id = host->next_id();
  auto timeout = opts.timeout.count() > 0 ? opts.timeout : host->opts.default_call_timeout;
  proto::Request req;
  req.id = id;
  req.timeout_us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(timeout).count());
  req.target = std::string(skill);
  req.method = opts.func;
  const size_t auto_min = host->opts.auto_share_min_bytes;
  if (!input.shared() && auto_min && input.bytes().size() >= auto_min) {
    auto buf = allocate(input.bytes().size());
    if (buf.ok()) {
      std::memcpy(buf->data().data(), input.bytes().data(), input.bytes().size());
      return start_call(skill, Payload(*buf), opts, std::move(done), nullptr);
    }
  }
  if (auto& view = opts.output_view) {
    if (view->busy_.exchange(true)) {
      host->post([done = std::move(done)]() mutable {
        done(make_error(Code::InvalidArgument, "CallOptions::output_view is in use by another call in flight"));
      });
      return id;
    }
    view->reset();  // its earlier output goes back now, not left to look like this call's
    done = [done = std::move(done), view](CallResult r) {
      view->busy_ = false;
      done(std::move(r));
    };
  }
  if (input.shared()) {
    auto ref = share(input);
    if (!ref.ok()) {
      host->post([done = std::move(done), e = ref.take_error()]() mutable { done(std::move(e)); });
      return id;
    }
    req.shm_refs.push_back(ref.value());
    // The buffer stays leased (not reused, not dropped) until the call has answered.
    done = [done = std::move(done), keep = input.buffer()](CallResult r) { done(std::move(r)); };
  } else {
    // What the loop last saw waiting may be stale: an answer its caller read itself (a
    // leader) does not pass the loop, which refreshes the figure on every frame. Then the
    // channel says what waits now (a 50 MB call after a 50 MB call was refused so).
    size_t queued = s_->queued_bytes.load();
    if (queued > 0) {
      std::lock_guard lk(s_->direct_mu);
      if (s_->direct) queued = s_->direct->queued_bytes();
    }
    const size_t waiting = s_->posted_bytes.load() + queued;
    const size_t limit = host->opts.limits.max_queued_bytes;
    if (waiting > 0 && waiting + input.bytes().size() > limit) {
      auto err = make_error(Code::ResourceExhausted, s_->label() + ": " + std::to_string(waiting) +
                                                         " bytes already wait for it to read them (HostLimits::max_queued_bytes " +
                                                         std::to_string(limit) + ")");
      host->post([done = std::move(done), err = std::move(err)]() mutable { done(std::move(err)); });
      return id;
    }
    req.payload = std::string(input.bytes());
  }
  auto s = s_;
  const size_t posted = req.payload.size();
  detail::ChainInfo info{1, s->opts.name + "/" + std::string(skill), std::chrono::steady_clock::now() + timeout};
  proto::Frame frame = std::move(req);
  std::shared_ptr<OutputView> view = opts.output_view;
  // The calling thread writes the request itself when it can (calls.cc): the loop
  // thread is not woken to send it.
  if (!host->on_loop_thread() && host->send_direct(s, id, frame, timeout, done, info, view, leads)) return id;
  s->posted_bytes += posted;
  host->post_for(s, [s, host, id, frame = std::move(frame), timeout, done = std::move(done), info = std::move(info), posted,
                     view = std::move(view)]() mutable {
    s->posted_bytes -= posted;
    host->send_call(s, id, std::move(frame), timeout, std::move(done), std::move(info), true, std::move(view));
  });
  return id;
}

std::future<CallResult> Extension::call_async(std::string_view skill, const Payload& input, const CallOptions& opts) {
  auto p = std::make_shared<std::promise<CallResult>>();
  auto f = p->get_future();
  call_async(skill, input, opts, [p](CallResult r) { p->set_value(std::move(r)); });
  return f;
}

CallResult Extension::call(std::string_view skill, const Payload& input, const CallOptions& opts) {
  auto* host = s_->host;
  if (host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "Extension::call must not be called from a call callback");
  }
  struct Wait {
    std::promise<CallResult> p;
    std::atomic<bool> done{false};
  };
  auto w = std::make_shared<Wait>();
  auto f = w->p.get_future();
  const auto timeout = opts.timeout.count() > 0 ? opts.timeout : host->opts.default_call_timeout;
  const auto until = std::chrono::steady_clock::now() + timeout;
  bool leads = false;
  start_call(skill, input, opts, [w](CallResult r) {
    w->done = true;  // first: a leader that sees it stops reading and takes the value
    w->p.set_value(std::move(r));
  }, &leads);
  // Sent from this thread: wait by reading the answer off the socket here (calls.cc),
  // unless another thread already does; either way the value is in the future.
  if (leads) host->lead(s_, skill, until, [&w] { return w->done.load(); });
  return f.get();
}

void Extension::cancel(CallId id) {
  auto s = s_;
  s->host->post_for(s, [s, id] { s->host->cancel_call(s, id); });
}

void Extension::stop(std::chrono::milliseconds grace) {
  auto s = s_;
  if (s->host->on_loop_thread()) {
    s->host->stop_extension(s, grace, [] {});
    return;
  }
  auto p = std::make_shared<std::promise<void>>();
  s->host->post_for(s, [s, grace, p] { s->host->stop_extension(s, grace, [p] { p->set_value(); }); });
  p->get_future().wait();
}

}  // namespace airlock
