// Processes: starting an extension (forked by the zygote, else exec'ed), noticing its
// exit through its pidfd, restarting it per its policy, stopping it, and pinging it so
// that a wedged or stopped process is noticed too. Signals go only through pidfds of
// processes this host started (process.h). Loop thread only.
#include <spdlog/spdlog.h>
#include <malloc.h>
#include <unistd.h>

#include <seccomp.h>

#include <csignal>
#include <cstdlib>
#include <future>

#include "airlock/guard_regions.h"
#include "compile_cache.h"
#include "host_impl.h"

namespace airlock::detail {

namespace {
proto::Encoding encoding_of(Transport t) { return t == Transport::Grpc ? proto::Encoding::Grpc : proto::Encoding::Msgpack; }
}  // namespace

// The extension's engine options with GuardRegions::Auto decided here, by the host, once
// per extension (at spawn), so that its processes and its compile-cache producers can
// never disagree about it: code compiled for guard regions has no bounds checks.
EngineOptions HostImpl::resolved_engine(const ExtensionState& e) const {
  EngineOptions eng = e.opts.engine ? *e.opts.engine : opts.engine;
  if (eng.guard_regions == GuardRegions::Auto) eng.guard_regions = guard_regions_fit() ? GuardRegions::On : GuardRegions::Off;
  return eng;
}

void HostImpl::start_process(const std::shared_ptr<ExtensionState>& e) {
  const uint64_t attempt = ++e->attempt;
  const auto& lim = e->opts.limits ? *e->opts.limits : opts.default_limits;
  std::vector<std::string> argv = {binary,
                                   "--log-level", opts.log_level,
                                   "serve",
                                   "--fd", "3",
                                   "--side-fd", "4",
                                   "--name", e->opts.name,
                                   "--transport", std::string(to_string(opts.transport)),
                                   "--parent-pid", std::to_string(getpid()),
                                   "--max-frame-bytes", std::to_string(opts.max_frame_bytes),
                                   "--max-memory-mb", std::to_string(lim.max_memory_mb),
                                   "--timeout-ms", std::to_string(lim.timeout_ms),
                                   "--max-total-memory-mb", std::to_string(e->opts.max_memory_mb),
                                   "--spin-us", std::to_string(opts.spin.count()),
                                   "--sandbox", opts.sandbox.enabled ? "on" : "off"};
  if (opts.sandbox.uid >= 0 && opts.sandbox.gid >= 0) {
    argv.insert(argv.end(), {"--sandbox-user", std::to_string(opts.sandbox.uid) + ":" + std::to_string(opts.sandbox.gid)});
  }
  for (const auto& p : e->opts.readable) argv.insert(argv.end(), {"--readable", p});
  const EngineOptions& eng = e->engine;
  argv.insert(argv.end(), {"--lazy-compilation", eng.lazy_compilation ? "on" : "off", "--tier-up",
                           eng.tier_up ? "on" : "off", "--guard-regions", std::string(to_string(eng.guard_regions)),
                           "--cacheable-code", e->compile_cache ? "on" : "off"});
  auto side = shm::FdChannel::pair();
  if (!side.ok()) {
    if (e->on_ready) std::exchange(e->on_ready, nullptr)(side.take_error());
    return;
  }
  const int child_side = side->second.fd();
  {
    std::lock_guard lk(e->shm_mu);
    e->side = std::move(side->first);  // same object, new socket: the exporter keeps pointing at it
    e->side_gen++;
    // Sends never wait: an extension that stopped reading fails the call, not the caller's thread.
    if (!e->exporter) e->exporter = std::make_unique<shm::Exporter>(e->side, /*timeout_ms=*/0);
    shm::RegistryOptions ro;
    ro.max_bytes = opts.limits.max_shared_bytes;
    e->inbox = std::make_unique<shm::Registry>(ro);
  }
  e->ring = nullptr;
  if (opts.ring_bytes > 0 && opts.transport == Transport::Msgpack) {
    // Offered before the child exists: the first message it reads, whether it is exec'ed
    // or forked by the zygote. A new pair per process: nothing of a dead one's ring is
    // read again.
    auto pair = proto::RingPair::create(opts.ring_bytes, "airlock-ring");
    Status offered = pair.ok() ? e->side.offer_ring(pair->fd(), opts.ring_bytes, /*timeout_ms=*/0) : Status(pair.error());
    if (!offered.ok()) {
      if (e->on_ready) std::exchange(e->on_ready, nullptr)(make_error(offered.error().code, "shared-memory ring: " + offered.error().message));
      return;
    }
    e->ring = proto::RingLink::creator(std::move(*pair));
    argv.insert(argv.end(), {"--ring-bytes", std::to_string(opts.ring_bytes)});
  }
  auto peer_side = std::make_shared<shm::FdChannel>(std::move(side->second));  // until the child has it
  std::weak_ptr<ExtensionState> weak = e;
  if (zygote_ && zygote_->spawn(argv, e->opts.env, child_side, [this, weak, attempt, argv, peer_side](Result<ChildProcess> c) {
        auto s = weak.lock();
        const bool wanted = s && s->attempt == attempt && !s->stopping && !closing_;
        if (c.ok() && !wanted) {
          ChildProcess orphan = c.value();
          return kill_and_reap(orphan);
        }
        if (!wanted) return;
        if (c.ok()) return attach_process(s, c.value());
        spdlog::debug("{}: {}; starting it with exec", s->label(), c.error().message);
        start_with_exec(s, argv, peer_side->fd());
      })) {
    return;
  }
  start_with_exec(e, argv, child_side);
}

void HostImpl::start_with_exec(const std::shared_ptr<ExtensionState>& e, const std::vector<std::string>& argv,
                               int child_side) {
  auto child = spawn_extension(argv, e->opts.env, child_side);
  if (!child.ok()) {
    if (e->on_ready) std::exchange(e->on_ready, nullptr)(child.take_error());
    return;
  }
  attach_process(e, child.value());
}

void HostImpl::attach_process(const std::shared_ptr<ExtensionState>& e, ChildProcess child) {
  e->proc = child;
  e->pid = child.pid;
  e->got_ready = false;
  e->unanswered_ended = 0;
  e->health_outstanding = false;
  e->queued_bytes = 0;
  e->channel = proto::make_channel(encoding_of(opts.transport), proto::Role::Host, &loop_, child.host_fd,
                                   opts.max_frame_bytes, opts.limits.max_queued_bytes,
                                   static_cast<uint32_t>(opts.spin.count()), std::move(e->ring));
  std::weak_ptr<ExtensionState> weak = e;
  e->channel->start({[this, weak](proto::Frame&& f) {
                       auto s = weak.lock();
                       if (!s) return;
                       // Nothing a peer sends may end the loop thread: a failure handling
                       // its frame (out of memory, say) cuts that extension off instead.
                       try {
                         on_frame(s, std::move(f));
                       } catch (const std::exception& ex) {
                         cut_off(s, std::string("the host failed to handle its frame: ") + ex.what());
                       }
                     },
                     [this, weak](const Error& err) {
                       if (auto s = weak.lock()) on_channel_closed(s, err);
                     },
                     // A waiting caller's answer, read off the loop thread (calls.cc).
                     // Not through `weak`: that thread must never hold the last reference
                     // (its destructor closes the channel, which joins that thread). The
                     // state outlives the channel, which runs this only while open.
                     [this, raw = e.get()](proto::Frame& f) { return take_direct_answer(*raw, f); }});
  e->exit_watch = new uv_poll_t;
  uv_poll_init(&loop_, e->exit_watch, child.pidfd);
  e->exit_watch->data = new std::weak_ptr<ExtensionState>(e);
  uv_poll_start(e->exit_watch, UV_READABLE, [](uv_poll_t* p, int, int) {
    auto* w = static_cast<std::weak_ptr<ExtensionState>*>(p->data);
    if (auto s = w->lock()) s->host->on_process_exit(s);
  });
}

void HostImpl::cut_off(const std::shared_ptr<ExtensionState>& e, const std::string& why) {
  if (!e->channel && e->proc.pidfd < 0) return;  // already cut off or gone
  spdlog::error("{}: cut off: {}", e->label(), why);
  e->disconnect_reason = why;
  // Calls made before the exit is reaped must see why, not a bare "channel closed".
  e->down_reason = "was cut off (" + why + ")";
  e->ready = false;
  set_direct(*e, false);
  if (e->channel) {
    auto ch = std::move(e->channel);
    ch->close();  // may run inside this channel's on_frame: it is destroyed after the callback returns
    post([ch = std::shared_ptr<proto::Channel>(std::move(ch))] {});
  }
  fail_pending(*e, make_error(Code::Unavailable, e->label() + " was cut off: " + why));
  signal_child(e->proc.pidfd, SIGKILL);
}

namespace {
// "execve" for a syscall number of this machine's architecture, else "number 1234".
std::string syscall_name(uint64_t nr) {
  if (nr <= 0xffff) {
    if (char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(nr))) {
      std::string s = name;
      free(name);
      return s;
    }
  }
  return "number " + std::to_string(nr);
}
}  // namespace

