#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <future>

#include "host_impl.h"

namespace airlock {

std::string_view to_string(Transport t) { return t == Transport::Grpc ? "grpc" : "msgpack"; }

namespace detail {
namespace {

std::string ext_label(const ExtensionState& e) {
  return "extension '" + e.opts.name + "'" + (e.pid ? " (pid " + std::to_string(e.pid.load()) + ")" : "");
}

proto::Encoding encoding_of(Transport t) { return t == Transport::Grpc ? proto::Encoding::Grpc : proto::Encoding::Msgpack; }

}  // namespace

HostImpl::HostImpl(HostOptions o) : opts(std::move(o)) {
  auto bin = find_extension_binary(opts.extension_binary);
  if (bin.ok()) {
    binary = bin.value();
    if (opts.use_zygote) zygote_ = std::make_unique<Zygote>(binary);
  } else {
    binary_error = bin.error();
  }
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &wake_, [](uv_async_t* a) { static_cast<HostImpl*>(a->data)->drain_posted(); });
  wake_.data = this;
  std::promise<void> started;
  thread_ = std::thread([this, &started] {
    loop_thread_id_ = std::this_thread::get_id();
    started.set_value();
    uv_run(&loop_, UV_RUN_DEFAULT);
  });
  started.get_future().wait();
}

HostImpl::~HostImpl() {
  stop_all(0ms);
  workers_.reset();  // after stop_all: blocked handlers' nested calls have failed by now
  post([this] {
    closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
  });
  thread_.join();
  zygote_.reset();
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void HostImpl::post(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back(std::move(fn));
  }
  uv_async_send(&wake_);
}

void HostImpl::drain_posted() {
  std::deque<std::function<void()>> q;
  {
    std::lock_guard lk(mu_);
    q.swap(queue_);
  }
  for (auto& fn : q) fn();
}

// ---- spawn ------------------------------------------------------------------------

Result<Extension> HostImpl::spawn(ExtensionOptions o) {
  if (o.name.empty()) return make_error(Code::InvalidArgument, "extension name is empty");
  if (binary.empty()) return binary_error;
  if (on_loop_thread()) return make_error(Code::InvalidArgument, "spawn() must not be called from a call callback");
  auto e = std::make_shared<ExtensionState>(this, std::move(o));
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

std::optional<Extension> HostImpl::find(std::string_view name) const {
  std::lock_guard lk(ext_mu_);
  auto it = extensions_.find(name);
  if (it == extensions_.end()) return std::nullopt;
  return Extension(it->second);
}

void HostImpl::start_process(const std::shared_ptr<ExtensionState>& e) {
  const auto& lim = e->opts.limits ? *e->opts.limits : opts.default_limits;
  std::vector<std::string> argv = {binary,
                                   "--log-level", opts.log_level,
                                   "serve",
                                   "--fd", "3",
                                   "--name", e->opts.name,
                                   "--transport", std::string(to_string(opts.transport)),
                                   "--parent-pid", std::to_string(getpid()),
                                   "--max-frame-bytes", std::to_string(opts.max_frame_bytes),
                                   "--max-memory-mb", std::to_string(lim.max_memory_mb),
                                   "--timeout-ms", std::to_string(lim.timeout_ms)};
  auto side = shm::FdChannel::pair();
  if (!side.ok()) {
    if (e->on_ready) std::exchange(e->on_ready, nullptr)(side.take_error());
    return;
  }
  argv.insert(argv.end(), {"--side-fd", "4"});
  const int child_side = side->second.fd();
  Result<ChildProcess> child = make_error(Code::Unavailable, "zygote disabled");
  if (zygote_) {
    child = zygote_->spawn(argv, e->opts.env, child_side);
    if (!child.ok()) spdlog::warn("zygote: {}; starting '{}' with exec instead", child.error().message, e->opts.name);
  }
  if (!child.ok()) child = spawn_child(argv, e->opts.env, child_side);
  {
    std::lock_guard lk(e->shm_mu);
    e->side = std::move(side->first);  // same object, new socket: the exporter keeps pointing at it
    if (!e->exporter) e->exporter = std::make_unique<shm::Exporter>(e->side);
  }
  if (!child.ok()) {
    if (e->on_ready) std::exchange(e->on_ready, nullptr)(child.take_error());
    return;
  }
  e->proc = child.value();
  e->pid = e->proc.pid;
  e->channel = proto::make_channel(encoding_of(opts.transport), proto::Role::Host, &loop_, e->proc.host_fd,
                                   opts.max_frame_bytes);
  std::weak_ptr<ExtensionState> weak = e;
  e->channel->start({[this, weak](proto::Frame&& f) {
                       if (auto s = weak.lock()) on_frame(s, std::move(f));
                     },
                     [this, weak](const Error& err) {
                       if (auto s = weak.lock()) on_channel_closed(s, err);
                     }});
  e->exit_watch = new uv_poll_t;
  uv_poll_init(&loop_, e->exit_watch, e->proc.pidfd);
  e->exit_watch->data = new std::weak_ptr<ExtensionState>(e);
  uv_poll_start(e->exit_watch, UV_READABLE, [](uv_poll_t* p, int, int) {
    auto* w = static_cast<std::weak_ptr<ExtensionState>*>(p->data);
    if (auto s = w->lock()) s->host->on_process_exit(s);
  });
}

// ---- frames ------------------------------------------------------------------------

void HostImpl::on_frame(const std::shared_ptr<ExtensionState>& e, proto::Frame&& f) {
  if (auto* r = std::get_if<proto::Response>(&f)) {
    uint64_t id = r->id;
    complete_pending(*e, id, r->code == Code::Ok && !r->shm_refs.empty() ? take_shared_output(*e, *r)
                                                                        : proto::result_of(std::move(*r)));
  } else if (auto* l = std::get_if<proto::Log>(&f)) {
    spdlog::log(static_cast<spdlog::level::level_enum>(std::min<int>(l->level, 6)), "[ext {}] {}", e->opts.name,
                l->message);
  } else if (std::holds_alternative<proto::Ready>(f)) {
    bool restart = e->restarts > 0 && !e->on_ready;
    auto finish = [e](Status st) {
      if (st.ok()) e->ready = true;
      if (e->on_ready) std::exchange(e->on_ready, nullptr)(std::move(st));
    };
    if (restart || !e->skills.empty()) {
      reload_skills(e, finish);
    } else {
      finish(ok_status());
    }
  } else if (auto* req = std::get_if<proto::Request>(&f)) {
    on_service_request(e, std::move(*req));  // a skill calling a host service
  }
}

void HostImpl::complete_pending(ExtensionState& e, uint64_t id, CallResult r) {
  auto it = e.pending.find(id);
  if (it == e.pending.end()) return;  // answered, timed out or cancelled already
  PendingCall pc = std::move(it->second);
  e.pending.erase(it);
  LoopTimer::stop(pc.timer);
  end_services(e, id);
  pc.done(std::move(r));
}

// A large output the extension returned in shared memory: copy it out, give it back.
CallResult HostImpl::take_shared_output(ExtensionState& e, const proto::Response& r) {
  std::lock_guard lk(e.shm_mu);
  if (r.shm_refs.size() != 1 || !r.payload.empty() || !e.side.valid()) {
    return make_error(Code::Internal, ext_label(e) + " sent a malformed shared output");
  }
  (void)e.inbox.pump(e.side);  // its fd arrived before this frame
  auto v = e.inbox.resolve(r.shm_refs[0]);
  if (!v.ok()) return make_error(Code::Internal, ext_label(e) + " sent a bad shared output: " + v.error().message);
  std::string out(reinterpret_cast<const char*>(v->bytes.data()), v->bytes.size());
  (void)e.side.give_back(r.shm_refs[0].buffer_id);
  return out;
}

void HostImpl::fail_pending(ExtensionState& e, const Error& err) {
  std::vector<uint64_t> ids;
  for (auto& [id, pc] : e.pending) ids.push_back(id);
  for (auto id : ids) complete_pending(e, id, err);
}

void HostImpl::on_channel_closed(const std::shared_ptr<ExtensionState>& e, const Error& err) {
  // EOF usually means the process is exiting: its exit watcher reports that. Anything
  // else (a malformed or oversized frame) means we can no longer trust the peer.
  if (err.code != Code::Unavailable) {
    spdlog::error("{}: disconnected: {}", ext_label(*e), err.to_string());
    e->disconnect_reason = err.message;
    // Calls made before the exit is reaped must see why, not a bare "channel closed".
    e->down_reason = "was disconnected (" + err.message + ")";
    fail_pending(*e, make_error(Code::Unavailable, ext_label(*e) + " was disconnected: " + err.message));
    e->channel.reset();  // closed already; channels may be destroyed inside on_closed
    if (e->proc.pid > 0) kill(e->proc.pid, SIGKILL);
  }
  e->ready = false;
}

void HostImpl::on_process_exit(const std::shared_ptr<ExtensionState>& e) {
  int st = try_reap(e->proc.pid);
  if (st < 0) return;  // spurious wake-up
  std::string how = describe_exit(st);
  if (!e->disconnect_reason.empty()) how += " after being disconnected (" + std::exchange(e->disconnect_reason, "") + ")";
  bool expected = e->stopping.load();
  if (!expected) spdlog::warn("{} {}", ext_label(*e), how);
  Error err = expected ? make_error(Code::Cancelled, ext_label(*e) + " was stopped")
                       : make_error(Code::ExtensionCrashed, ext_label(*e) + " " + how);
  e->ready = false;
  if (e->channel) e->channel->close();
  e->channel.reset();
  uv_poll_stop(e->exit_watch);
  uv_close(reinterpret_cast<uv_handle_t*>(e->exit_watch), [](uv_handle_t* h) {
    delete static_cast<std::weak_ptr<ExtensionState>*>(h->data);
    delete reinterpret_cast<uv_poll_t*>(h);
  });
  e->exit_watch = nullptr;
  close(e->proc.pidfd);
  e->proc = {};
  {
    std::lock_guard lk(e->shm_mu);
    if (e->exporter) e->exporter->forget_all();  // the next process is sent every buffer afresh
    e->side.close();
    e->inbox.clear();
  }
  e->pid = 0;
  LoopTimer::stop(e->kill_timer);
  fail_pending(*e, err);
  if (e->on_ready) std::exchange(e->on_ready, nullptr)(make_error(Code::Unavailable, ext_label(*e) + " " + how + " during start"));
  e->down_reason = how;
  for (auto& w : std::exchange(e->on_exit, {})) w();
  if (!expected) schedule_restart(e);
}

void HostImpl::schedule_restart(const std::shared_ptr<ExtensionState>& e) {
  const auto& p = e->opts.restart;
  if (p.mode != RestartPolicy::Mode::OnFailure || e->restarts >= p.max_restarts) return;
  e->backoff = e->restarts == 0 ? p.initial_backoff : std::min(p.max_backoff, e->backoff * 2);
  e->restarts++;
  spdlog::info("restarting extension '{}' in {} ms (restart {} of {})", e->opts.name, e->backoff.count(), e->restarts,
               p.max_restarts);
  e->restart_timer = LoopTimer::start(&loop_, static_cast<uint64_t>(e->backoff.count()), [this, e] {
    LoopTimer::stop(e->restart_timer);
    if (e->stopping) return;
    start_process(e);
  });
}

void HostImpl::reload_skills(const std::shared_ptr<ExtensionState>& e, std::function<void(Status)> done) {
  auto left = std::make_shared<size_t>(e->skills.size());
  auto first_error = std::make_shared<Status>(ok_status());
  if (*left == 0) return done(ok_status());
  for (const auto& [name, s] : e->skills) {
    proto::LoadSkill l;
    l.id = next_id();
    l.name = name;
    l.wasm = s.wasm;
    l.path = s.path;
    l.max_memory_pages = s.limits.max_memory_mb * 16;
    l.timeout_ms = s.limits.timeout_ms;
    send_call(e, l.id, std::move(l), 30s, [left, first_error, done, name](CallResult r) {
      if (!r.ok() && first_error->ok()) *first_error = make_error(r.error().code, "reloading skill '" + name + "': " + r.error().message);
      if (--*left == 0) done(*first_error);
    });
  }
}

// ---- calls ---------------------------------------------------------------------------

void HostImpl::send_call(const std::shared_ptr<ExtensionState>& e, uint64_t id, proto::Frame frame,
                         std::chrono::milliseconds timeout, Done done, ChainInfo info) {
  if (!e->channel) {
    std::string why = e->stopping ? "is stopped" : "is not running" + (e->down_reason.empty() ? "" : " (" + e->down_reason + ")");
    return done(make_error(e->stopping ? Code::Unavailable : Code::ExtensionCrashed, ext_label(*e) + " " + why));
  }
  if (auto st = e->channel->send(frame); !st.ok()) {
    return done(make_error(st.error().code, ext_label(*e) + ": " + st.error().message));
  }
  if (info.deadline == Deadline{}) info.deadline = std::chrono::steady_clock::now() + timeout;
  PendingCall pc{std::move(done), nullptr, std::move(info)};
  std::weak_ptr<ExtensionState> weak = e;
  pc.timer = LoopTimer::start(&loop_, static_cast<uint64_t>(timeout.count()), [this, weak, id, timeout] {
    auto s = weak.lock();
    if (!s || !s->pending.count(id)) return;
    if (s->channel) (void)s->channel->send(proto::Cancel{id});
    complete_pending(*s, id, make_error(Code::Timeout, ext_label(*s) + ": no answer within " +
                                                           std::to_string(timeout.count()) + " ms"));
  });
  e->pending.emplace(id, std::move(pc));
}

void HostImpl::cancel_call(const std::shared_ptr<ExtensionState>& e, uint64_t id) {
  if (!e->pending.count(id)) return;
  if (e->channel) (void)e->channel->send(proto::Cancel{id});
  complete_pending(*e, id, make_error(Code::Cancelled, ext_label(*e) + ": call cancelled"));
}

// ---- stopping ------------------------------------------------------------------------

void HostImpl::stop_extension(const std::shared_ptr<ExtensionState>& e, std::chrono::milliseconds grace,
                              std::function<void()> done) {
  e->stopping = true;
  LoopTimer::stop(e->restart_timer);
  if (e->proc.pid <= 0) return done();
  e->on_exit.push_back(std::move(done));
  if (e->kill_timer) return;  // already stopping
  if (e->channel) (void)e->channel->send(proto::Shutdown{static_cast<uint32_t>(grace.count())});
  pid_t pid = e->proc.pid;
  // Grace, then SIGTERM, then SIGKILL 500 ms later. on_process_exit stops the timers.
  e->kill_timer = LoopTimer::start(&loop_, static_cast<uint64_t>(grace.count()) + 100, [this, e, pid] {
    LoopTimer::stop(e->kill_timer);
    if (e->proc.pid != pid) return;
    kill(pid, SIGTERM);
    e->kill_timer = LoopTimer::start(&loop_, 500, [e, pid] {
      LoopTimer::stop(e->kill_timer);
      if (e->proc.pid == pid) kill(pid, SIGKILL);
    });
  });
}

void HostImpl::stop_all(std::chrono::milliseconds grace) {
  std::vector<std::shared_ptr<ExtensionState>> all;
  {
    std::lock_guard lk(ext_mu_);
    for (auto& [n, e] : extensions_) all.push_back(e);
  }
  if (all.empty()) return;
  if (on_loop_thread()) {  // from a callback: start the stops, cannot wait for them here
    for (auto& e : all) stop_extension(e, grace, [] {});
    return;
  }
  auto left = std::make_shared<std::atomic<size_t>>(all.size());
  auto gone = std::make_shared<std::promise<void>>();
  post([this, all, grace, left, gone] {
    for (auto& e : all) {
      stop_extension(e, grace, [left, gone] {
        if (--*left == 0) gone->set_value();
      });
    }
  });
  gone->get_future().wait();
}

}  // namespace detail

// ---- public API ------------------------------------------------------------------------

using detail::ExtensionState;

Host::Host(HostOptions options) : impl_(std::make_unique<detail::HostImpl>(std::move(options))) {}
void Host::register_service(const std::string& name, ServiceHandler handler) {
  impl_->register_service(name, std::move(handler), nullptr);
}
void Host::register_blocking_service(const std::string& name, BlockingServiceHandler handler) {
  impl_->register_service(name, nullptr, std::move(handler));
}
Host::~Host() = default;
Result<Extension> Host::spawn(ExtensionOptions options) { return impl_->spawn(std::move(options)); }
std::optional<Extension> Host::find(std::string_view name) const { return impl_->find(name); }
void Host::stop(std::chrono::milliseconds grace) { impl_->stop_all(grace); }
const HostOptions& Host::options() const { return impl_->opts; }

const std::string& Extension::name() const { return s_->opts.name; }
int Extension::pid() const { return s_->pid; }
bool Extension::alive() const { return s_->ready && !s_->stopping; }

namespace {
// Runs a control request and waits for its answer on the calling thread.
CallResult control(const std::shared_ptr<ExtensionState>& s, std::function<proto::Frame(uint64_t)> make) {
  auto* host = s->host;
  if (host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "blocking Extension methods must not be called from a call callback");
  }
  auto p = std::make_shared<std::promise<CallResult>>();
  uint64_t id = host->next_id();
  host->post([s, host, id, make = std::move(make), p] {
    host->send_call(s, id, make(id), 60s, [p](CallResult r) { p->set_value(std::move(r)); });
  });
  return p->get_future().get();
}
}  // namespace

