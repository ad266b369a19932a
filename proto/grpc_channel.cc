// The gRPC channel: one bidi stream (Extension.Session) over the inherited socket. The host
// is the client (a channel made from the fd); the extension is a server with no listening
// port, the fd added to it as its only connection.
//
// gRPC's async API with one completion-queue thread per channel. That thread is also the
// one gRPC polls the socket on, so a frame is read, parsed, decoded (from_proto) and queued
// for the loop on one thread, and a uv_async_t wakes the loop: two wake-ups per frame where
// msgpack has one. A frame ChannelCallbacks::take consumes (the answer a caller blocked in
// Extension::call waits for) is completed on the CQ thread instead, when nothing waits for
// the loop: the caller is woken straight from there. (The callback API, tried first, runs reactions on a shared pool of
// poller threads that hand work to each other: 26 context switches per round trip instead
// of 18, and a ~30% slower round trip, measured here.)
//
// send() encodes on the calling thread (the loop's, or through direct_sender() a caller's)
// and starts the write itself when none is in flight, so the transport usually writes
// inline; otherwise the frame waits in the outbox until the CQ thread sees the previous
// write complete. One write at a time keeps the order.
//
// Every state change happens under our mutex and ends with pump(), which decides what the
// new state allows; the operations are then started outside the mutex (gRPC may write to
// the socket inline, and the other thread should not wait for that). close() joins the CQ
// thread: afterwards nothing of this channel runs anywhere.
#include <fcntl.h>
#include <grpcpp/create_channel_posix.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "airlock.grpc.pb.h"
#include "airlock/channel.h"
#include "airlock/proto_codec.h"
#include "channel_internal.h"

namespace airlock::proto {
namespace {

namespace v1 = airlock::v1;

// gRPC's own message limits sit above max_frame so that our exact check (check_frame_size)
// is what refuses an oversized frame, with ResourceExhausted, not gRPC killing the stream.
constexpr uint32_t kGrpcLimitHeadroom = 64 * 1024;
// How long the extension waits, after the peer hung up before opening its session, for a
// session that may still be in the socket (gRPC reads it on the CQ thread).
constexpr uint64_t kHangupGraceMs = 250;
// close(): the server cancels a session still running after this.
constexpr auto kServerShutdownGrace = std::chrono::milliseconds(100);

// One CQ thread per channel, so one tag per kind of operation.
enum Tag : intptr_t { kStart = 1, kNewCall, kRead, kWrite, kFinish };
void* tag(Tag t) { return reinterpret_cast<void*>(t); }

// Decodes one message read from the stream; an error if it must end the stream.
Result<Frame> decode(v1::Frame& in, uint32_t max_frame) {
  // gRPC let up to max_frame + headroom through; the rest of the limit is ours, as in msgpack.
  if (Status s = check_frame_size(in, max_frame); !s.ok()) return s.take_error();
  return from_proto(std::move(in));
}

class GrpcChannel;

// GrpcChannel::direct_sender(): send() from a caller's thread (it is under mu_ already, as
// the CQ thread starts writes too). close() detaches it first, waiting for a send in
// progress, so it never reaches a channel that is gone.
struct GrpcDirect final : DirectSender {
  mutable std::mutex mu;
  GrpcChannel* ch = nullptr;  // [mu]
  bool try_send(const Frame& f) override;
  size_t queued_bytes() const override;
};

// The loop-side handles. On the heap and freed by the last close callback: libuv needs them
// until then, which can be after the Channel is gone.
struct LoopHandles {
  uv_async_t async{};
  uv_poll_t poll{};  // Extension role: the peer hanging up before it opened a session
  uv_timer_t grace{};
  bool watching = false;  // poll and grace were initialised
  int open = 0;           // handles still to be closed
  GrpcChannel* owner = nullptr;  // null once the Channel closed
  std::vector<Result<Frame>> batch;  // what drain() is delivering
};

class GrpcChannel final : public Channel {
 public:
  GrpcChannel(Role role, uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued)
      : role_(role), max_frame_(max_frame), max_queued_(max_queued) {
    h_ = new LoopHandles;
    h_->owner = this;
    uv_async_init(loop, &h_->async, [](uv_async_t* a) {
      auto* h = static_cast<LoopHandles*>(a->data);
      if (h->owner) h->owner->drain();
    });
    h_->async.data = h_;
    h_->open = 1;

    // Our own descriptor of the socket: close() shuts it down so the peer sees the end at
    // once whatever gRPC's teardown does, and the extension watches it for a hang-up.
    watch_fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    // gRPC makes a client's fd non-blocking but takes a server's as it is; a blocking one
    // would stall whichever thread reads it (here the loop thread, in this constructor).
    if (const int fl = fcntl(fd, F_GETFL); fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    const int limit = static_cast<int>(std::min<uint64_t>(uint64_t(max_frame) + kGrpcLimitHeadroom, INT_MAX));

    if (role == Role::Host) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(limit);
      args.SetMaxSendMessageSize(limit);
      args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      channel_ = grpc::CreateCustomInsecureChannelFromFd("airlock", fd, args);  // owns fd
      stub_ = v1::Extension::NewStub(channel_);
      client_cq_ = std::make_unique<grpc::CompletionQueue>();
      cq_ = client_cq_.get();
      cctx_ = std::make_unique<grpc::ClientContext>();
      cstream_ = stub_->PrepareAsyncSession(cctx_.get(), cq_);
      cstream_->StartCall(tag(kStart));  // reads and writes wait for its completion
    } else {
      service_ = std::make_unique<v1::Extension::AsyncService>();
      grpc::ServerBuilder b;
      b.RegisterService(service_.get());
      b.SetMaxReceiveMessageSize(limit);
      b.SetMaxSendMessageSize(limit);
      b.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      server_cq_ = b.AddCompletionQueue();
      server_ = b.BuildAndStart();  // no listening port: the fd is the only connection
      if (!server_) {
        ::close(fd);
        server_cq_->Shutdown();  // nothing was queued on it
        fail_at_start_ = make_error(Code::Unavailable, "could not start the gRPC server");
        return;
      }
      cq_ = server_cq_.get();
      grpc::AddInsecureChannelFromFd(server_.get(), fd);  // owns fd
      sctx_ = std::make_unique<grpc::ServerContext>();
      sstream_ = std::make_unique<grpc::ServerAsyncReaderWriter<v1::Frame, v1::Frame>>(sctx_.get());
      // Only this one session is ever requested: a second one would wait unserved.
      service_->RequestSession(sctx_.get(), sstream_.get(), cq_, server_cq_.get(), tag(kNewCall));
      if (watch_fd_ >= 0 && uv_poll_init(loop, &h_->poll, watch_fd_) == 0) {
        uv_timer_init(loop, &h_->grace);
        h_->poll.data = h_->grace.data = h_;
        h_->watching = true;
        h_->open += 2;
      }
    }
    cq_thread_ = std::thread([this] { run_cq(); });
  }

