// The call table: every call in flight to an extension, its host-side deadline (a
// backstop to the extension's own) and its completion. Loop thread only, but for
// send_direct(): a call the calling thread writes to the socket itself, so that the loop
// thread is not woken to send it (one thread wake-up fewer on a call's critical path).
// Such a call waits in ExtensionState::arrivals until the loop adopts it into `pending`:
// when the answer arrives, before anything reads `pending`, or when the backstop timer
// fires ahead of the earliest deadline among them.
#include "host_impl.h"

#include <algorithm>
#include <optional>

#include "log_gate.h"

namespace airlock::detail {

namespace {
// The thread that leads an extension's socket (HostImpl::lead), and a chain request it
// took, to serve once it has stepped down.
struct LeadContext {
  const ExtensionState* e;
  std::optional<proto::Request> deferred;
};
thread_local LeadContext* tl_lead = nullptr;

int64_t ns_of(Deadline d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d.time_since_epoch()).count(); }
// Lowers `a` to `v` if `v` is smaller; true if it did.
bool lower(std::atomic<int64_t>& a, int64_t v) {
  int64_t cur = a.load();
  while (v < cur) {
    if (a.compare_exchange_weak(cur, v)) return true;
  }
  return false;
}
}  // namespace

bool HostImpl::send_direct(const std::shared_ptr<ExtensionState>& e, uint64_t id, const proto::Frame& frame,
                           std::chrono::milliseconds timeout, Done& done, ChainInfo& info, std::shared_ptr<OutputView>& view,
                           bool* leadable) {
  // Frames posted before this call (a load, a cancel) go first: then so does this one.
  if (!e->ready || e->stopping || e->posted_ops.load() != 0) return false;
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lk(e->direct_mu);
    // The limit is the loop's to report (send_call), with its message.
    if (!e->direct || e->counted_pending.load() >= opts.limits.max_calls_in_flight) return false;
    // Entered before the write: the answer may come back before this thread runs again.
    // Flagged before the write too: the loop looks at the flag without the lock.
    // Its caller may read the answer itself unless it asked for a view (a view's output
    // comes in shared memory, which the loop maps). A shared input may: its lease is
    // dropped wherever the call completes, as a caller drops its SharedBuffer anywhere.
    const bool leads = leadable && !view;
    e->arrivals.push_back(
        {id, PendingCall{std::move(done), std::move(view), nullptr, std::move(info), true, true, now, leads}, timeout});
    e->has_arrivals = true;
    if (!e->direct->try_send(frame)) {
      auto& a = e->arrivals.back();
      done = std::move(a.pc.done);
      view = std::move(a.pc.view);
      info = std::move(a.pc.info);
      e->arrivals.pop_back();
      e->has_arrivals = !e->arrivals.empty();
      return false;
    }
    e->counted_pending++;
    e->stats.started();  // before the loop can adopt it (it takes direct_mu) and finish it
    if (leadable) *leadable = leads;
  }
  const int64_t t = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  lower(backstop_period_, t);
  if (lower(backstop_at_, ns_of(now) + t)) post([this] { arm_backstop(); });
  return true;
}

void HostImpl::set_direct(ExtensionState& e, bool on) {
  std::lock_guard lk(e.direct_mu);
  e.direct = on && e.channel ? e.channel->direct_sender() : nullptr;
  e.reader = on && e.channel ? e.channel->direct_reader() : nullptr;
}

void HostImpl::lead(const std::shared_ptr<ExtensionState>& e, std::string_view skill, Deadline until,
                    const std::function<bool()>& finished) {
  // After a call of this skill sent other frames, its next 16 calls leave the reading to
  // the loop; then it is tried again (a skill may call services only sometimes).
  constexpr uint8_t kSkips = 16;
  std::shared_ptr<proto::DirectReader> reader;
  {
    std::lock_guard lk(e->direct_mu);
    if (!e->lead_skips.empty()) {
      if (auto it = e->lead_skips.find(std::string(skill)); it != e->lead_skips.end()) {
        if (--it->second > 0) return;
        e->lead_skips.erase(it);
      }
    }
    reader = e->reader;
  }
  if (!reader) return;
  LeadContext ctx{e.get(), std::nullopt};
  struct Restore {
    LeadContext* outer;
    ~Restore() { tl_lead = outer; }
  } restore{std::exchange(tl_lead, &ctx)};
  const auto stop = [&] { return ctx.deferred.has_value() || finished(); };
  bool handed = false;
  for (;;) {
    handed = reader->lead(stop, until);
    if (!ctx.deferred) break;
    // A chain request of the call we wait for: served on this thread, the socket back
    // with the loop meanwhile (the target may call this extension in turn).
    proto::Request req = std::move(*ctx.deferred);
    ctx.deferred.reset();
    serve_chain_here(e, std::move(req));
    if (handed || finished()) break;
  }
  if (handed && !finished()) {
    std::lock_guard lk(e->direct_mu);
    if (e->lead_skips.size() < 4096) e->lead_skips[std::string(skill)] = kSkips;  // bounded: names come from callers
  }
}