Status Extension::load_skill(const std::string& skill, const std::string& wasm_path, std::optional<SkillLimits> limits) {
  std::string abs = wasm_path;
  if (!abs.empty() && abs[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd)) abs = std::string(cwd) + "/" + abs;
  }
  if (access(abs.c_str(), R_OK) != 0) {
    return make_error(Code::NotFound, "skill '" + skill + "': cannot read '" + wasm_path + "'");
  }
  return load(skill, "", abs, limits);
}

Status Extension::load_skill_bytes(const std::string& skill, std::span<const uint8_t> wasm, std::optional<SkillLimits> limits) {
  return load(skill, std::string(reinterpret_cast<const char*>(wasm.data()), wasm.size()), "", limits);
}

// The skill is remembered (for reloading after a restart) only once it has loaded.
Status Extension::load(const std::string& skill, std::string wasm, std::string path, std::optional<SkillLimits> limits) {
  detail::LoadedSkill ls{std::move(wasm), std::move(path),
                         limits ? *limits : (s_->opts.limits ? *s_->opts.limits : s_->host->opts.default_limits)};
  auto s = s_;
  auto r = control(s_, [s, skill, ls](uint64_t id) {
    proto::LoadSkill l;
    l.id = id;
    l.name = skill;
    l.wasm = ls.wasm;
    l.path = ls.path;
    l.max_memory_pages = ls.limits.max_memory_mb * 16;
    l.timeout_ms = ls.limits.timeout_ms;
    s->skills[skill] = ls;  // [loop] before a restart can happen; dropped again on failure below
    return proto::Frame(std::move(l));
  });
  if (!r.ok()) {
    s->host->post([s, skill] { s->skills.erase(skill); });
    return r.take_error();
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
      return call_async(skill, Payload(*buf), opts, std::move(done));
    }
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
    req.payload = std::string(input.bytes());
  }
  auto s = s_;
  detail::ChainInfo info{1, s->opts.name + "/" + std::string(skill), std::chrono::steady_clock::now() + timeout};
  host->post([s, host, id, req = std::move(req), timeout, done = std::move(done), info = std::move(info)]() mutable {
    host->send_call(s, id, std::move(req), timeout, std::move(done), std::move(info));
  });
  return id;
}