  ~GrpcChannel() override { close(); }

  std::shared_ptr<DirectSender> direct_sender() override {
    if (!h_ || fail_at_start_) return nullptr;
    if (!direct_) {
      direct_ = std::make_shared<GrpcDirect>();
      direct_->ch = this;
    }
    return direct_;
  }

  void start(ChannelCallbacks cb) override {
    cb_ = std::move(cb);
    if (!h_) return;
    if (cb_.take && role_ == Role::Host) {
      std::lock_guard l(mu_);
      take_ = std::make_shared<const std::function<bool(Frame&)>>(cb_.take);
    }
    started_ = true;
    if (fail_at_start_) return fail(*fail_at_start_);
    if (h_->watching) {
      // Only the hang-up: the data is gRPC's.
      uv_poll_start(&h_->poll, UV_DISCONNECT, [](uv_poll_t* p, int, int) {
        uv_poll_stop(p);  // level-triggered: once is enough
        auto* h = static_cast<LoopHandles*>(p->data);
        if (h->owner) h->owner->on_hangup();
      });
    }
    std::lock_guard l(mu_);
    if (!inbox_.empty()) uv_async_send(&h_->async);  // what arrived before start()
  }

  Status send(const Frame& f) override {
    if (!h_ || fail_at_start_) return make_error(Code::Unavailable, "channel closed");
    v1::Frame msg;
    if (Status s = encode_proto(f, &msg, max_frame_); !s.ok()) return s;
    const size_t size = msg.ByteSizeLong();
    std::unique_lock l(mu_);
    if (read_over_ || write_failed_) return make_error(Code::Unavailable, "gRPC session ended");
    if (outbox_bytes_ > 0 && outbox_bytes_ + size > max_queued_) return queue_full_error(outbox_bytes_, max_queued_);
    outbox_bytes_ += size;
    outbox_.push_back(std::move(msg));
    issue(pump(), l);  // writes it now (usually inline, on this thread) unless a write is in flight
    return ok_status();
  }