// The kernel says the process died of SIGSYS: its seccomp filter killed it. Its SIGSYS
// handler named the call on the side channel (a kLastWords message) just before; the
// name is believed only because the kernel confirmed the death, and only names it.
std::string HostImpl::sandbox_kill_text(ExtensionState& e) {
  std::lock_guard lk(e.shm_mu);
  std::optional<uint64_t> nr;
  if (e.inbox && e.side.valid()) {
    (void)e.inbox->pump(e.side);  // reads what is left; a bad message ends the read
    nr = e.inbox->last_words();
  }
  return nr ? "was killed by the sandbox: syscall " + syscall_name(*nr)
            : "was killed by the sandbox (signal SIGSYS; the call was not named)";
}

void HostImpl::on_process_exit(const std::shared_ptr<ExtensionState>& e) {
  std::string how;
  int killed_by = 0;
  if (!try_reap(e->proc.pidfd, &how, &killed_by)) return;  // spurious wake-up
  if (killed_by == SIGSYS) how = sandbox_kill_text(*e);
  if (!e->disconnect_reason.empty()) how += " after being cut off (" + std::exchange(e->disconnect_reason, "") + ")";
  bool expected = e->stopping.load();
  if (!expected) spdlog::warn("{} {}", e->label(), how);
  Error err = expected ? make_error(Code::Cancelled, e->label() + " was stopped")
                       : make_error(Code::ExtensionCrashed, e->label() + " " + how);
  e->ready = false;
  set_direct(*e, false);
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
    if (e->inbox) e->inbox->clear();
  }
  e->pid = 0;
  e->queued_bytes = 0;
  LoopTimer::stop(e->kill_timer);
  LoopTimer::stop(e->health_timer);
  fail_pending(*e, err);
  if (e->on_ready) std::exchange(e->on_ready, nullptr)(make_error(Code::Unavailable, e->label() + " " + how + " during start"));
  e->down_reason = how;
  for (auto& w : std::exchange(e->on_exit, {})) w();
  if (!expected) schedule_restart(e);
  // What its calls, queues and outputs held is free now; glibc keeps freed memory in its
  // arenas (a stopped extension's 1,000 refused 512 KiB calls: +15-30 MB RSS for good
  // without this, +1 MB with it).
  malloc_trim(0);
}

