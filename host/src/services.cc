// Host services and call chains. A skill's airlock_call() arrives as a Request from
// its extension (parent_id = the host request the skill is serving). The handler may
// call skills in turn (ServiceRequest::call): each nested call inherits the chain's
// deadline, counts toward max_chain_depth, and is cancelled when the request it was
// made under ends. "@EXT/SKILL" is the built-in service for extension -> extension
// calls, allowed by the caller's ExtensionOptions::may_call.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <future>
#include <optional>

#include "host_impl.h"

namespace airlock {
namespace detail {

namespace {
bool allowed(const std::vector<std::string>& allow, const std::string& ext) {
  return std::any_of(allow.begin(), allow.end(), [&](const std::string& a) { return a == "*" || a == ext; });
}

bool may_call(const ExtensionOptions& o, const std::string& ext, const std::string& skill) {
  return std::any_of(o.may_call.begin(), o.may_call.end(),
                     [&](const std::string& p) { return p == "*" || p == ext || p == ext + "/" + skill; });
}

// "@EXT/SKILL" (or "@EXT": its skill "run"), the built-in extension -> extension service:
// {EXT, SKILL}.
std::pair<std::string, std::string> chain_target(const std::string& service) {
  const auto slash = service.find('/');
  return {service.substr(1, slash == std::string::npos ? std::string::npos : slash - 1),
          slash == std::string::npos ? "run" : service.substr(slash + 1)};
}

// A chain's nested call, made under the host request `parent` of the calling skill.
proto::Request nested_request(uint64_t id, uint64_t parent, std::chrono::milliseconds remaining, const std::string& skill,
                              std::string input) {
  proto::Request req;
  req.id = id;
  req.parent_id = parent;
  req.timeout_us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(remaining).count());
  req.target = skill;
  req.method = "run";
  req.payload = std::move(input);
  return req;
}
}  // namespace

void HostImpl::register_service(const std::string& name, ServiceHandler h, BlockingServiceHandler b, ServiceOptions o) {
  std::lock_guard lk(svc_mu_);
  if (b && !workers_) workers_ = std::make_unique<WorkerPool>(opts.service_threads);
  service_handlers_[name] = {std::move(h), std::move(b), o.allow ? std::move(*o.allow) : opts.default_service_access};
}

void HostImpl::on_service_request(const std::shared_ptr<ExtensionState>& e, proto::Request&& r) {
  auto refuse = [&](Code code, const std::string& why) {
    if (e->channel) proto::send_response(*e->channel, proto::make_response(r.id, make_error(code, why)));
  };
  // Bounds first: a request past them is answered at once and costs nothing to keep.
  if (e->open_service_ids.size() >= opts.limits.max_service_requests) {
    return refuse(Code::ResourceExhausted, e->label() + " has " + std::to_string(e->open_service_ids.size()) +
                                               " host-service requests open (HostLimits::max_service_requests)");
  }
  if (auto it = e->services.find(r.parent_id);
      it != e->services.end() && it->second.size() >= opts.limits.max_service_requests_per_call) {
    return refuse(Code::ResourceExhausted, "one call of " + e->label() + " has " + std::to_string(it->second.size()) +
                                               " host-service requests open (HostLimits::max_service_requests_per_call)");
  }
  auto s = std::make_shared<ServiceCallState>();
  s->host = this;
  s->ext = e;
  s->id = r.id;
  s->parent = r.parent_id;
  s->service = std::move(r.target);
  s->input = std::move(r.payload);
  auto parent = e->pending.find(r.parent_id);
  if (parent == e->pending.end() || !parent->second.counts) {
    // The call this request belongs to has ended (cancelled, timed out), or is no call
    // at all (a forged parent id): nobody waits for it.
    s->replied = true;
    return refuse(Code::Cancelled, "the call that made this request has ended");
  }
  const ChainInfo& pi = parent->second.info;
  s->info.depth = pi.depth;
  s->info.chain = pi.chain + " -> " + s->service;
  s->info.deadline = pi.deadline;
  if (r.timeout_us) {
    s->info.deadline = std::min(s->info.deadline, std::chrono::steady_clock::now() + std::chrono::microseconds(r.timeout_us));
  }
  e->services[r.parent_id].push_back(s);
  e->open_service_ids.insert(s->id);

  if (!s->service.empty() && s->service[0] == '@') {  // built-in: call a skill in another extension
    auto [ext, skill] = chain_target(s->service);
    if (!may_call(e->opts, ext, skill)) {
      return reply_service(s, make_error(Code::PermissionDenied, "extension '" + e->opts.name + "' may not call '" +
                                                                     ext + "/" + skill + "' (ExtensionOptions::may_call)"));
    }
    return nested_call(s, ext, skill, s->input, [s, this](CallResult res) { reply_service(s, std::move(res)); });
  }

  Service h;
  {
    std::lock_guard lk(svc_mu_);
    auto it = service_handlers_.find(s->service);
    if (it != service_handlers_.end()) h = it->second;
  }
  if (!h.handler && !h.blocking) {
    return reply_service(s, make_error(Code::NotFound, "no host service '" + s->service + "' (called by " + s->info.chain + ")"));
  }
  if (e->opts.services && std::find(e->opts.services->begin(), e->opts.services->end(), s->service) == e->opts.services->end()) {
    return reply_service(s, make_error(Code::PermissionDenied, "extension '" + e->opts.name + "' may not call host service '" +
                                                                   s->service + "' (ExtensionOptions::services)"));
  }
  if (!allowed(h.allow, e->opts.name)) {
    return reply_service(s, make_error(Code::PermissionDenied, "extension '" + e->opts.name + "' may not call host service '" +
                                                                   s->service + "' (ServiceOptions::allow)"));
  }
  ServiceRequest req(s);
  if (h.handler) {
    try {
      h.handler(req);
    } catch (const std::exception& ex) {
      reply_service(s, make_error(Code::Internal, "service '" + s->service + "' threw: " + ex.what()));
    }
    return;
  }
  // Fair shares of the workers: each extension queues at most max_blocking_jobs, and
  // never occupies every worker (worker_pool.h).
  const bool queued = workers_->submit(e.get(), opts.limits.max_blocking_jobs, [req, fn = std::move(h.blocking)] {
    CallResult res = make_error(Code::Internal, "service handler threw");
    try {
      res = fn(req);
    } catch (const std::exception& ex) {
      res = make_error(Code::Internal, "service '" + req.service() + "' threw: " + ex.what());
    }
    req.reply(std::move(res));
  });
  if (!queued) {
    reply_service(s, make_error(Code::ResourceExhausted, e->label() + " has " + std::to_string(opts.limits.max_blocking_jobs) +
                                                             " blocking-service jobs queued or running (HostLimits::max_blocking_jobs)"));
  }
}

void HostImpl::reply_service(const std::shared_ptr<ServiceCallState>& s, CallResult r) {
  if (s->replied.exchange(true)) return;
  s->ext->open_service_ids.erase(s->id);
  auto& list = s->ext->services[s->parent];
  list.erase(std::remove(list.begin(), list.end(), s), list.end());
  if (list.empty()) s->ext->services.erase(s->parent);
  if (s->cancelled || !s->ext->channel) return;
  proto::send_response(*s->ext->channel, proto::make_response(s->id, std::move(r)));
}

void HostImpl::nested_call(const std::shared_ptr<ServiceCallState>& s, std::string ext, std::string skill,
                           std::string input, Done done) {
  if (s->cancelled) return done(make_error(Code::Cancelled, "the chain " + s->info.chain + " was cancelled"));
  ChainInfo info{s->info.depth + 1, s->info.chain + " -> " + ext + "/" + skill, s->info.deadline};
  if (info.depth > opts.max_chain_depth) {
    return done(make_error(Code::ResourceExhausted, "call chain too deep (" + std::to_string(info.depth) + " > limit " +
                                                        std::to_string(opts.max_chain_depth) + "): " + info.chain));
  }
  auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(info.deadline - std::chrono::steady_clock::now());
  if (remaining.count() <= 0) {
    return done(make_error(Code::Timeout, "the chain's deadline passed before calling " + ext + "/" + skill + " (" + info.chain + ")"));
  }
  std::shared_ptr<ExtensionState> target;
  {
    std::lock_guard lk(ext_mu_);
    auto it = extensions_.find(ext);
    if (it != extensions_.end()) target = it->second;
  }
  if (!target) return done(make_error(Code::NotFound, "no extension '" + ext + "' (" + info.chain + ")"));
  uint64_t id = next_id();
  proto::Request req = nested_request(id, s->parent, remaining, skill, std::move(input));
  s->children.emplace_back(target, id);
  // Errors say where in the chain they happened.
  auto where = "in " + ext + "/" + skill + ": ";
  send_call(target, id, std::move(req), remaining, [done = std::move(done), where](CallResult r) {
    if (!r.ok()) {
      Error e = r.take_error();
      e.message = where + e.message;
      return done(std::move(e));
    }
    done(std::move(r));
  }, std::move(info));
}

void HostImpl::serve_chain_here(const std::shared_ptr<ExtensionState>& e, proto::Request req) {
  // The loop serves what this thread cannot: exactly as if it had read the request.
  auto to_loop = [&] { post([this, e, f = proto::Frame(std::move(req))]() mutable { on_frame(e, std::move(f)); }); };
  ChainInfo parent;
  {
    std::lock_guard lk(e->direct_mu);
    auto it = std::find_if(e->arrivals.begin(), e->arrivals.end(), [&](const auto& a) { return a.id == req.parent_id; });
    if (it == e->arrivals.end()) return to_loop();  // adopted meanwhile: the loop's now
    parent = it->pc.info;
  }
  const std::string& service = req.target;
  const auto [ext, skill] = chain_target(service);
  Deadline deadline = parent.deadline;
  if (req.timeout_us) deadline = std::min(deadline, std::chrono::steady_clock::now() + std::chrono::microseconds(req.timeout_us));
  const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (!may_call(e->opts, ext, skill) || parent.depth + 1 > opts.max_chain_depth || remaining.count() <= 0) return to_loop();
  std::shared_ptr<ExtensionState> target;
  {
    std::lock_guard lk(ext_mu_);
    auto it = extensions_.find(ext);
    if (it != extensions_.end()) target = it->second;
  }
  if (!target) return to_loop();
  const uint64_t id = next_id();
  proto::Request nested = nested_request(id, req.parent_id, remaining, skill, std::move(req.payload));
  ChainInfo info{parent.depth + 1, parent.chain + " -> " + service + " -> " + ext + "/" + skill, deadline};
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<bool> done{false};
    std::optional<CallResult> r;
  };
  auto w = std::make_shared<Wait>();
  Done done = [w](CallResult r) {
    {
      std::lock_guard lk(w->mu);
      w->r = std::move(r);
    }
    w->done = true;
    w->cv.notify_all();
  };
  std::shared_ptr<OutputView> no_view;
  bool leads = false;
  proto::Frame frame = std::move(nested);
  if (!send_direct(target, id, frame, remaining, done, info, no_view, &leads)) {
    req.payload = std::move(std::get<proto::Request>(frame).payload);  // nothing was sent
    return to_loop();
  }
  if (leads) lead(target, skill, deadline, [&w] { return w->done.load(); });
  CallResult res = [&] {
    std::unique_lock lk(w->mu);
    w->cv.wait(lk, [&] { return w->r.has_value(); });
    return std::move(*w->r);
  }();
  if (!res.ok()) {  // where in the chain it happened, as nested_call() says it
    Error err = res.take_error();
    err.message = "in " + ext + "/" + skill + ": " + err.message;
    res = std::move(err);
  }
  proto::Response answer = proto::make_response(req.id, std::move(res));
  std::shared_ptr<proto::DirectSender> sender;
  {
    std::lock_guard lk(e->direct_mu);
    sender = e->direct;
  }
  if (sender && sender->try_send(answer)) return;
  // Too large for a frame, the socket full, or the extension gone: the loop answers
  // (send_response turns a refused answer into a small error), or finds no one to answer.
  post([e, answer = std::move(answer)] {
    if (e->channel) proto::send_response(*e->channel, answer);
  });
}