  void close() override {
    if (!h_) return;
    if (direct_) {
      std::lock_guard l(direct_->mu);
      direct_->ch = nullptr;
    }
    open_ = false;
    if (!fail_at_start_) {
      {
        std::unique_lock l(mu_);
        closed_ = true;
        inbox_.clear();
        outbox_.clear();
        outbox_bytes_ = 0;
        if (role_ == Role::Host) cctx_->TryCancel();  // local: ends the call even if the peer is stuck
        issue(pump(), l);  // server: Finish, unless the write in flight will
      }
      if (watch_fd_ >= 0) ::shutdown(watch_fd_, SHUT_RDWR);  // the peer sees the end now
      if (server_) {
        // Cancels the session if still running after the grace; then nothing more arrives.
        server_->Shutdown(std::chrono::system_clock::now() + kServerShutdownGrace);
        std::lock_guard l(mu_);
        want_shutdown_ = true;
        maybe_shutdown_cq();
      }
      cq_thread_.join();  // the client's queue shuts down once its call is over (pump())
    }
    // gRPC objects: calls before their contexts, the server before its queue.
    cstream_.reset();
    cctx_.reset();
    stub_.reset();
    channel_.reset();
    sstream_.reset();
    sctx_.reset();
    server_.reset();
    service_.reset();
    server_cq_.reset();
    client_cq_.reset();
    close_handles();
    if (watch_fd_ >= 0) ::close(watch_fd_);
    watch_fd_ = -1;
  }

  Encoding encoding() const override { return Encoding::Grpc; }
  size_t queued_bytes() const override {
    std::lock_guard l(mu_);
    return outbox_bytes_;
  }

 private:
  // ---------------------------------------------------------------- CQ thread

  void run_cq() {
    pthread_setname_np(pthread_self(), "airlock-grpc");
    void* t = nullptr;
    bool ok = false;
    while (cq_->Next(&t, &ok)) {
      switch (static_cast<Tag>(reinterpret_cast<intptr_t>(t))) {
        case kStart:
        case kNewCall: on_started(ok); break;
        case kRead: on_read(ok); break;
        case kWrite: on_written(ok); break;
        case kFinish: on_finished(); break;
      }
    }
  }

  void on_started(bool ok) {
    std::unique_lock l(mu_);
    started_call_ = true;
    if (ok) {
      ready_ = true;
    } else {  // client: the call failed to start (Finish says why); server: shutting down
      read_over_ = true;
    }
    issue(pump(), l);  // the first read, and frames sent before the session existed (Ready)
  }

  void on_read(bool ok) {
    Result<Frame> r = ok ? decode(in_, max_frame_)  // outside the lock: payloads can be large
                         : Result<Frame>(make_error(Code::Unavailable, "peer closed the connection (gRPC session ended)"));
    std::unique_lock l(mu_);
    reading_ = false;
    if (!ok) {
      read_over_ = true;
      // The server is told nothing more; the client learns why from Finish.
      if (role_ == Role::Extension) deliver(std::move(r));
    } else if (!r.ok()) {
      // A frame we refuse ends the session, as in msgpack.
      read_over_ = true;
      if (role_ == Role::Host) {
        cctx_->TryCancel();
      } else {
        finish_status_ = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, r.error().message);
      }
      deliver(std::move(r));
    } else if (!take_ || !inbox_.empty() || handling_.load() != 0 || closed_) {
      deliver(std::move(r));
    } else {
      // Nothing waits for the loop: a waiting caller's answer is completed here, on this
      // thread, and the loop thread is not woken for it (ChannelCallbacks::take). Outside
      // the lock: `take` takes the host's locks, which are held around send().
      auto take = take_;
      l.unlock();
      const bool taken = (*take)(r.value());
      l.lock();
      if (!taken) deliver(std::move(r));
    }
    issue(pump(), l);
  }

  void on_written(bool ok) {
    std::unique_lock l(mu_);
    writing_ = false;
    if (!ok) {  // the stream is broken; the read side reports why
      write_failed_ = true;
      outbox_.clear();
      outbox_bytes_ = 0;
    }
    issue(pump(), l);
  }