std::future<CallResult> Extension::call_async(std::string_view skill, const Payload& input, const CallOptions& opts) {
  auto p = std::make_shared<std::promise<CallResult>>();
  auto f = p->get_future();
  call_async(skill, input, opts, [p](CallResult r) { p->set_value(std::move(r)); });
  return f;
}

Result<proto::ShmRef> Extension::share(const Payload& in) {
  auto& b = *in.buffer().s_;
  if (b.owner && b.owner != s_.get()) {
    return make_error(Code::InvalidArgument, "shared buffer belongs to another extension (allocate it from '" +
                                                 s_->opts.name + "', or host-wide with Host::allocate)");
  }
  if (in.offset() > b.size || in.length() > b.size - in.offset()) {
    return make_error(Code::InvalidArgument, "slice [" + std::to_string(in.offset()) + ", +" + std::to_string(in.length()) +
                                                 ") is outside the " + std::to_string(b.size) + "-byte buffer");
  }
  if (!b.owner) {
    std::lock_guard lk(b.mu);
    bool known = std::any_of(b.shared_with.begin(), b.shared_with.end(), [&](auto& w) { return w.lock() == s_; });
    if (!known) b.shared_with.push_back(s_);
  }
  std::lock_guard lk(s_->shm_mu);
  if (!s_->exporter || !s_->side.valid()) {
    return make_error(Code::Unavailable, "extension '" + s_->opts.name + "' is not running");
  }
  // Sends the fd over the side channel the first time this process sees the buffer;
  // always before the frame that names it.
  return s_->exporter->share(b.buffer(), in.offset(), in.length());
}

