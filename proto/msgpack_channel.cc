// The msgpack channel: length-prefixed msgpack frames on the socket, driven by libuv.
// Writes go out at once with uv_try_write when the socket has room; the rest is queued
// and frames sent meanwhile are coalesced into the next write (one syscall for many
// small frames, which a burst of 1,000 calls needs: the socket buffer holds ~280).
#include <unistd.h>

#include "airlock/channel.h"
#include "airlock/msgpack_codec.h"
#include "channel_internal.h"

namespace airlock::proto {
namespace {

class MsgpackChannel;

// Owned by the libuv handle once started, so it outlives the Channel object until the
// handle's close callback has run.
struct PipeState {
  uv_pipe_t pipe{};
  MsgpackChannel* owner = nullptr;  // null once the Channel is gone
  MsgpackDecoder decoder;
  std::string queued;    // encoded frames waiting for the write in flight
  std::string writing;   // the bytes of the write in flight
  bool write_in_flight = false;
  explicit PipeState(uint32_t max_frame) : decoder(max_frame) {}
};

class MsgpackChannel final : public Channel {
 public:
  MsgpackChannel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued)
      : max_frame_(max_frame), max_queued_(max_queued) {
    st_ = new PipeState(max_frame);
    st_->owner = this;
    uv_pipe_init(loop, &st_->pipe, 0);
    st_->pipe.data = st_;
    if (uv_pipe_open(&st_->pipe, fd) != 0) {
      ::close(fd);
      open_ = false;
    }
  }
  ~MsgpackChannel() override { close(); }

  void start(ChannelCallbacks cb) override {
    cb_ = std::move(cb);
    if (!open_) return;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&st_->pipe),
        [](uv_handle_t* h, size_t suggested, uv_buf_t* buf) {
          // Read straight into the decoder: a large frame's body is never copied twice.
          auto span = static_cast<PipeState*>(h->data)->decoder.prepare(suggested);
          *buf = uv_buf_init(span.data(), static_cast<unsigned>(std::min<size_t>(span.size(), 1u << 30)));
        },
        [](uv_stream_t* h, ssize_t n, const uv_buf_t* buf) {
          auto* s = static_cast<PipeState*>(h->data);
          if (s->owner) s->owner->on_read(n, buf);
        });
  }

  Status send(const Frame& f) override {
    if (!open_) return make_error(Code::Unavailable, "channel closed");
    if (const size_t q = queued_bytes(); q > 0 && q + inline_bytes(f) > max_queued_) return queue_full_error(q, max_queued_);
    size_t before = st_->queued.size();
    if (auto s = encode_msgpack(f, st_->queued, max_frame_); !s.ok()) {
      st_->queued.resize(before);
      return s;
    }
    if (!st_->write_in_flight) flush();
    return ok_status();
  }

  void close() override {
    if (!st_) return;
    st_->owner = nullptr;
    open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&st_->pipe), [](uv_handle_t* h) { delete static_cast<PipeState*>(h->data); });
    st_ = nullptr;
  }

  Encoding encoding() const override { return Encoding::Msgpack; }
  size_t queued_bytes() const override { return st_ ? st_->queued.size() + st_->writing.size() : 0; }

  void on_read(ssize_t n, const uv_buf_t* buf) {
    if (n < 0) {
      return fail(make_error(Code::Unavailable, n == UV_EOF ? "peer closed the connection"
                                                             : std::string("read failed: ") + uv_strerror(static_cast<int>(n))));
    }
    (void)buf;
    st_->decoder.commit(static_cast<size_t>(n));
    // on_frame may close or even destroy this channel: check a token it cannot outlive.
    std::weak_ptr<int> alive = alive_;
    while (!alive.expired() && open_) {
      auto next = st_->decoder.next();
      if (!next) break;
      if (!next->ok()) return fail(next->take_error());
      if (cb_.on_frame) cb_.on_frame(std::move(next->value()));
    }
  }

 private:
  // Empties a buffer; a large one gives its memory back (one 50 MiB frame must not stay
  // resident per channel).
  static void reset(std::string& s) {
    if (s.capacity() > (1u << 20)) {
      std::string().swap(s);
    } else {
      s.clear();
    }
  }

  void flush() {
    size_t off = 0;  // an offset, not erase(): erasing the front of a large frame per partial write is quadratic
    while (open_ && off < st_->queued.size()) {
      size_t len = std::min<size_t>(st_->queued.size() - off, 1u << 30);
      uv_buf_t b = uv_buf_init(st_->queued.data() + off, static_cast<unsigned>(len));
      int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&st_->pipe), &b, 1);
      if (n == UV_EAGAIN) break;
      if (n < 0) return fail(make_error(Code::Unavailable, std::string("write failed: ") + uv_strerror(n)));
      off += static_cast<size_t>(n);
    }
    if (!open_) return;
    if (off == st_->queued.size()) return reset(st_->queued);
    st_->writing.swap(st_->queued);
    reset(st_->queued);
    st_->write_in_flight = true;
    auto* req = new uv_write_t;
    req->data = st_;
    uv_buf_t b = uv_buf_init(st_->writing.data() + off, static_cast<unsigned>(st_->writing.size() - off));
    uv_write(req, reinterpret_cast<uv_stream_t*>(&st_->pipe), &b, 1, [](uv_write_t* r, int status) {
      auto* s = static_cast<PipeState*>(r->data);
      delete r;
      s->write_in_flight = false;
      reset(s->writing);
      if (!s->owner) return;
      if (status < 0) return s->owner->fail(make_error(Code::Unavailable, std::string("write failed: ") + uv_strerror(status)));
      s->owner->flush();
    });
  }

  void fail(const Error& e) {
    if (!open_) return;
    auto cb = std::move(cb_.on_closed);
    close();
    if (cb) cb(e);
  }

  uint32_t max_frame_;
  size_t max_queued_;
  PipeState* st_ = nullptr;
  bool open_ = true;
  ChannelCallbacks cb_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace

std::unique_ptr<Channel> make_msgpack_channel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued) {
  return std::make_unique<MsgpackChannel>(loop, fd, max_frame, max_queued);
}

}  // namespace airlock::proto
