// Every frame an extension sends, checked against the state it may arrive in. An
// extension may be fully compromised, so nothing it reports is taken on trust: Ready
// comes once per process, a Response must answer a request we sent (a late answer to a
// call we gave up on is dropped), a service Request carries an id of the extension's
// range, shared outputs must fit what the host can afford, and the frames only a host
// sends are never accepted from it. A frame that breaks the protocol cuts the extension
// off (cut_off: its calls fail saying why, the process is killed and restarted per its
// policy). Loop thread only.
#include <spdlog/spdlog.h>

#include <csignal>
#include <new>

#include "host_impl.h"
#include "log_gate.h"

namespace airlock::detail {

void HostImpl::on_frame(const std::shared_ptr<ExtensionState>& e, proto::Frame&& f) {
  adopt_arrivals(*e);  // calls sent on callers' threads: this may answer one
  if (e->channel) e->queued_bytes = e->channel->queued_bytes();  // it reads: what waits may have shrunk
  if (auto* r = std::get_if<proto::Response>(&f)) {
    const uint64_t id = r->id;
    if (!e->pending.count(id)) {
      if ((id & kExtensionIdBit) || id > last_id()) {
        return cut_off(e, "sent a Response to request " + std::to_string(id) + ", which was never sent");
      }
      if (e->unanswered_ended == 0) return cut_off(e, "answered request " + std::to_string(id) + " twice");
      e->unanswered_ended--;  // a late answer to a call that timed out or was cancelled
      // Its output buffer, if any, is of no use: give it back, or the extension's pool
      // would keep it leased for good.
      if (r->shm_refs.size() == 1) {
        std::lock_guard lk(e->shm_mu);
        if (e->side.valid()) (void)e->side.give_back(r->shm_refs[0].buffer_id, /*timeout_ms=*/0);
      }
      return;
    }
    const bool failed = r->code != Code::Ok;
    OutputView* view = e->pending[id].view.get();
    CallResult res = !failed && !r->shm_refs.empty() ? take_shared_output(e, *r, view) : proto::result_of(std::move(*r));
    if (failed && !res.ok()) res = named_error(*e, res.take_error());
    return complete_pending(*e, id, std::move(res));
  }
  if (auto* req = std::get_if<proto::Request>(&f)) {
    if (!(req->id & kExtensionIdBit)) {
      return cut_off(e, "sent a Request with id " + std::to_string(req->id) + " outside the extension's id range");
    }
    if (e->open_service_ids.count(req->id)) {
      return cut_off(e, "sent Request " + std::to_string(req->id) + " while its earlier one is still open");
    }
    return on_service_request(e, std::move(*req));  // a skill calling a host service
  }
  if (auto* l = std::get_if<proto::Log>(&f)) {
    if (l->level >= proto::kMaxLogLevel) return;  // "off"
    if (!e->log_gate.admit()) return;  // counted; reported with the next line that passes
    if (uint64_t n = e->log_gate.take_dropped()) report_dropped_logs(*e, n);
    return emit_log(*e, l->level, l->skill, l->message);
  }
  if (auto* ready = std::get_if<proto::Ready>(&f)) {
    if (e->got_ready) return cut_off(e, "sent Ready twice");
    if (ready->protocol_version != proto::kProtocolVersion) {
      return cut_off(e, "speaks protocol version " + std::to_string(ready->protocol_version) + ", this host " +
                            std::to_string(proto::kProtocolVersion) + " (a different airlock-extension build?)");
    }
    e->got_ready = true;  // its pid and name are not taken from it: the host knows both
    if (auto st = check_sandbox(*e, ready->sandbox); !st.ok()) {
      if (e->on_ready) return std::exchange(e->on_ready, nullptr)(std::move(st));
      return cut_off(e, st.error().message);
    }
    auto finish = [this, e](Status st) {
      if (st.ok()) {
        e->ready = true;
        set_direct(*e, true);
        schedule_health(e);
      }
      if (e->on_ready) std::exchange(e->on_ready, nullptr)(std::move(st));
    };
    if (!e->skills.empty()) return reload_skills(e, finish);
    return finish(ok_status());
  }
  cut_off(e, "sent a " + std::string(proto::frame_name(f)) + " frame, which only a host sends");
}

// The extension's words: one line, cut (an error is for people, 4 KiB is plenty), and
// prefixed with who said it ("extension 'x' (pid N): skill 'y': ...").
Error HostImpl::named_error(ExtensionState& e, Error err) const {
  err.message = e.label() + ": " + escape_log_text(err.message, opts.limits.max_log_line_bytes);
  return err;
}

// What the extension says of its sandbox (Ready.sandbox, "applied: ...; missing: ...").
// Said once per host when layers are missing (they are the same for every extension of
// a machine); with SandboxOptions::required they fail the start. The report is only the
// extension's word: what it cannot claim (being our child, its fds) the host checks
// itself, and a lying extension only lies about its own confinement.
Status HostImpl::check_sandbox(ExtensionState& e, const std::string& report) {
  std::string text = report.substr(0, 1024);
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  e.set_sandbox_report(text);
  if (!opts.sandbox.enabled) return ok_status();
  const auto gap = text.find("missing: ");
  const bool incomplete = gap != std::string::npos || text.rfind("applied: ", 0) != 0;
  if (!incomplete) return ok_status();
  const std::string missing = gap == std::string::npos ? "(no report)" : text.substr(gap + 9);
  if (opts.sandbox.required) {
    return make_error(Code::PermissionDenied, e.label() + ": the sandbox is required but incomplete: missing " + missing);
  }
  if (!sandbox_gap_reported_) {
    sandbox_gap_reported_ = true;
    spdlog::warn("sandbox: this machine does not allow every layer; extensions run without: {} "
                 "(SandboxOptions::required makes this a spawn error)", missing);
  }
  return ok_status();
}

OutputViewState::~OutputViewState() {
  auto e = ext.lock();
  if (!e) return;
  e->view_bytes -= pinned;
  std::lock_guard lk(e->shm_mu);
  // The same process (a restarted one never had this buffer), and never waiting on it.
  if (e->side_gen == side_gen && e->side.valid()) (void)e->side.give_back(buffer_id, /*timeout_ms=*/0);
}

// A large output the extension returned in shared memory: copy it out, give it back;
// or, if the caller asked for a view, hand it the mapping and give it back when the view goes.
CallResult HostImpl::take_shared_output(const std::shared_ptr<ExtensionState>& ep, const proto::Response& r, OutputView* view) {
  ExtensionState& e = *ep;
  // A view the caller reused still holds an earlier output: that one is given back (which
  // takes shm_mu) after the lock below is released, so it is destroyed after it.
  std::shared_ptr<OutputViewState> replaced;
  std::lock_guard lk(e.shm_mu);
  if (r.shm_refs.size() != 1 || !r.payload.empty() || !e.side.valid() || !e.inbox) {
    return make_error(Code::Internal, e.label() + " sent a malformed shared output");
  }
  if (auto st = e.inbox->pump(e.side); !st.ok()) {  // its fd arrived before this frame
    return make_error(st.error().code, e.label() + " sent a bad shared output: " + st.error().message);
  }
  const auto& ref = r.shm_refs[0];
  if (ref.length > opts.limits.max_output_bytes) {
    (void)e.inbox->release(ref.buffer_id);
    (void)e.side.give_back(ref.buffer_id, /*timeout_ms=*/0);
    return make_error(Code::ResourceExhausted, e.label() + " returned " + std::to_string(ref.length) +
                                                   " bytes of output (HostLimits::max_output_bytes " +
                                                   std::to_string(opts.limits.max_output_bytes) + ")");
  }
  auto v = e.inbox->resolve(ref);
  if (!v.ok()) return make_error(Code::Internal, e.label() + " sent a bad shared output: " + v.error().message);
  // A view pins the buffer's whole mapping for as long as the caller keeps it, past the
  // registry's own count (a drop or a restart ends that). Views get half of
  // max_shared_bytes, so that the registry keeps room for the outputs that come while
  // they are held; past it an output is copied as usual.
  const uint64_t pinned = v->mapping ? v->mapping->size() : v->bytes.size();
  if (view && e.view_bytes.load() + pinned <= opts.limits.max_shared_bytes / 2) {
    auto st = std::make_shared<OutputViewState>();
    st->view = std::move(v.value());
    st->ext = ep;
    st->buffer_id = ref.buffer_id;
    st->side_gen = e.side_gen;
    st->pinned = pinned;
    e.view_bytes += pinned;
    replaced = std::exchange(view->s_, std::move(st));
    return std::string();
  }
  CallResult out = make_error(Code::Internal, "");
  try {
    out = std::string(reinterpret_cast<const char*>(v->bytes.data()), v->bytes.size());
  } catch (const std::bad_alloc&) {
    out = make_error(Code::ResourceExhausted, e.label() + ": no memory for its " + std::to_string(v->bytes.size()) +
                                                  "-byte output");
  }
  (void)e.side.give_back(ref.buffer_id, /*timeout_ms=*/0);  // never waits on the extension
  return out;
}

void HostImpl::on_channel_closed(const std::shared_ptr<ExtensionState>& e, const Error& err) {
  // EOF usually means the process is exiting: its exit watcher reports that. Anything
  // else (a malformed or oversized frame) means we can no longer trust the peer.
  e->ready = false;
  set_direct(*e, false);
  auto closed = std::move(e->channel);  // closed already; destroyed when this callback has returned
  if (closed) post([ch = std::shared_ptr<proto::Channel>(std::move(closed))] {});
  if (err.code != Code::Unavailable) return cut_off(e, "disconnected: " + err.message);
  // It hung up: a real extension is exiting now, and its exit status (reaped through the
  // pidfd) says why. One that hangs up and lives on is killed after a second.
  if (e->proc.pidfd >= 0 && !e->kill_timer) {
    const int pidfd = e->proc.pidfd;
    e->kill_timer = LoopTimer::start(&loop_, 1000, [e, pidfd] {
      LoopTimer::stop(e->kill_timer);
      if (e->proc.pidfd == pidfd) signal_child(pidfd, SIGKILL);
    });
  }
}

void HostImpl::report_dropped_logs(ExtensionState& e, uint64_t n) {
  emit_log(e, 3, {}, std::to_string(n) + " log lines dropped (more than " + std::to_string(e.log_gate.rate()) +
                         " a second; HostLimits::log_lines_per_second)");
}

void HostImpl::emit_log(ExtensionState& e, int level, std::string_view skill, std::string_view message) {
  const std::string text = escape_log_text(message, opts.limits.max_log_line_bytes);
  const std::string who = escape_log_text(skill, 128);
  if (opts.log_callback) {
    opts.log_callback(LogRecord{e.opts.name, who, level, text});
    return;
  }
  const auto lvl = static_cast<spdlog::level::level_enum>(std::clamp(level, 0, 5));
  if (who.empty()) {
    spdlog::log(lvl, "[ext {}] {}", e.opts.name, text);
  } else {
    spdlog::log(lvl, "[ext {}] [skill {}] {}", e.opts.name, who, text);
  }
}

}  // namespace airlock::detail