namespace detail {
BufferState::~BufferState() {
  if (!own) return;  // pooled: the pool's on_free hook tells the extension
  for (auto& w : shared_with) {
    if (auto e = w.lock()) {
      std::lock_guard lk(e->shm_mu);
      if (e->exporter && e->side.valid()) (void)e->exporter->drop(own->id());
    }
  }
}
}  // namespace detail

Result<SharedBuffer> Host::allocate(size_t size) {
  if (size == 0) return make_error(Code::InvalidArgument, "cannot allocate an empty shared buffer");
  auto b = shm::Buffer::create(size, "airlock-host");
  if (!b.ok()) return b.take_error();
  auto st = std::make_shared<detail::BufferState>();
  st->own.emplace(std::move(b.value()));
  st->own->allow_any_peer();
  st->size = size;
  return SharedBuffer(std::move(st));
}

Result<SharedBuffer> Extension::allocate(size_t size) {
  if (size == 0) return make_error(Code::InvalidArgument, "cannot allocate an empty shared buffer");
  std::shared_ptr<shm::Pool> pool;
  {
    std::lock_guard lk(s_->shm_mu);
    if (!s_->pool) {
      s_->pool = std::make_shared<shm::Pool>();
      std::weak_ptr<ExtensionState> w = s_;
      s_->pool->set_on_free([w](uint64_t id) {  // a freed buffer: the extension may unmap it
        if (auto e = w.lock()) {
          std::lock_guard l(e->shm_mu);
          if (e->exporter && e->side.valid()) (void)e->exporter->drop(id);
        }
      });
    }
    pool = s_->pool;
  }
  auto lease = pool->acquire(size);
  if (!lease.ok()) return lease.take_error();
  auto st = std::make_shared<detail::BufferState>();
  st->lease = std::move(lease.value());
  st->size = size;
  st->owner = s_.get();
  return SharedBuffer(std::move(st));
}

std::span<uint8_t> SharedBuffer::data() {
  auto w = s_->buffer().writable();
  return {reinterpret_cast<uint8_t*>(w.data()), s_->size};
}
size_t SharedBuffer::size() const { return s_ ? s_->size : 0; }

CallResult Extension::call(std::string_view skill, const Payload& input, const CallOptions& opts) {
  if (s_->host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "Extension::call must not be called from a call callback");
  }
  return call_async(skill, input, opts).get();
}

void Extension::cancel(CallId id) {
  auto s = s_;
  s->host->post([s, id] { s->host->cancel_call(s, id); });
}

void Extension::stop(std::chrono::milliseconds grace) {
  auto s = s_;
  if (s->host->on_loop_thread()) {
    s->host->stop_extension(s, grace, [] {});
    return;
  }
  auto p = std::make_shared<std::promise<void>>();
  s->host->post([s, grace, p] { s->host->stop_extension(s, grace, [p] { p->set_value(); }); });
  p->get_future().wait();
}

}  // namespace airlock
