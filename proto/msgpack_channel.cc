// The msgpack channel: length-prefixed msgpack frames on the socket, driven by libuv.
//
// The socket is read and written with plain recv/send, so that threads other than the
// loop's may use it too: a caller's request goes out on the caller's thread
// (DirectSender) instead of waking the loop thread to send it, and a caller waiting for
// its answer may read the socket itself (DirectReader, "leader/follower"), so the answer
// wakes that thread only. A small call then wakes 2 threads (extension, caller), as a
// bare ping-pong does, instead of 3 (extension, loop, caller).
//
// Writing: one mutex (WriteSide::mu) orders every write, the loop's and the callers';
// frames are encoded outside it. Writes go out at once when the socket has room; what
// does not fit is queued, and frames sent meanwhile are appended (one syscall for many
// small frames, which a burst of 1,000 calls needs: the socket buffer holds ~280). Only
// the loop thread watches for writability; a caller that leaves bytes queued wakes it
// (uv_async_t) to do so.
//
// Reading: one mutex (ReadSide::mu) is the right to read; the loop takes it when it can
// (try_lock), a leader while it waits. The loop does not watch the socket itself but an
// epoll set holding it, so that a leader can take the socket out of the loop's sight
// (EPOLL_CTL_DEL, then ADD when it is done: ADD reports data that came meanwhile) and the
// loop thread sleeps through the answer. A leader hands the loop every frame it does not
// consume, and from the first such frame on all frames go to the loop (`backlog`), so
// frames are handled in the order they came; while the loop has frames to handle, no
// thread leads.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

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
  size_t queued_bytes() const override { return waiting.load(); }
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

// The reading half, shared by the channel, the loop's handles and any DirectReader
// holder (a leader keeps it alive while it reads).
struct ReadSide final : DirectReader {
  ReadSide(int fd, int epfd, int wakefd, uint32_t max_frame, std::shared_ptr<WriteSide> w)
      : fd(fd), epfd(epfd), wakefd(wakefd), decoder(max_frame), w(std::move(w)) {}

  const int fd;      // the socket (owned by WriteSide's user: closed with the handles)
  const int epfd;    // the epoll set the loop's uv_poll_t watches; holds fd or nothing
  const int wakefd;  // eventfd a leader polls beside fd: closing, or interrupt()
  std::mutex mu;     // the right to read fd
  MsgpackDecoder decoder;  // [mu]
  std::mutex backlog_mu;
  std::vector<Result<Frame>> backlog;  // [backlog_mu] read by a leader, for the loop, in order
  // Frames read (by anyone) and not yet handled by the loop: while any, no one leads.
  std::atomic<size_t> unprocessed{0};
  std::atomic<bool> closing{false};
  const std::shared_ptr<WriteSide> w;

  // What the loop watches fd for: input unless a leader reads, room while bytes wait.
  std::mutex interest_mu;
  bool loop_reads = false;   // [interest_mu]
  bool loop_writes = false;  // [interest_mu]
  int leading = 0;           // [interest_mu] leaders in or leaving lead()
  uint32_t registered = 0;   // [interest_mu] the events fd is in epfd with (0: not in it)