// [a leader] A skill's "@EXT/SKILL" request, made by a call whose caller leads: kept for
// the leader to serve once it has stepped down (serve_chain_here), so that the host's
// loop thread neither reads it nor relays the nested call. Anything else, or with
// anything in doubt, is the loop's (on_service_request, with its checks and errors).
bool HostImpl::defer_chain_request(ExtensionState& e, proto::Request& q) {
  LeadContext* c = tl_lead;
  if (!c || c->e != &e || c->deferred || !(q.id & kExtensionIdBit) || q.target.size() < 2 || q.target[0] != '@') {
    return false;
  }
  {
    std::lock_guard lk(e.direct_mu);
    if (std::none_of(e.arrivals.begin(), e.arrivals.end(), [&](const auto& a) { return a.id == q.parent_id && a.pc.waiter; })) {
      return false;
    }
  }
  c->deferred = std::move(q);
  return true;
}

bool HostImpl::take_direct_answer(ExtensionState& e, proto::Frame& f) {
  if (auto* q = std::get_if<proto::Request>(&f)) return defer_chain_request(e, *q);
  auto* r = std::get_if<proto::Response>(&f);
  if (!r || !r->shm_refs.empty()) return false;
  PendingCall pc;
  {
    std::lock_guard lk(e.direct_mu);
    auto it = std::find_if(e.arrivals.begin(), e.arrivals.end(), [&](const auto& a) { return a.id == r->id; });
    // Not among them: the loop adopted it (it has a timer, maybe open services), or it
    // is no call of ours: the loop decides what that answer means.
    if (it == e.arrivals.end() || !it->pc.waiter) return false;
    pc = std::move(it->pc);
    e.arrivals.erase(it);
    e.has_arrivals = !e.arrivals.empty();
  }
  e.counted_pending -= pc.counts;
  // Out of the list now: it must complete here, whatever fails (an allocation).
  CallResult res = make_error(Code::ResourceExhausted, e.opts.name + ": no memory for its answer");
  try {
    const bool failed = r->code != Code::Ok;
    res = proto::result_of(std::move(*r));
    if (failed && !res.ok()) res = named_error(e, res.take_error());
  } catch (...) {
  }
  e.stats.finished(std::chrono::steady_clock::now() - pc.started, res);
  pc.done(std::move(res));
  return true;
}

// Starts a pending call's deadline timer: it cancels the call at the extension and fails
// it with Timeout.
static LoopTimer* watch_deadline(HostImpl* host, const std::shared_ptr<ExtensionState>& e, uint64_t id,
                                 std::chrono::milliseconds timeout, std::chrono::milliseconds left) {
  std::weak_ptr<ExtensionState> weak = e;
  return LoopTimer::start(host->loop(), static_cast<uint64_t>(std::max<int64_t>(left.count(), 0)), [host, weak, id, timeout] {
    auto s = weak.lock();
    if (!s || !s->pending.count(id)) return;
    if (s->channel) (void)s->channel->send(proto::Cancel{id});
    s->unanswered_ended++;
    host->complete_pending(*s, id, make_error(Code::Timeout, s->label() + ": no answer within " +
                                                                 std::to_string(timeout.count()) + " ms"));
  });
}

void HostImpl::adopt_arrivals(ExtensionState& e) {
  if (!e.has_arrivals.load()) return;
  std::vector<ExtensionState::Arrival> got;
  {
    std::lock_guard lk(e.direct_mu);
    got.swap(e.arrivals);
    e.has_arrivals = false;
  }
  const auto now = std::chrono::steady_clock::now();
  auto self = e.shared_from_this();
  for (auto& a : got) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(a.pc.info.deadline - now);
    a.pc.timer = watch_deadline(this, self, a.id, a.timeout, left);
    e.pending.emplace(a.id, std::move(a.pc));
  }
}

void HostImpl::arm_backstop() {
  const int64_t at = backstop_at_.load();
  if (at == INT64_MAX || closing_) return;
  const int64_t left = at - ns_of(std::chrono::steady_clock::now());
  uv_timer_start(&backstop_, [](uv_timer_t* t) { static_cast<HostImpl*>(t->data)->on_backstop(); },
                 static_cast<uint64_t>(std::max<int64_t>(left, 0) / 1'000'000), 0);
}