void HostImpl::schedule_restart(const std::shared_ptr<ExtensionState>& e) {
  const auto& p = e->opts.restart;
  if (p.mode != RestartPolicy::Mode::OnFailure || e->restarts >= p.max_restarts) return;
  e->backoff = e->restarts == 0 ? p.initial_backoff : std::min(p.max_backoff, e->backoff * 2);
  e->restarts++;
  e->stats.restarted();
  spdlog::info("restarting extension '{}' in {} ms (restart {} of {})", e->opts.name, e->backoff.count(), e->restarts,
               p.max_restarts);
  e->restart_timer = LoopTimer::start(&loop_, static_cast<uint64_t>(e->backoff.count()), [this, e] {
    LoopTimer::stop(e->restart_timer);
    if (e->stopping) return;
    start_process(e);
  });
}

// Ready arrived (once per process): reload what a restarted process lost, then report.
void HostImpl::reload_skills(const std::shared_ptr<ExtensionState>& e, std::function<void(Status)> done) {
  auto* cache = e->compile_cache;
  std::vector<std::pair<std::string, std::string>> wanted;  // skill, cache key
  if (cache) {
    for (const auto& [name, s] : e->skills) {
      if (!s.cache_key.empty()) wanted.emplace_back(name, s.cache_key);
    }
  }
  if (wanted.empty()) return send_reloads(e, {}, std::move(done));
  // The entries are read on a thread of their own (files, checksums: ~0.3 ms each), and
  // the loads sent from the loop when they are in. A process that is gone by then (or
  // replaced) drops them: its exit has answered `done`'s waiter already.
  const uint64_t attempt = e->attempt;
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::lock_guard lk(reader_mu_);
  for (auto it = cache_readers_.begin(); it != cache_readers_.end();) {
    if (it->second->load()) {
      it->first.join();
      it = cache_readers_.erase(it);
    } else {
      ++it;
    }
  }
  // Not `e` itself: this thread must never hold the last reference (its destructor closes
  // a channel, which only the loop thread may do); `done` is moved on to the loop.
  std::weak_ptr<ExtensionState> weak = e;
  std::thread t([this, weak, cache, wanted = std::move(wanted), attempt, finished, done = std::move(done)]() mutable {
    std::map<std::string, std::shared_ptr<shm::Buffer>> compiled;
    for (const auto& [name, key] : wanted) {
      if (auto code = cache->lookup(key)) compiled[name] = std::make_shared<shm::Buffer>(std::move(*code));
    }
    post([this, weak, attempt, compiled = std::move(compiled), done = std::move(done)]() mutable {
      auto e = weak.lock();
      if (!e || e->attempt != attempt || !e->channel || !e->got_ready) return;
      send_reloads(e, std::move(compiled), std::move(done));
    });
    *finished = true;
  });
  cache_readers_.emplace_back(std::move(t), finished);
}

