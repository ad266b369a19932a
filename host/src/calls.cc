// The call table: every call in flight to an extension, its host-side deadline (a
// backstop to the extension's own) and its completion. Loop thread only.
#include "host_impl.h"

namespace airlock::detail {

void HostImpl::send_call(const std::shared_ptr<ExtensionState>& e, uint64_t id, proto::Frame frame,
                         std::chrono::milliseconds timeout, Done done, ChainInfo info, bool counts,
                         std::shared_ptr<OutputView> view) {
  const bool is_call = std::holds_alternative<proto::Request>(frame);
  // A call refused here counts as a finished call (its error by code) in the stats.
  auto refuse = [&](Error err) {
    if (is_call) e->stats.finished({}, CallResult(err), /*was_started=*/false);
    done(std::move(err));
  };
  if (!e->channel) {
    std::string why = e->stopping ? "is stopped" : "is not running" + (e->down_reason.empty() ? "" : " (" + e->down_reason + ")");
    return refuse(make_error(e->stopping ? Code::Unavailable : Code::ExtensionCrashed, e->label() + " " + why));
  }
  if (counts && e->counted_pending >= opts.limits.max_calls_in_flight) {
    return refuse(make_error(Code::ResourceExhausted, e->label() + ": " + std::to_string(e->counted_pending) +
                                                        " calls in flight already (HostLimits::max_calls_in_flight)"));
  }
  Status sent = e->channel->send(frame);
  // A write that finds the peer gone closes the channel inside send(): its close callback
  // (on_channel_closed) has taken e->channel away by the time send() returns. The call
  // then stays pending until the exit is reaped (at most ~1 s: a process that hung up
  // is killed), so that it fails with the reason ("was killed by the sandbox: ...").
  e->queued_bytes = e->channel ? e->channel->queued_bytes() : 0;
  if (sent.ok() && !e->channel && e->proc.pidfd < 0) {
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
  std::weak_ptr<ExtensionState> weak = e;
  pc.timer = LoopTimer::start(&loop_, static_cast<uint64_t>(timeout.count()), [this, weak, id, timeout] {
    auto s = weak.lock();
    if (!s || !s->pending.count(id)) return;
    if (s->channel) (void)s->channel->send(proto::Cancel{id});
    s->unanswered_ended++;
    complete_pending(*s, id, make_error(Code::Timeout, s->label() + ": no answer within " +
                                                           std::to_string(timeout.count()) + " ms"));
  });
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
}

void HostImpl::cancel_call(const std::shared_ptr<ExtensionState>& e, uint64_t id) {
  if (!e->pending.count(id)) return;
  if (e->channel) (void)e->channel->send(proto::Cancel{id});
  e->unanswered_ended++;
  complete_pending(*e, id, make_error(Code::Cancelled, e->label() + ": call cancelled"));
}

void HostImpl::fail_pending(ExtensionState& e, const Error& err) {
  std::vector<uint64_t> ids;
  ids.reserve(e.pending.size());
  for (auto& [id, pc] : e.pending) ids.push_back(id);
  for (auto id : ids) complete_pending(e, id, err);
}

}  // namespace airlock::detail