void HostImpl::on_backstop() {
  backstop_at_ = INT64_MAX;
  const int64_t period = backstop_period_.exchange(INT64_MAX);
  std::vector<std::shared_ptr<ExtensionState>> all;
  {
    std::lock_guard lk(ext_mu_);
    for (const auto& [name, e] : extensions_) all.push_back(e);
  }
  for (auto& e : all) adopt_arrivals(*e);
  // Calls keep coming (some were sent since it last fired): fire again one of their
  // timeouts from now, so that those sent meanwhile with that timeout need not wake the
  // loop. Idle: it stays off, and the next call sent directly arms it.
  if (period != INT64_MAX) {
    lower(backstop_at_, ns_of(std::chrono::steady_clock::now()) + period);
    arm_backstop();
  }
}

void HostImpl::send_call(const std::shared_ptr<ExtensionState>& e, uint64_t id, proto::Frame frame,
                         std::chrono::milliseconds timeout, Done done, ChainInfo info, bool counts,
                         std::shared_ptr<OutputView> view) {
  const bool is_call = std::holds_alternative<proto::Request>(frame);
  // A call refused here counts as a finished call (its error by code) in the stats.
  auto refuse = [&](Error err) {
    if (is_call) e->stats.finished({}, CallResult(err), /*was_started=*/false);
    done(std::move(err));
  };
  // It hung up and its exit is not reaped yet (soon: one that hangs up and lives on is
  // killed after a second): the call waits for the exit, so that it fails with the
  // reason ("was killed by the sandbox: ..."), as a call in flight then does.
  const bool exiting = !e->channel && e->proc.pidfd >= 0 && !e->stopping;
  if (!e->channel && !exiting) {
    std::string why = e->stopping ? "is stopped" : "is not running" + (e->down_reason.empty() ? "" : " (" + e->down_reason + ")");
    return refuse(make_error(e->stopping ? Code::Unavailable : Code::ExtensionCrashed, e->label() + " " + why));
  }
  if (counts && e->counted_pending >= opts.limits.max_calls_in_flight) {
    return refuse(make_error(Code::ResourceExhausted, e->label() + ": " + std::to_string(e->counted_pending) +
                                                        " calls in flight already (HostLimits::max_calls_in_flight)"));
  }
  Status sent = exiting ? ok_status() : e->channel->send(frame);
  // A write that finds the peer gone closes the channel inside send(): its close callback
  // (on_channel_closed) has taken e->channel away by the time send() returns. The call
  // then stays pending until the exit is reaped (at most ~1 s: a process that hung up
  // is killed), so that it fails with the reason ("was killed by the sandbox: ...").
  e->queued_bytes = e->channel ? e->channel->queued_bytes() : 0;
  if (sent.ok() && !e->channel && e->proc.pidfd < 0) {  // reaped meanwhile: nothing will end the call
    return refuse(make_error(Code::ExtensionCrashed, e->label() + " hung up"));
  }
  if (!sent.ok()) {
    const bool full = sent.error().code == Code::ResourceExhausted && e->queued_bytes > 0;
    return refuse(make_error(sent.error().code, e->label() + ": " + sent.error().message +
                                                  (full ? " (HostLimits::max_queued_bytes)" : "")));
  }
  if (info.deadline == Deadline{}) info.deadline = std::chrono::steady_clock::now() + timeout;
  PendingCall pc{std::move(done), std::move(view), nullptr, std::move(info), counts, is_call, std::chrono::steady_clock::now()};
  if (is_call) e->stats.started();
  pc.timer = watch_deadline(this, e, id, timeout, timeout);
  e->counted_pending += counts;
  e->pending.emplace(id, std::move(pc));
}

void HostImpl::complete_pending(ExtensionState& e, uint64_t id, CallResult r) {
  auto it = e.pending.find(id);
  if (it == e.pending.end()) return;  // answered, timed out or cancelled already
  PendingCall pc = std::move(it->second);
  e.pending.erase(it);
  e.counted_pending -= pc.counts;
  LoopTimer::stop(pc.timer);
  end_services(e, id);
  if (pc.is_call) e.stats.finished(std::chrono::steady_clock::now() - pc.started, r);
  pc.done(std::move(r));
  // Its caller may be reading the socket for it (lead): it looks at its call again.
  if (pc.waiter && e.channel) {
    if (auto reader = e.channel->direct_reader()) reader->interrupt();
  }
}

void HostImpl::cancel_call(const std::shared_ptr<ExtensionState>& e, uint64_t id) {
  adopt_arrivals(*e);
  if (!e->pending.count(id)) return;
  if (e->channel) (void)e->channel->send(proto::Cancel{id});
  e->unanswered_ended++;
  complete_pending(*e, id, make_error(Code::Cancelled, e->label() + ": call cancelled"));
}

void HostImpl::fail_pending(ExtensionState& e, const Error& err) {
  adopt_arrivals(e);
  std::vector<uint64_t> ids;
  ids.reserve(e.pending.size());
  for (auto& [id, pc] : e.pending) ids.push_back(id);
  for (auto id : ids) complete_pending(e, id, err);
}

}  // namespace airlock::detail