void HostImpl::send_reloads(const std::shared_ptr<ExtensionState>& e, std::map<std::string, std::shared_ptr<shm::Buffer>> compiled,
                            std::function<void(Status)> done) {
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
    // Lent without waiting (this is the loop thread): one that does not fit on the side
    // channel now is compiled instead.
    auto code = compiled.find(name);
    std::optional<proto::ShmRef> ref;
    if (code != compiled.end()) ref = e->lend_code(*code->second, 0ms);
    if (ref) l.compiled.push_back(*ref);
    e->loads_in_flight++;
    send_call(e, l.id, std::move(l), 30s, [e, left, first_error, done, name, ref](CallResult r) {
      e->loads_in_flight--;
      if (ref) e->code_returned(ref->buffer_id);
      if (!r.ok() && first_error->ok()) *first_error = make_error(r.error().code, "reloading skill '" + name + "': " + r.error().message);
      // A hit counts as one; an entry refused is left for the next load_skill of that
      // module to rebuild.
      if (ref && r.ok() && *r == "cache: hit" && e->compile_cache) e->compile_cache->hit();
      if (--*left == 0) done(*first_error);
    }, {}, false);
  }
}

// ---- liveness ------------------------------------------------------------------------

void HostImpl::schedule_health(const std::shared_ptr<ExtensionState>& e) {
  if (opts.health_interval.count() <= 0 || e->health_timer || !e->channel) return;
  std::weak_ptr<ExtensionState> weak = e;
  e->health_timer = LoopTimer::start(&loop_, static_cast<uint64_t>(opts.health_interval.count()), [this, weak] {
    auto s = weak.lock();
    if (!s) return;
    LoopTimer::stop(s->health_timer);
    if (uint64_t n = s->log_gate.take_dropped()) report_dropped_logs(*s, n);
    if (!s->health_outstanding) send_health(s);
    schedule_health(s);
  });
}

void HostImpl::send_health(const std::shared_ptr<ExtensionState>& e) {
  // A CPU-bound call holds the extension's loop for up to its skill's time limit, and a
  // load compiles on that loop: the deadline allows for both.
  uint32_t longest = 0;
  for (const auto& [n, s] : e->skills) longest = std::max(longest, s.limits.timeout_ms);
  const auto allowed = opts.health_timeout + std::chrono::milliseconds(longest);
  const uint64_t id = next_id();
  e->health_outstanding = true;
  std::weak_ptr<ExtensionState> weak = e;
  send_call(e, id, proto::Health{id}, allowed, [this, weak, allowed](CallResult r) {
    auto s = weak.lock();
    if (!s) return;
    s->health_outstanding = false;
    if (r.ok() || r.error().code != Code::Timeout || s->stopping) return;
    if (s->loads_in_flight > 0) return;  // busy compiling (its own timeout bounds that); ask again
    cut_off(s, "did not answer a health check within " + std::to_string(allowed.count()) + " ms");
  }, {}, false);
}

// ---- stopping ------------------------------------------------------------------------

void HostImpl::stop_extension(const std::shared_ptr<ExtensionState>& e, std::chrono::milliseconds grace,
                              std::function<void()> done) {
  e->stopping = true;
  set_direct(*e, false);
  LoopTimer::stop(e->restart_timer);
  LoopTimer::stop(e->health_timer);
  if (e->proc.pidfd < 0) return done();
  e->on_exit.push_back(std::move(done));
  if (e->kill_timer) return;  // already stopping
  if (e->channel) (void)e->channel->send(proto::Shutdown{static_cast<uint32_t>(grace.count())});
  const int pidfd = e->proc.pidfd;
  // Grace, then SIGTERM, then SIGKILL 500 ms later. on_process_exit stops the timers.
  e->kill_timer = LoopTimer::start(&loop_, static_cast<uint64_t>(grace.count()) + 100, [this, e, pidfd] {
    LoopTimer::stop(e->kill_timer);
    if (e->proc.pidfd != pidfd) return;
    signal_child(pidfd, SIGTERM);
    e->kill_timer = LoopTimer::start(&loop_, 500, [e, pidfd] {
      LoopTimer::stop(e->kill_timer);
      if (e->proc.pidfd == pidfd) signal_child(pidfd, SIGKILL);
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

}  // namespace airlock::detail
