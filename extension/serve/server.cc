#include "serve/server.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "airlock/guard_regions.h"
#include "airlock/ring.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/shm/pool.h"
#include "airlock/shm/registry.h"
#include "runtime/skill_runtime.h"

namespace airlock::serve {
namespace {

// A warm instance idle this long gives its memory back; checked as often. The next call
// on it then restores the skill's snapshot onto zero pages (~3 us more for the sample).
constexpr uint64_t kTrimIdleMs = 5000;
constexpr std::chrono::milliseconds kTrimIdle{kTrimIdleMs};


using proto::Frame;

// Ids of requests the extension sends to the host (service calls) have the top bit set,
// so they never collide with the host's request ids on the same channel.
constexpr uint64_t kExtensionIdBit = 1ull << 63;

class Server;

// Forwards the extension's own log lines to the host as Log frames.
class ChannelSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  explicit ChannelSink(Server* s) : server_(s) {}
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  Server* server_;
};

class Server {
 public:
  Server(const ServeOptions& o, sandbox::Report report, std::shared_ptr<proto::RingLink> ring)
      : opts_(o), report_(std::move(report)) {
    uv_loop_init(&loop_);
    uv_timer_init(&loop_, &gone_timer_);
    gone_timer_.data = this;
    // Warm instances left idle give their memory back (SkillRuntime::trim_idle). Unref'd:
    // it never keeps the loop alive on its own.
    uv_timer_init(&loop_, &trim_timer_);
    trim_timer_.data = this;
    uv_timer_start(&trim_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->runtime_->trim_idle(kTrimIdle); },
                   kTrimIdleMs, kTrimIdleMs);
    uv_unref(reinterpret_cast<uv_handle_t*>(&trim_timer_));
    runtime::RuntimeLimits limits;
    limits.max_memory_bytes = uint64_t(o.max_total_memory_mb) << 20;
    engine::EngineConfig ec;
    ec.lazy_compilation = o.lazy_compilation;
    ec.tier_up = o.tier_up;
    ec.cacheable_code = o.cacheable_code;
    ec.trap_handler = o.guard_regions == "on" || (o.guard_regions == "auto" && guard_regions_fit(limits.max_instances));
    if (!ec.trap_handler) limits.max_instances = limits.max_calls_in_flight;
    spdlog::debug("engine: guard regions {}, lazy compilation {}, tier-up {}, at most {} instances",
                  ec.trap_handler ? "on" : "off", ec.lazy_compilation ? "on" : "off", ec.tier_up ? "on" : "off",
                  limits.max_instances);
    runtime_ = std::make_unique<runtime::SkillRuntime>(&loop_, ec, limits);
    if (o.side_fd >= 0) runtime_->set_output_source(&out_slots_);
    channel_ = proto::make_channel(o.encoding, proto::Role::Extension, &loop_, o.fd, o.max_frame_bytes,
                                   proto::kDefaultMaxQueuedBytes, o.spin_us, std::move(ring));
    if (o.side_fd >= 0) {
      side_ = shm::FdChannel(shm::UniqueFd(o.side_fd));
      side_poll_ = std::make_unique<uv_poll_t>();
      uv_poll_init(&loop_, side_poll_.get(), o.side_fd);
      side_poll_->data = this;
      uv_poll_start(side_poll_.get(), UV_READABLE, [](uv_poll_t* p, int status, int) {
        auto* self = static_cast<Server*>(p->data);
        if (status < 0 || !self->pump_side().ok()) self->stop_side();
      });
    }
  }

  ~Server() {
    runtime_.reset();  // first: its calls give their output slots back (out_slots_)
    stop_side();
    channel_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }

  int run() {
    runtime_->set_log_sink([this](int level, std::string_view skill, std::string_view line) {
      if (level < static_cast<int>(spdlog::get_level())) return;
      send_log(level, std::string(line), std::string(skill));
    });
    runtime_->set_service_handler([this](const runtime::ServiceCall& c, std::string service, std::string input,
                                         runtime::ServiceReply reply) { call_host(c, std::move(service), std::move(input), std::move(reply)); });
    channel_->start({[this](Frame&& f) { on_frame(std::move(f)); },
                     [this](const Error& e) {
                       spdlog::debug("channel closed: {}", e.to_string());
                       host_gone_ = true;
                       // Not here: this can run inside a skill's import (a failed send
                       // while wasm is on the stack). Shut down on the next loop turn.
                       uv_timer_start(&gone_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->shutdown_now(); }, 0, 0);
                     },
                     nullptr});  // the loop reads everything here: no thread waits on a call
    auto logger = std::make_shared<spdlog::logger>(opts_.name, std::make_shared<ChannelSink>(this));
    logger->set_level(spdlog::get_level());
    spdlog::set_default_logger(logger);
    // The sandbox's second step: everything this process needs is set up (engine, loop,
    // channel); from here on it runs under seccomp.
    if (auto st = sandbox::lock_down(opts_.sandbox, report_); !st.ok()) {
      spdlog::error("sandbox: {}", st.error().message);
      return 4;
    }
    (void)channel_->send(proto::Ready{proto::kProtocolVersion, static_cast<int32_t>(getpid()), opts_.name,
                                      report_.summary()});
    uv_run(&loop_, UV_RUN_DEFAULT);
    return exit_code_;
  }

  void send_log(int level, std::string message, std::string skill = {}) {
    if (host_gone_ || !channel_) return;
    (void)channel_->send(proto::Log{static_cast<uint8_t>(level), std::move(message), std::move(skill)});
  }

 private:
  // A large output goes back in a buffer of our own pool instead of the frame; the host
  // copies it out and gives the buffer back (kReturn) before we write it again.
  bool share_output(const std::string& out, proto::Response& resp) {
    if (!side_.valid() || out.size() < opts_.shm_output_min_bytes) return false;
    ensure_out_pool();
    auto lease = out_pool_->acquire(out.size());
    if (!lease.ok()) return false;
    std::memcpy(lease->writable().data(), out.data(), out.size());
    auto ref = out_exporter_->share(lease->buffer(), 0, out.size());
    if (!ref.ok()) return false;
    resp.shm_refs.push_back(ref.value());
    out_leases_[ref->buffer_id] = std::move(lease.value());
    return true;
  }

  void ensure_out_pool() {
    if (out_exporter_) return;
    out_exporter_ = std::make_unique<shm::Exporter>(side_);
    out_pool_ = std::make_unique<shm::Pool>();
    out_pool_->set_on_free([this](uint64_t id) { (void)out_exporter_->drop(id); });
  }

  // runtime::OutputSource: a pooled buffer for a skill to write its output into
  // (runtime/output_buffer.h); the runtime moves its writable mapping into the skill's
  // memory for the call and back after it.
  class OutputSlots : public runtime::OutputSource {
   public:
    explicit OutputSlots(Server* s) : s_(s) {}
    Result<runtime::OutputSlot> acquire(size_t len) override {
      if (!s_->side_.valid()) return make_error(Code::Unavailable, "no side channel");
      s_->ensure_out_pool();
      // Whole pages (the runtime moves mappings page by page): ask for them, and lend
      // that much of the buffer (its size class, or an exact unpooled size).
      const size_t pages = (len + 4095) / 4096 * 4096;
      auto lease = s_->out_pool_->acquire(pages);
      if (!lease.ok()) return lease.take_error();
      auto w = lease->buffer().writable();
      if (w.size() < pages) return make_error(Code::Internal, "output slot smaller than asked");
      const uint64_t token = next_++;
      runtime::OutputSlot slot{reinterpret_cast<uint8_t*>(w.data()), pages, token};
      leases_.emplace(token, std::move(lease.value()));
      return slot;
    }
    void release(uint64_t token) override { leases_.erase(token); }
    std::optional<shm::Lease> take(uint64_t token) {
      auto it = leases_.find(token);
      if (it == leases_.end()) return std::nullopt;
      shm::Lease l = std::move(it->second);
      leases_.erase(it);
      return l;
    }

   private:
    Server* s_;
    uint64_t next_ = 1;
    std::unordered_map<uint64_t, shm::Lease> leases_;  // lent to a running call
  };

  // An output the skill wrote into a slot: the pooled buffer goes to the host as any
  // large output does (share_output), without the copy.
  bool send_written_output(const runtime::WrittenOutput& w, proto::Response& resp) {
    auto lease = out_slots_.take(w.token);
    if (!lease || !side_.valid() || w.length > lease->buffer().size()) return false;
    auto ref = out_exporter_->share(lease->buffer(), 0, w.length);
    if (!ref.ok()) return false;
    resp.shm_refs.push_back(ref.value());
    out_leases_[ref->buffer_id] = std::move(*lease);
    return true;
  }

  void reply(uint64_t id, Result<std::string> r, const runtime::WrittenOutput* written = nullptr) {
    proto::Response resp = proto::make_response(id, std::move(r));
    if (written && written->token && resp.code != Code::Ok) out_slots_.release(written->token);
    if (resp.code == Code::Ok && written && written->token) {
      if (!send_written_output(*written, resp)) {
        resp = proto::make_response(id, make_error(Code::Internal, "extension '" + opts_.name +
                                                                       "': cannot send the output buffer"));
      }
    } else if (resp.code == Code::Ok && share_output(resp.payload, resp)) {
      resp.payload.clear();
    }
    proto::send_response(*channel_, resp);
  }

  void on_frame(Frame&& f) {
    std::visit([this](auto&& fr) { handle(std::move(fr)); }, std::move(f));
  }

  // Buffers the host shares arrive (fd + id) on the side channel before the frames
  // that name them; a broken side channel only disables shared memory.
  Status pump_side() {
    if (!side_.valid()) return make_error(Code::Unavailable, "no shared-memory side channel");
    const uint64_t released = shm_.releases();
    Status st = shm_.pump(side_, [this](uint64_t id) { out_leases_.erase(id); });
    // A dropped buffer must not stay mapped in an idle instance. (Only after a drop: it
    // visits every skill, which was 1.4% of loading 500 skills when done at each pump.)
    if (shm_.releases() != released) runtime_->release_orphaned_inputs();
    return st;
  }
  void stop_side() {
    out_leases_.clear();  // (slots lent to running calls come back when those end)
    if (out_pool_) out_pool_->set_on_free(nullptr);
    if (side_poll_) {
      uv_close(reinterpret_cast<uv_handle_t*>(side_poll_.release()), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    }
    side_.close();
    shm_.clear();
    if (runtime_) runtime_->release_orphaned_inputs();  // the registry let go of every buffer
  }

  // The input a request names in shared memory: one ref, read-only, valid for the call.
  Result<runtime::InputView> shared_input(const proto::Request& r) {
    if (r.shm_refs.size() != 1 || !r.payload.empty()) {
      return make_error(Code::InvalidArgument, "a request carries its input inline or in exactly one shared buffer");
    }
    if (side_.valid()) (void)pump_side();
    auto v = shm_.resolve(r.shm_refs[0]);
    if (!v.ok()) return make_error(v.error().code, "shared input: " + v.error().message);
    return runtime::InputView{{reinterpret_cast<const uint8_t*>(v->bytes.data()), v->bytes.size()}, v->mapping, v->fd(), v->offset};
  }

  void handle(proto::Request&& r) {
    if (draining_) return reply(r.id, make_error(Code::Unavailable, "extension '" + opts_.name + "' is shutting down"));
    std::optional<runtime::InputView> view;
    if (!r.shm_refs.empty()) {
      auto in = shared_input(r);
      if (!in.ok()) return reply(r.id, in.take_error());
      view = std::move(in.value());
    }
    runtime::CallOptions o;
    o.func = r.method.empty() ? "run" : r.method;
    o.parent_id = r.id;
    if (r.timeout_us) o.timeout_ms = static_cast<uint32_t>(std::max<uint64_t>(1, r.timeout_us / 1000));
    uint64_t host_id = r.id;
    in_flight_[host_id] = 0;
    if (side_.valid()) o.written_output = std::make_shared<runtime::WrittenOutput>();
    auto done = [this, host_id, written = o.written_output](Result<std::string> res) {
      in_flight_.erase(host_id);
      reply(host_id, std::move(res), written.get());
      maybe_finish_drain();
    };
    uint64_t call_id = view ? runtime_->call(r.target, std::move(*view), o, std::move(done))
                            : runtime_->call(r.target, std::move(r.payload), o, std::move(done));
    auto it = in_flight_.find(host_id);
    if (it != in_flight_.end()) it->second = call_id;  // still running (suspended): cancellable
  }

  void handle(proto::Response&& r) {
    auto it = host_calls_.find(r.id);
    if (it == host_calls_.end()) return;  // the skill's call was cancelled meanwhile
    auto done = std::move(it->second);
    host_calls_.erase(it);
    done(proto::result_of(std::move(r)));
  }

  void handle(proto::Cancel&& c) {
    auto it = in_flight_.find(c.id);
    if (it != in_flight_.end() && it->second) runtime_->cancel(it->second);
  }

  void handle(proto::LoadSkill&& l) {
    runtime::SkillLimits lim;
    lim.max_memory_mb = l.max_memory_pages ? (l.max_memory_pages + 15) / 16 : opts_.default_max_memory_mb;
    lim.timeout_ms = l.timeout_ms ? l.timeout_ms : opts_.default_timeout_ms;
    // The compile cache's code, lent in shared memory for this load only: read out of it
    // (and the buffer closed) before the engine takes it. One that does not resolve (a
    // restart came between its announcement and this frame) is "missing": the skill
    // compiles.
    bool have_code = false;
    if (!l.compiled.empty()) {
      if (side_.valid()) (void)pump_side();
      have_code = shm_.read_once(l.compiled[0], code_scratch_).ok();
    }
    const std::span<const uint8_t> compiled =
        have_code ? std::span(reinterpret_cast<const uint8_t*>(code_scratch_.data()), code_scratch_.size())
                  : std::span<const uint8_t>();
    bool used_cache = false;
    Status st = l.path.empty()
                    ? runtime_->load(l.name, std::span(reinterpret_cast<const uint8_t*>(l.wasm.data()), l.wasm.size()), lim,
                                     compiled, &used_cache)
                    : runtime_->load_file(l.name, l.path, lim);
    // The answer tells the host's compile cache whether its entry was taken.
    const char* word = l.compiled.empty() ? "" : !have_code ? "cache: missing" : used_cache ? "cache: hit" : "cache: rejected";
    if (code_scratch_.capacity() > (1u << 20)) std::string().swap(code_scratch_);  // kept only for small modules
    if (st.ok()) return reply(l.id, std::string(word));
    reply(l.id, st.take_error());
  }

  void handle(proto::UnloadSkill&& u) {
    Status st = runtime_->unload(u.name);
    if (st.ok()) return reply(u.id, std::string());
    reply(u.id, st.take_error());
  }

  void handle(proto::Health&& h) {
    auto s = runtime_->stats();
    std::string text = "ok skills=" + std::to_string(runtime_->skills().size()) +
                       " in_flight=" + std::to_string(s.in_flight) + " calls=" + std::to_string(s.calls);
    reply(h.id, std::move(text));
  }

  void handle(proto::Shutdown&& s) {
    draining_ = true;
    if (in_flight_.empty()) return shutdown_now();
    drain_timer_ = std::make_unique<uv_timer_t>();
    uv_timer_init(&loop_, drain_timer_.get());
    drain_timer_->data = this;
    uv_timer_start(drain_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->shutdown_now(); },
                   s.grace_ms, 0);
  }

  // Frames only the extension sends; a host that sends them is confused but harmless.
  void handle(proto::Ready&&) {}
  void handle(proto::Log&&) {}

  void maybe_finish_drain() {
    if (draining_ && in_flight_.empty()) shutdown_now();
  }

  void shutdown_now() {
    if (stopped_) return;
    stopped_ = true;
    runtime_->cancel_all(make_error(Code::Cancelled, "extension '" + opts_.name + "' is shutting down"));
    for (auto& [id, done] : host_calls_) done(make_error(Code::Unavailable, "host connection closed"));
    host_calls_.clear();
    if (drain_timer_) {
      uv_close(reinterpret_cast<uv_handle_t*>(drain_timer_.release()),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    }
    spdlog::set_default_logger(spdlog::null_logger_st("off"));
    stop_side();
    channel_->close();
    uv_close(reinterpret_cast<uv_handle_t*>(&gone_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&trim_timer_), nullptr);
    uv_stop(&loop_);
  }

  void call_host(const runtime::ServiceCall& c, std::string service, std::string input, runtime::ServiceReply done) {
    if (stopped_) return done(make_error(Code::Unavailable, "host connection closed"));
    proto::Request r;
    r.id = kExtensionIdBit | next_host_call_++;
    r.parent_id = c.parent_id;
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(c.deadline - std::chrono::steady_clock::now());
    r.timeout_us = static_cast<uint64_t>(std::max<int64_t>(1, left.count()));
    r.target = std::move(service);
    r.payload = std::move(input);
    if (auto st = channel_->send(r); !st.ok()) return done(st.take_error());
    host_calls_[r.id] = std::move(done);
  }

  ServeOptions opts_;
  sandbox::Report report_;
  uv_loop_t loop_{};
  std::unique_ptr<runtime::SkillRuntime> runtime_;
  std::unique_ptr<proto::Channel> channel_;
  std::unordered_map<uint64_t, uint64_t> in_flight_;  // host request id -> runtime call id
  std::unordered_map<uint64_t, runtime::ServiceReply> host_calls_;
  uint64_t next_host_call_ = 1;
  std::unique_ptr<uv_timer_t> drain_timer_;
  uv_timer_t gone_timer_{};  // defers shutdown after the host went away
  uv_timer_t trim_timer_{};  // every kTrimIdleMs: trims warm instances idle that long
  shm::FdChannel side_;
  shm::Registry shm_;  // buffers the host shared with us (sealed: we cannot write them)
  std::string code_scratch_;  // a LoadSkill's compiled code, read from its lent buffer
  std::unique_ptr<uv_poll_t> side_poll_;
  // Outputs we share; destroyed in reverse: leases, then the pool (whose on_free
  // tells the exporter), then the exporter.
  std::unique_ptr<shm::Exporter> out_exporter_;
  std::unique_ptr<shm::Pool> out_pool_;
  std::unordered_map<uint64_t, shm::Lease> out_leases_;  // shared, not yet given back
  OutputSlots out_slots_{this};  // pooled buffers lent to calls writing their output in place
  bool draining_ = false;
  bool stopped_ = false;
  bool host_gone_ = false;
  int exit_code_ = 0;
};