  // [interest_mu] Out of the set rather than in it with no events: EPOLLHUP is
  // reported whatever was asked for, and would wake the loop while a leader reads.
  void apply_interest() {
    const uint32_t want = (loop_reads && leading == 0 ? EPOLLIN : 0u) | (loop_writes ? EPOLLOUT : 0u);
    if (want == registered || closing.load()) return;
    epoll_event ev{};
    ev.events = want;
    const int op = want == 0 ? EPOLL_CTL_DEL : registered == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(epfd, op, fd, &ev) == 0) {
      registered = want;
      return;
    }
    // Unwatched, the socket would be read by no one: the channel ends instead (on the
    // loop thread, which on_async tells).
    watch_failed = errno;
    std::lock_guard wl(w->mu);
    if (w->wake) uv_async_send(w->wake);
  }
  std::atomic<int> watch_failed{0};  // errno of an epoll_ctl that failed
  void set_interest(bool reads, bool writes) {
    std::lock_guard lk(interest_mu);
    loop_reads = reads;
    loop_writes = writes;
    apply_interest();
  }
  void add_leader(int d) {
    std::lock_guard lk(interest_mu);
    leading += d;
    apply_interest();
  }

  void hand_to_loop(Result<Frame>&& f) {
    std::lock_guard lk(backlog_mu);
    backlog.push_back(std::move(f));
    unprocessed++;
  }

  std::function<bool(Frame&)> take;  // ChannelCallbacks::take, set by start() before anyone leads

  bool lead(const std::function<bool()>& finished, std::chrono::steady_clock::time_point until) override {
    if (!take || closing.load() || unprocessed.load() != 0) return false;
    std::unique_lock lk(mu, std::try_to_lock);
    if (!lk.owns_lock() || closing.load()) return false;
    add_leader(+1);
    bool handed = false;
    // Whatever happens in here (an allocation that fails), the socket goes back to the
    // loop's set and what was handed over is announced.
    struct StepDown {
      ReadSide& r;
      std::unique_lock<std::mutex>& lk;
      bool& handed;
      ~StepDown() {
        if (lk.owns_lock()) lk.unlock();
        r.add_leader(-1);
        if (handed) {
          std::lock_guard wl(r.w->mu);
          if (r.w->wake) uv_async_send(r.w->wake);  // the loop handles the backlog
        }
      }
    } step_down{*this, lk, handed};
    while (!handed && !closing.load() && unprocessed.load() == 0 && !finished()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0) break;
      pollfd p[2] = {{fd, POLLIN, 0}, {wakefd, POLLIN, 0}};
      const int r = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      if (p[1].revents & POLLIN) {
        uint64_t v;
        (void)!::read(wakefd, &v, sizeof v);
        continue;  // look at finished() and closing again
      }
      if (p[0].revents == 0) continue;
      const Read got = read_some();
      if (got == Read::Ended) break;  // back in the loop's set, the loop sees the end itself
      handed = got == Read::Handed;
    }
    return handed;
  }

  enum class Read { Drained, Handed, Ended };
  // [mu held, leader] Reads until the socket is drained (Drained), a frame or an error
  // went to the backlog (Handed), or the peer closed or the read failed (Ended).
  Read read_some() {
    for (;;) {
      auto span = decoder.prepare(64 * 1024);
      const size_t want = std::min<size_t>(span.size(), 1u << 30);
      const ssize_t n = ::recv(fd, span.data(), want, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Read::Drained;
      if (n <= 0) return Read::Ended;
      decoder.commit(static_cast<size_t>(n));
      bool handed = false;
      while (auto next = decoder.next()) {
        if (!next->ok()) {
          hand_to_loop(std::move(*next));
          return Read::Handed;  // the stream is unusable: nothing after this is read
        }
        if (!handed && take_safely(next->value())) continue;
        hand_to_loop(std::move(*next));
        handed = true;
      }
      if (handed) return Read::Handed;
      if (static_cast<size_t>(n) < want) return Read::Drained;
    }
  }

  // `take`, and should it throw, the loop's frame after all.
  bool take_safely(Frame& f) {
    try {
      return take(f);
    } catch (...) {
      return false;
    }
  }

  void interrupt() override {
    {
      std::lock_guard lk(interest_mu);
      if (leading == 0 || closing.load()) return;
    }
    wake_leader();
  }
  void wake_leader() {
    const uint64_t one = 1;
    (void)!::write(wakefd, &one, sizeof one);
  }
};

// Owned by the libuv handles once started, so it outlives the Channel object until both
// handles' close callbacks have run.
struct LoopState {
  uv_poll_t poll{};
  uv_async_t async{};
  // Spinning (HostOptions::spin, off by default): an idle handle makes libuv poll with
  // a zero timeout while it is active. Started when this channel handled or sent a
  // frame, it stops itself `spin_ns` after the last one, and yields at each turn (a
  // thread this CPU runs for us goes first). On a 2-vCPU VM a wake-up across vCPUs
  // costs ~50 µs, and a chain crosses the host's loop and the extensions' at every hop.
  // rpc_bench --quick, 3 runs each, medians, spin 0 -> 30 µs:
  //   chain_host_ext_host_ext  199 / 160 / 258 -> 88 / 33 / 34 µs
  //   chain_host_ext_host       93 /  82 / 166 -> 51 / 20 / 20 µs
  //   recursion_depth_8        316 / 259 / 279 -> 176 / 158 / 214 µs
  //   small_int                 11 /  61 /  11 -> 34 / 34 / 11 µs
  // small_int is read by its caller, not a loop: a spinning extension keeps its vCPU
  // busy, the caller then wakes on the other one. Hence off unless chains matter more.
  // (Spinning only after sending a request, or only in the host, measured worse.) At
  // most spin_ns of CPU per burst of frames; a busy loop pays nothing.
  uv_idle_t idle{};
  uint64_t spin_ns = 0, spin_until = 0;
  int handles_open = 3;
  void spin() {
    if (spin_ns == 0) return;
    spin_until = uv_hrtime() + spin_ns;
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&idle))) {
      uv_idle_start(&idle, [](uv_idle_t* h) {
        auto* s = static_cast<LoopState*>(h->data);
        if (uv_hrtime() >= s->spin_until) {
          uv_idle_stop(h);
          return;
        }
        // The peer may be waiting for this CPU (it answers us on the same one): it
        // goes first. Without this a small call took 24-37 µs instead of 11.
        sched_yield();
      });
    }
  }
  MsgpackChannel* owner = nullptr;  // null once the Channel is gone
  std::shared_ptr<WriteSide> w;
  std::shared_ptr<ReadSide> r;
};

