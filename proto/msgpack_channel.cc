// The msgpack channel: length-prefixed msgpack frames on the socket, driven by libuv.
//
// The socket is watched with a uv_poll_t and read and written with plain recv/send, so
// that a thread other than the loop's may write too (DirectSender): a caller's request
// goes out on the caller's thread instead of waking the loop thread to send it, one
// thread wake-up fewer per call. One mutex (WriteSide::mu) orders every write, the
// loop's and the callers'; frames are encoded outside it.
//
// Writes go out at once when the socket has room; what does not fit is queued, and
// frames sent meanwhile are appended (one syscall for many small frames, which a burst
// of 1,000 calls needs: the socket buffer holds ~280). Only the loop thread watches for
// writability; a caller that leaves bytes queued wakes it (uv_async_t) to do so.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "airlock/channel.h"
#include "airlock/msgpack_codec.h"
#include "channel_internal.h"

namespace airlock::proto {
namespace {

class MsgpackChannel;

// Empties a buffer; a large one gives its memory back (one 50 MiB frame must not stay
// resident per channel).
void reset(std::string& s) {
  if (s.capacity() > (1u << 20)) {
    std::string().swap(s);
  } else {
    s.clear();
  }
}

// The writing half, shared by the channel and any DirectSender holder.
struct WriteSide final : DirectSender {
  WriteSide(int fd, uint32_t max_frame, size_t max_queued) : fd(fd), max_frame(max_frame), max_queued(max_queued) {}

  std::mutex mu;
  const int fd;               // written only while `open`, under mu (closed after that)
  bool open = true;           // [mu]
  std::string queued;         // [mu] encoded bytes not yet written, from `off`
  size_t off = 0;             // [mu]
  uv_async_t* wake = nullptr;  // [mu] asks the loop to watch for writability; null once closed
  std::atomic<size_t> waiting{0};  // queued.size() - off, readable anywhere
  const uint32_t max_frame;
  const size_t max_queued;

  // [mu held] Writes what the socket takes. 0: all written; EAGAIN: some left; else the
  // errno of a failed write.
  int write_some() {
    while (off < queued.size()) {
      const ssize_t n = ::send(fd, queued.data() + off, queued.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno == EWOULDBLOCK ? EAGAIN : errno;
        waiting = queued.size() - off;
        return err;
      }
      off += static_cast<size_t>(n);
    }
    off = 0;
    reset(queued);
    waiting = 0;
    return 0;
  }

  bool try_send(const Frame& f) override {
    thread_local std::string frame;
    frame.clear();
    if (!encode_msgpack(f, frame, max_frame).ok()) return false;
    std::lock_guard lk(mu);
    if (!open) return false;
    if (const size_t q = queued.size() - off; q > 0) {
      // The loop is already waiting for room: append behind what waits.
      if (q + frame.size() > max_queued) return false;
      queued.append(frame);
      waiting = queued.size() - off;
      return true;
    }
    queued.swap(frame);
    const int err = write_some();
    if (err == 0) return true;
    if (err == EAGAIN) {
      if (off == 0) {
        // Nothing went out: give it back to the caller unchanged.
        queued.swap(frame);
        waiting = 0;
        return false;
      }
      uv_async_send(wake);  // the tail is the loop's to finish
      return true;
    }
    // A write that failed wrote nothing of this frame (a partial write would have
    // returned first): the loop's own send sees the same error and closes the channel.
    off = 0;
    queued.swap(frame);
    reset(queued);
    waiting = 0;
    return false;
  }
};

// Owned by the libuv handles once started, so it outlives the Channel object until both
// handles' close callbacks have run.
struct LoopState {
  uv_poll_t poll{};
  uv_async_t async{};
  int handles_open = 2;
  MsgpackChannel* owner = nullptr;  // null once the Channel is gone
  MsgpackDecoder decoder;
  std::shared_ptr<WriteSide> w;
  explicit LoopState(uint32_t max_frame) : decoder(max_frame) {}
};

class MsgpackChannel final : public Channel {
 public:
  MsgpackChannel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued) : max_queued_(max_queued) {
    st_ = new LoopState(max_frame);
    st_->owner = this;
    st_->w = std::make_shared<WriteSide>(fd, max_frame, max_queued);
    const int fl = fcntl(fd, F_GETFL);
    open_ = fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 && uv_poll_init(loop, &st_->poll, fd) == 0;
    uv_async_init(loop, &st_->async, [](uv_async_t* a) {
      auto* s = static_cast<LoopState*>(a->data);
      if (s->owner) s->owner->update_poll();
    });
    st_->async.data = st_;
    st_->poll.data = st_;
    if (!open_) {
      // A poll handle that failed to initialise is not a handle to close.
      st_->handles_open = 1;
      st_->w->open = false;
      ::close(fd);
      st_->poll.data = nullptr;
    } else {
      st_->w->wake = &st_->async;
    }
  }
  ~MsgpackChannel() override { close(); }