void ChannelSink::sink_it_(const spdlog::details::log_msg& msg) {
  server_->send_log(static_cast<int>(msg.level), std::string(msg.payload.data(), msg.payload.size()));
}

}  // namespace


// The ring pair the host offered as the first message on the side channel (sent before
// we were started, so it waits there; 5 s is for a host that is very slow indeed).
Result<std::shared_ptr<proto::RingLink>> receive_ring(const ServeOptions& o) {
  if (o.side_fd < 0) return make_error(Code::InvalidArgument, "--ring-bytes needs --side-fd");
  pollfd p{o.side_fd, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) return make_error(Code::Unavailable, "the host offered no ring within 5 s");
  auto got = shm::recv_fds(o.side_fd, shm::kSideMessageBytes + 1, 2, /*nonblocking=*/true);
  if (!got.ok()) return got.take_error();
  if (!got->has_value()) return make_error(Code::Unavailable, "the host offered no ring");
  auto m = shm::parse_side_message((*got)->bytes, std::move((*got)->fds));
  if (!m.ok()) return m.take_error();
  if (m->kind != shm::SideMessage::Kind::kRing || m->size != o.ring_bytes) {
    return make_error(Code::InvalidArgument, "the first side message is not a ring of " + std::to_string(o.ring_bytes) + " bytes");
  }
  auto pair = proto::RingPair::attach(m->fd.release(), o.ring_bytes);
  if (!pair.ok()) return pair.take_error();
  return proto::RingLink::peer(std::move(*pair));
}

int serve(const ServeOptions& options) {
  // The sandbox's first step, while this process has one thread (namespaces and
  // capabilities are per thread; V8 starts threads).
  sandbox::Report report;
  if (auto st = sandbox::enter(options.sandbox, report); !st.ok()) {
    std::fprintf(stderr, "airlock-extension: sandbox: %s\n", st.error().message.c_str());
    return 4;
  }
  // Die with the host: PDEATHSIG covers a crash after this point (set after the
  // credentials changed: that clears it), the check covers one before it (our parent may
  // already be gone and we were re-parented).
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (options.parent_pid != 0 && getppid() != options.parent_pid) return 3;
  signal(SIGPIPE, SIG_IGN);
  std::shared_ptr<proto::RingLink> ring;
  if (options.ring_bytes > 0) {
    auto r = receive_ring(options);
    if (!r.ok()) {
      std::fprintf(stderr, "airlock-extension: shared-memory ring: %s\n", r.error().message.c_str());
      return 5;
    }
    ring = std::move(*r);
  }
  Server server(options, std::move(report), std::move(ring));
  return server.run();
}

}  // namespace airlock::serve