  void on_finished() {
    std::unique_lock l(mu_);
    finish_done_ = true;
    if (role_ == Role::Host) {
      const grpc::Status& s = finish_status_;
      deliver(make_error(Code::Unavailable,
                         s.ok() ? std::string("peer ended the gRPC session")
                                : "peer closed the connection (gRPC status " +
                                      std::to_string(static_cast<int>(s.error_code())) + ": " +
                                      s.error_message() + ")"));
    }
    issue(pump(), l);
  }

  // ---------------------------------------------------------------- state (under mu_)

  struct Ops {
    const v1::Frame* write = nullptr;
    bool read = false;
    bool finish = false;
    grpc::Status status;  // server: for Finish
    bool any() const { return write || read || finish; }
  };

  // Decides what the current state allows and marks it started. Every state change under
  // mu_ ends with it; issue() then starts the operations.
  Ops pump() {
    Ops ops;
    if (want_shutdown_) return ops;
    if (ready_ && !writing_ && !write_failed_ && !closed_ && !read_over_ && !outbox_.empty()) {
      current_ = std::move(outbox_.front());
      outbox_.pop_front();
      outbox_bytes_ -= std::min(outbox_bytes_, current_.ByteSizeLong());
      writing_ = true;
      ops.write = &current_;
    }
    if (ready_ && !reading_ && !read_over_ && !closed_) {
      reading_ = true;
      ops.read = true;
    }
    if (role_ == Role::Host) {
      // The status, once nothing more can be read (a read in flight would race it).
      if (started_call_ && !reading_ && !finishing_ && (read_over_ || closed_)) {
        finishing_ = true;
        ops.finish = true;
      }
      if (closed_ && finish_done_ && !writing_) want_shutdown_ = true;  // the call is over
    } else if (ready_ && !finishing_ && !writing_ && (read_over_ || closed_)) {
      // Not while a write is in flight: the async API forbids Finish concurrent with Write.
      finishing_ = true;
      ops.finish = true;
      ops.status = finish_status_;
    }
    if (ops.any()) ++issuing_;
    maybe_shutdown_cq();
    return ops;
  }

  // Starts what pump() decided, outside the lock. The queue is not shut down meanwhile:
  // issuing_ holds that off (an operation started on a shut-down queue is an error).
  void issue(const Ops& ops, std::unique_lock<std::mutex>& l) {
    const bool wake = std::exchange(wake_, false);
    l.unlock();
    // Valid until close() has joined this thread. Outside the lock, so that the loop
    // thread, woken, does not find it still held.
    if (wake) uv_async_send(&h_->async);
    if (!ops.any()) return;
    if (cstream_) {
      if (ops.write) cstream_->Write(*ops.write, tag(kWrite));
      if (ops.read) cstream_->Read(&in_, tag(kRead));
      if (ops.finish) cstream_->Finish(&finish_status_, tag(kFinish));
    } else {
      if (ops.write) sstream_->Write(*ops.write, tag(kWrite));
      if (ops.read) sstream_->Read(&in_, tag(kRead));
      if (ops.finish) sstream_->Finish(ops.status, tag(kFinish));
    }
    l.lock();
    --issuing_;
    maybe_shutdown_cq();
    l.unlock();
  }

  void maybe_shutdown_cq() {
    if (!want_shutdown_ || issuing_ > 0 || cq_shut_) return;
    cq_shut_ = true;
    cq_->Shutdown();  // Next() returns false once what is pending has drained
  }

  // Queues a frame or the error for the loop; issue() wakes it.
  void deliver(Result<Frame> r) {
    if (closed_ || error_queued_) return;  // the first error is the reason
    error_queued_ = !r.ok();
    if (inbox_.empty()) wake_ = true;  // otherwise a wake-up is pending already
    inbox_.push_back(std::move(r));
  }

  // ---------------------------------------------------------------- loop thread

  // The async callback: hand what the CQ thread decoded to the callbacks, in order.
  void drain() {
    if (!started_) return;
    LoopHandles* h = h_;  // stays valid during this callback even if we close meanwhile
    {
      std::lock_guard l(mu_);
      h->batch.swap(inbox_);
      handling_ = h->batch.size();  // counted down as each is handled: until then the CQ thread takes none
    }
    // By index, and checking the owner before each frame: a callback may close the
    // channel or destroy it (the rest of the batch then goes with the handles).
    for (size_t i = 0; i < h->batch.size(); ++i) {
      if (h->owner != this) return;
      Result<Frame>& r = h->batch[i];
      if (!r.ok()) {
        Error e = r.take_error();
        return fail(e);
      }
      if (cb_.on_frame) cb_.on_frame(std::move(r.value()));
      if (h->owner == this) handling_--;
    }
    if (h->owner == this) {
      h->batch.clear();
      handling_ = 0;
    }
  }