  void start(ChannelCallbacks cb) override {
    cb_ = std::move(cb);
    reading_ = true;
    update_poll();
  }

  Status send(const Frame& f) override {
    if (!open_) return make_error(Code::Unavailable, "channel closed");
    scratch_.clear();
    if (auto s = encode_msgpack(f, scratch_, st_->w->max_frame); !s.ok()) return s;
    int err = 0;
    {
      WriteSide& w = *st_->w;
      std::lock_guard lk(w.mu);
      const size_t q = w.queued.size() - w.off;
      if (q > 0 && q + scratch_.size() > max_queued_) return queue_full_error(q, max_queued_);
      w.queued.append(scratch_);
      w.waiting = w.queued.size() - w.off;
      if (q == 0) err = w.write_some();
    }
    reset(scratch_);
    if (err != 0 && err != EAGAIN) {
      fail(make_error(Code::Unavailable, std::string("write failed: ") + std::strerror(err)));
      return ok_status();  // accepted, then lost with the connection, like any queued frame
    }
    if (err == EAGAIN) update_poll();
    return ok_status();
  }

  void close() override {
    if (!st_) return;
    st_->owner = nullptr;
    open_ = false;
    {
      std::lock_guard lk(st_->w->mu);
      st_->w->open = false;
      st_->w->wake = nullptr;
    }
    auto done = [](uv_handle_t* h) {
      auto* s = static_cast<LoopState*>(h->data);
      if (--s->handles_open > 0) return;
      if (s->poll.data) ::close(s->w->fd);  // no writer can reach it now: `open` is false
      delete s;
    };
    if (st_->poll.data) {
      uv_poll_stop(&st_->poll);
      uv_close(reinterpret_cast<uv_handle_t*>(&st_->poll), done);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&st_->async), done);
    st_ = nullptr;
  }

  Encoding encoding() const override { return Encoding::Msgpack; }
  size_t queued_bytes() const override { return st_ ? st_->w->waiting.load() : 0; }
  std::shared_ptr<DirectSender> direct_sender() override { return st_ ? st_->w : nullptr; }

 private:
  // Watches for what is wanted now: input once started, room while bytes wait.
  void update_poll() {
    if (!open_) return;
    const int events = (reading_ ? UV_READABLE : 0) | (st_->w->waiting.load() > 0 ? UV_WRITABLE : 0);
    if (events == 0) {
      uv_poll_stop(&st_->poll);
      return;
    }
    uv_poll_start(&st_->poll, events, [](uv_poll_t* p, int status, int ev) {
      auto* s = static_cast<LoopState*>(p->data);
      if (s->owner) s->owner->on_poll(status, ev);
    });
  }

  void on_poll(int status, int events) {
    if (status < 0) return fail(make_error(Code::Unavailable, std::string("poll failed: ") + uv_strerror(status)));
    std::weak_ptr<int> alive = alive_;
    if (events & UV_WRITABLE) {
      int err;
      {
        std::lock_guard lk(st_->w->mu);
        err = st_->w->write_some();
      }
      if (err != 0 && err != EAGAIN) return fail(make_error(Code::Unavailable, std::string("write failed: ") + std::strerror(err)));
      if (err == 0) update_poll();
    }
    if ((events & UV_READABLE) && !alive.expired() && open_) read_all();
  }

  // Reads until the socket is drained (at most 32 reads per wake-up, as libuv does, so
  // one busy peer cannot hold the loop), straight into the decoder's buffer: a large
  // frame's body is never copied twice.
  void read_all() {
    std::weak_ptr<int> alive = alive_;
    for (int i = 0; i < 32 && !alive.expired() && open_; i++) {
      auto span = st_->decoder.prepare(64 * 1024);
      const size_t want = std::min<size_t>(span.size(), 1u << 30);
      const ssize_t n = ::recv(st_->w->fd, span.data(), want, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        return fail(make_error(Code::Unavailable, std::string("read failed: ") + std::strerror(errno)));
      }
      if (n == 0) return fail(make_error(Code::Unavailable, "peer closed the connection"));
      st_->decoder.commit(static_cast<size_t>(n));
      // on_frame may close or even destroy this channel: check a token it cannot outlive.
      while (!alive.expired() && open_) {
        auto next = st_->decoder.next();
        if (!next) break;
        if (!next->ok()) return fail(next->take_error());
        if (cb_.on_frame) cb_.on_frame(std::move(next->value()));
      }
      if (static_cast<size_t>(n) < want) return;  // drained
    }
  }

  void fail(const Error& e) {
    if (!open_) return;
    auto cb = std::move(cb_.on_closed);
    close();
    if (cb) cb(e);
  }

  size_t max_queued_;
  LoopState* st_ = nullptr;
  bool open_ = true;
  bool reading_ = false;
  std::string scratch_;  // [loop] a frame being encoded
  ChannelCallbacks cb_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace

std::unique_ptr<Channel> make_msgpack_channel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued) {
  return std::make_unique<MsgpackChannel>(loop, fd, max_frame, max_queued);
}

}  // namespace airlock::proto