void HostImpl::end_services(ExtensionState& e, uint64_t parent) {
  auto it = e.services.find(parent);
  if (it == e.services.end()) return;
  auto open = std::move(it->second);
  e.services.erase(it);
  for (auto& s : open) {
    e.open_service_ids.erase(s->id);
    // Claim the answer first: cancelling a child runs its `done`, which would reply
    // (and, the chain being cancelled, send nothing) before we could.
    const bool must_answer = !s->replied.exchange(true);
    s->cancelled = true;
    for (auto& [w, id] : s->children) {
      if (auto t = w.lock()) cancel_call(t, id);  // recursive: ends that call's own services
    }
    // The skill that asked is gone, but its extension still holds the request open.
    if (must_answer && e.channel) {
      proto::send_response(*e.channel, proto::make_response(s->id, make_error(Code::Cancelled, "the chain " + s->info.chain + " ended")));
    }
  }
}

}  // namespace detail

// ---- ServiceRequest ---------------------------------------------------------------------

const std::string& ServiceRequest::service() const { return s_->service; }
const std::string& ServiceRequest::extension() const { return s_->ext->opts.name; }
const std::string& ServiceRequest::input() const { return s_->input; }
std::chrono::steady_clock::time_point ServiceRequest::deadline() const { return s_->info.deadline; }
uint32_t ServiceRequest::depth() const { return s_->info.depth; }
std::string ServiceRequest::chain() const { return s_->info.chain; }
bool ServiceRequest::cancelled() const { return s_->cancelled; }

void ServiceRequest::reply(CallResult result) const {
  auto s = s_;
  if (s->replied) return;
  if (s->host->on_loop_thread()) return s->host->reply_service(s, std::move(result));
  s->host->post([s, r = std::move(result)]() mutable { s->host->reply_service(s, std::move(r)); });
}

void ServiceRequest::call(std::string_view extension, std::string_view skill, std::string_view input,
                          std::function<void(CallResult)> done) const {
  auto s = s_;
  auto go = [s, ext = std::string(extension), sk = std::string(skill), in = std::string(input), done = std::move(done)]() mutable {
    s->host->nested_call(s, std::move(ext), std::move(sk), std::move(in), std::move(done));
  };
  if (s->host->on_loop_thread()) return go();
  s->host->post(std::move(go));
}

CallResult ServiceRequest::call(std::string_view extension, std::string_view skill, std::string_view input) const {
  if (s_->host->on_loop_thread()) {
    return make_error(Code::InvalidArgument, "blocking ServiceRequest::call on the I/O thread: use the callback form");
  }
  auto p = std::make_shared<std::promise<CallResult>>();
  call(extension, skill, input, [p](CallResult r) { p->set_value(std::move(r)); });
  return p->get_future().get();
}

}  // namespace airlock