  void on_hangup() {
    {
      std::lock_guard l(mu_);
      if (ready_) return;  // the session's own read reports the end, after its last frame
    }
    uv_timer_start(
        &h_->grace,
        [](uv_timer_t* t) {
          auto* h = static_cast<LoopHandles*>(t->data);
          if (h->owner) h->owner->on_hangup_grace_over();
        },
        kHangupGraceMs, 0);
  }

  void on_hangup_grace_over() {
    {
      std::lock_guard l(mu_);
      if (ready_) return;
    }
    fail(make_error(Code::Unavailable, "peer closed the connection before opening its gRPC session"));
  }

  void fail(const Error& e) {
    if (!open_) return;
    auto cb = std::move(cb_.on_closed);
    close();
    if (cb) cb(e);
  }

  void close_handles() {
    LoopHandles* h = h_;
    h_ = nullptr;
    h->owner = nullptr;
    auto closed = [](uv_handle_t* x) {
      auto* hh = static_cast<LoopHandles*>(x->data);
      if (--hh->open == 0) delete hh;
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&h->async), closed);
    if (h->watching) {
      uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), closed);
      uv_close(reinterpret_cast<uv_handle_t*>(&h->grace), closed);
    }
  }

  const Role role_;
  const uint32_t max_frame_;
  const size_t max_queued_;
  // Loop thread only.
  bool open_ = true;
  bool started_ = false;
  std::optional<Error> fail_at_start_;
  ChannelCallbacks cb_;
  LoopHandles* h_ = nullptr;  // null once closed
  int watch_fd_ = -1;

  // gRPC objects: created by the constructor, destroyed by close() after the join.
  grpc::CompletionQueue* cq_ = nullptr;  // the one below that this role uses
  std::unique_ptr<grpc::CompletionQueue> client_cq_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Extension::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> cctx_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::Frame, v1::Frame>> cstream_;
  std::unique_ptr<grpc::ServerCompletionQueue> server_cq_;
  std::unique_ptr<v1::Extension::AsyncService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::ServerContext> sctx_;
  std::unique_ptr<grpc::ServerAsyncReaderWriter<v1::Frame, v1::Frame>> sstream_;
  std::thread cq_thread_;
  v1::Frame in_;  // CQ thread: the read in flight

  // Shared by the loop and the CQ thread.
  mutable std::mutex mu_;
  std::vector<Result<Frame>> inbox_;  // decoded frames; an error, if any, is last
  std::shared_ptr<const std::function<bool(Frame&)>> take_;  // [mu_] ChannelCallbacks::take (host)
  std::atomic<size_t> handling_{0};  // frames drain() took and has not handled yet
  bool error_queued_ = false;
  bool wake_ = false;  // deliver() queued into an empty inbox: issue() wakes the loop
  bool started_call_ = false;  // StartCall / RequestSession completed
  bool ready_ = false;         // ... successfully: the session exists
  bool closed_ = false;        // close() ran
  bool reading_ = false;       // a read is in flight (into in_)
  bool read_over_ = false;     // the read side ended: no more reads
  bool write_failed_ = false;
  bool writing_ = false;  // current_ belongs to gRPC
  bool finishing_ = false;
  bool finish_done_ = false;
  int issuing_ = 0;             // pump() decisions not yet started by issue()
  bool want_shutdown_ = false;  // start nothing more; shut the queue down when issuing_ is 0
  bool cq_shut_ = false;
  grpc::Status finish_status_;  // server: what Finish sends; client: what it received
  v1::Frame current_;
  std::deque<v1::Frame> outbox_;
  size_t outbox_bytes_ = 0;  // ByteSizeLong of what outbox_ holds
  std::shared_ptr<GrpcDirect> direct_;  // [loop] made by direct_sender()
};

bool GrpcDirect::try_send(const Frame& f) {
  std::lock_guard l(mu);
  return ch && ch->send(f).ok();
}

size_t GrpcDirect::queued_bytes() const {
  std::lock_guard l(mu);
  return ch ? ch->queued_bytes() : 0;
}

}  // namespace

std::unique_ptr<Channel> make_grpc_channel(Role role, uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued) {
  return std::make_unique<GrpcChannel>(role, loop, fd, max_frame, max_queued);
}

}  // namespace airlock::proto