class MsgpackChannel final : public Channel {
 public:
  MsgpackChannel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued, uint32_t spin_us)
      : max_queued_(max_queued) {
    st_ = new LoopState();
    st_->owner = this;
    st_->w = std::make_shared<WriteSide>(fd, max_frame, max_queued);
    const int epfd = epoll_create1(EPOLL_CLOEXEC);
    const int wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    st_->r = std::make_shared<ReadSide>(fd, epfd, wakefd, max_frame, st_->w);
    const int fl = fcntl(fd, F_GETFL);
    open_ = epfd >= 0 && wakefd >= 0 && fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 &&
            uv_poll_init(loop, &st_->poll, epfd) == 0;
    uv_idle_init(loop, &st_->idle);
    st_->idle.data = st_;
    st_->spin_ns = uint64_t(spin_us) * 1000;
    uv_async_init(loop, &st_->async, [](uv_async_t* a) {
      auto* s = static_cast<LoopState*>(a->data);
      if (s->owner) s->owner->on_async();
    });
    st_->async.data = st_;
    st_->poll.data = st_;
    if (!open_) {
      // A poll handle that failed to initialise is not a handle to close.
      st_->handles_open = 2;
      st_->w->open = false;
      st_->r->closing = true;
      close_fds(*st_->r);
      st_->poll.data = nullptr;
    } else {
      st_->w->wake = &st_->async;
    }
  }
  ~MsgpackChannel() override { close(); }

  void start(ChannelCallbacks cb) override {
    cb_ = std::move(cb);
    reading_ = true;
    if (!open_) return;
    st_->r->take = cb_.take;
    uv_poll_start(&st_->poll, UV_READABLE, [](uv_poll_t* p, int status, int) {
      auto* s = static_cast<LoopState*>(p->data);
      if (s->owner) s->owner->on_poll(status);
    });
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
    st_->spin();  // its answer, or a chain's next frame, is on its way
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
    // A leader polls the socket: wake it and wait for it to let go (it does at once),
    // so that no thread polls or reads the socket once it is closed. (A channel that
    // never opened closed its fds already: nothing to wake, and the number may be reused.)
    ReadSide& r = *st_->r;
    const bool had_fds = !r.closing.exchange(true);
    if (had_fds) r.wake_leader();
    { std::lock_guard wait_for_leader(r.mu); }
    {
      std::lock_guard lk(r.backlog_mu);
      r.backlog.clear();
      r.unprocessed = 0;
    }
    auto done = [](uv_handle_t* h) {
      auto* s = static_cast<LoopState*>(h->data);
      if (--s->handles_open > 0) return;
      if (s->poll.data) close_fds(*s->r);  // no thread can reach them now: `open` and `closing` are set
      delete s;
    };
    if (st_->poll.data) {
      uv_poll_stop(&st_->poll);
      uv_close(reinterpret_cast<uv_handle_t*>(&st_->poll), done);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&st_->async), done);
    uv_idle_stop(&st_->idle);
    uv_close(reinterpret_cast<uv_handle_t*>(&st_->idle), done);
    st_ = nullptr;
  }

  Encoding encoding() const override { return Encoding::Msgpack; }
  size_t queued_bytes() const override { return st_ ? st_->w->waiting.load() : 0; }
  std::shared_ptr<DirectSender> direct_sender() override { return st_ ? st_->w : nullptr; }
  std::shared_ptr<DirectReader> direct_reader() override { return st_ ? st_->r : nullptr; }

 private:
  static void close_fds(ReadSide& r) {
    ::close(r.fd);
    if (r.epfd >= 0) ::close(r.epfd);
    if (r.wakefd >= 0) ::close(r.wakefd);
  }

  // Watches for what is wanted now: input once started, room while bytes wait.
  void update_poll() {
    if (!open_) return;
    st_->r->set_interest(reading_, st_->w->waiting.load() > 0);
  }

  // A caller left bytes queued (watch for room), a leader handed frames over, or the
  // socket could not be put back into the loop's set.
  void on_async() {
    std::weak_ptr<int> alive = alive_;
    if (const int err = st_->r->watch_failed.load()) {
      return fail(make_error(Code::Unavailable, std::string("cannot watch the socket: ") + std::strerror(err)));
    }
    update_poll();
    if (!alive.expired() && open_) handle_backlog();
  }

  void on_poll(int status) {
    if (status < 0) return fail(make_error(Code::Unavailable, std::string("poll failed: ") + uv_strerror(status)));
    epoll_event ev{};
    if (epoll_wait(st_->r->epfd, &ev, 1, 0) != 1) return;  // a leader took the socket meanwhile
    std::weak_ptr<int> alive = alive_;
    if (ev.events & (EPOLLOUT | EPOLLERR)) {
      int err;
      {
        std::lock_guard lk(st_->w->mu);
        err = st_->w->write_some();
      }
      if (err != 0 && err != EAGAIN) return fail(make_error(Code::Unavailable, std::string("write failed: ") + std::strerror(err)));
      if (err == 0) update_poll();
    }
    if ((ev.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !alive.expired() && open_ && reading_) read_all();
    if (!alive.expired() && open_) st_->spin();  // the next frame of a chain is on its way
  }

  // Frames a leader read and did not consume, handled before anything read after them.
  void handle_backlog() {
    std::vector<Result<Frame>> got;
    {
      std::lock_guard lk(st_->r->backlog_mu);
      got.swap(st_->r->backlog);
    }
    handle(got);
  }

  // Handles frames in order; stops (and forgets the rest) once the channel has closed.
  // Each is counted as handled only after its callback, so no leader takes a later
  // frame while an earlier one is being handled.
  void handle(std::vector<Result<Frame>>& frames) {
    std::shared_ptr<ReadSide> r = st_->r;  // on_frame may close or even destroy this channel
    std::weak_ptr<int> alive = alive_;
    size_t i = 0;
    for (; i < frames.size() && !alive.expired() && open_; i++) {
      if (!frames[i].ok()) {
        r->unprocessed -= frames.size() - i;
        return fail(frames[i].take_error());
      }
      if (cb_.on_frame) cb_.on_frame(std::move(frames[i].value()));
      if (!r->closing.load()) r->unprocessed--;  // closing zeroed it
    }
    if (i < frames.size() && !r->closing.load()) r->unprocessed -= frames.size() - i;
  }

  // Reads until the socket is drained (at most 32 reads per wake-up, as libuv does, so
  // one busy peer cannot hold the loop), straight into the decoder's buffer: a large
  // frame's body is never copied twice. A leader holding the socket reads it instead.
  void read_all() {
    std::weak_ptr<int> alive = alive_;
    std::shared_ptr<ReadSide> r = st_->r;
    for (int i = 0; i < 32 && !alive.expired() && open_; i++) {
      std::vector<Result<Frame>> frames;
      bool drained = false;
      std::optional<Error> end;
      {
        std::unique_lock lk(r->mu, std::try_to_lock);
        if (!lk.owns_lock()) return;
        {
          std::lock_guard bl(r->backlog_mu);  // a leader's frames came first
          frames.swap(r->backlog);
        }
        auto span = r->decoder.prepare(64 * 1024);
        const size_t want = std::min<size_t>(span.size(), 1u << 30);
        const ssize_t n = ::recv(r->fd, span.data(), want, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) {
          drained = false;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          drained = true;
        } else if (n < 0) {
          end = make_error(Code::Unavailable, std::string("read failed: ") + std::strerror(errno));
        } else if (n == 0) {
          end = make_error(Code::Unavailable, "peer closed the connection");
        } else {
          r->decoder.commit(static_cast<size_t>(n));
          while (auto next = r->decoder.next()) {
            const bool bad = !next->ok();
            frames.push_back(std::move(*next));
            r->unprocessed++;
            if (bad) break;
          }
          drained = static_cast<size_t>(n) < want;
        }
      }
      handle(frames);
      if (end && !alive.expired() && open_) return fail(*end);
      if (drained) return;
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

std::unique_ptr<Channel> make_msgpack_channel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued,
                                              uint32_t spin_us) {
  return std::make_unique<MsgpackChannel>(loop, fd, max_frame, max_queued, spin_us);
}

}  // namespace airlock::proto
