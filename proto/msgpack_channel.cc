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
//
// The ring (make_channel's `ring`, HostOptions::ring_bytes): frames travel in two
// shared-memory rings instead of the socket, and the socket carries doorbell bytes
// only, sent when the peer said it sleeps (RingReader::arm), plus the hang-up. Every
// place that sleeps therefore arms first and looks again: the loop after each read that
// emptied the ring, a leader before its poll, the spinning idle handle when it stops.
// Whoever steps down while bytes may wait in the ring (a leader) hands over to the loop.
// A ring the peer broke (an impossible index) fails the channel as a malformed frame
// does. Room: a writer that finds the ring full asks for room; the reader that frees some
// rings the writer's doorbell, which the loop sees as input on the socket.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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
#include "airlock/ring.h"
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
  WriteSide(int fd, uint32_t max_frame, size_t max_queued, std::shared_ptr<RingLink> ring)
      : fd(fd), max_frame(max_frame), max_queued(max_queued), ring(std::move(ring)) {}

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
  const std::shared_ptr<RingLink> ring;  // frames go here, the socket gets doorbells
  std::string ring_error;                // [mu] why the ring failed (write_some's EBADMSG)

  // What a failed write_some() means: a ring the peer broke is its fault
  // (InvalidArgument, as a malformed frame), anything else the connection's.
  Error write_error(int err) {
    if (err == EBADMSG && ring) {
      std::lock_guard lk(mu);
      if (!ring_error.empty()) return make_error(Code::InvalidArgument, ring_error);
    }
    return make_error(Code::Unavailable, std::string("write failed: ") + std::strerror(err));
  }

  // One byte on the socket, which the peer's epoll set watches: it said it sleeps, or
  // it waits for room we freed. A full socket holds doorbells enough. Any thread.
  int doorbell() {
    const char b = 1;
    for (;;) {
      const ssize_t n = ::send(fd, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n == 1 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) return 0;
      if (n < 0 && errno == EINTR) continue;
      return errno;
    }
  }

  // [mu held] write_some() for the ring: what fits is published, then the doorbell if
  // the reader asked for one; a full ring asks for room (the reader's doorbell answers).
  int write_ring() {
    bool wrote = false;
    int err = 0;
    while (off < queued.size()) {
      auto n = ring->out.write(std::as_bytes(std::span(queued.data() + off, queued.size() - off)));
      if (n.ok() && *n > 0) {
        off += *n;
        wrote = true;
        continue;
      }
      if (n.ok()) {
        auto room = ring->out.ask_for_room();
        if (room.ok() && *room > 0) continue;  // freed meanwhile: no doorbell will come for it
        if (room.ok()) {
          err = EAGAIN;
          break;
        }
        n = room.take_error();
      }
      ring_error = n.error().message;
      err = EBADMSG;
      break;
    }
    if (wrote && ring->out.take_sleeper()) {
      if (const int e = doorbell(); e != 0 && err == 0) err = e;
    }
    if (err != 0) {
      waiting = queued.size() - off;
      return err;
    }
    off = 0;
    reset(queued);
    waiting = 0;
    return 0;
  }

  // [mu held] Writes what the socket takes. 0: all written; EAGAIN: some left; else the
  // errno of a failed write.
  int write_some() {
    if (ring) return write_ring();
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
  ReadSide(int fd, int epfd, int wakefd, uint32_t max_frame, std::shared_ptr<WriteSide> w, uint64_t spin_ns)
      : fd(fd), epfd(epfd), wakefd(wakefd), decoder(max_frame), w(std::move(w)), ring(this->w->ring), spin_ns(spin_ns) {}

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
  const std::shared_ptr<RingLink> ring;  // w's: frames come from ring->in
  const uint64_t spin_ns;                // HostOptions::spin: a leader polls the ring this long first

  // [mu held] One move of bytes from the link into the decoder, as one recv() would:
  // how many (0: none now), or why the link ended. With the ring, `sleep` reads the
  // doorbell bytes off the socket once the ring is empty, then arms it (the caller is
  // about to sleep: the writer will ring); a closed socket ends the channel only after
  // every frame written before the close. Without `sleep` (a spinning loop) only the
  // ring is looked at: no syscall.
  struct Pulled {
    size_t n = 0;
    size_t asked = 0;
    std::optional<Error> end;
  };
  Pulled pull(bool sleep = true) {
    auto span = decoder.prepare(64 * 1024);
    const size_t want = std::min<size_t>(span.size(), 1u << 30);
    if (!ring) {
      for (;;) {
        const ssize_t n = ::recv(fd, span.data(), want, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return {0, want, {}};
        if (n < 0) return {0, want, make_error(Code::Unavailable, std::string("read failed: ") + std::strerror(errno))};
        if (n == 0) return {0, want, make_error(Code::Unavailable, "peer closed the connection")};
        decoder.commit(static_cast<size_t>(n));
        return {static_cast<size_t>(n), want, {}};
      }
    }
    for (;;) {
      auto got = ring->in.read(std::as_writable_bytes(std::span(span.data(), want)));
      if (!got.ok()) return {0, want, got.take_error()};
      if (*got > 0) {
        decoder.commit(*got);
        if (ring->in.take_waiting_writer()) (void)w->doorbell();  // it asked for room
        return {*got, want, {}};
      }
      if (!sleep) return {0, want, {}};
      // Doorbells first, then arm and look: a doorbell rung after the arm stays in the
      // socket and wakes our poll (drained after the arm, it could announce bytes the
      // look before it missed, and we would sleep through them).
      std::optional<Error> end = drain_doorbells();
      if (ring->in.readable()) continue;  // written meanwhile, perhaps just before a close
      if (end) return {0, want, std::move(end)};
      if (ring->in.arm()) continue;
      return {0, want, {}};
    }
  }

  // [mu held] Reads the doorbell bytes off the socket (at most 64 KiB a time: a peer
  // that floods them is read again on the next wake-up, level-triggered). The end of the
  // link if the peer closed it.
  std::optional<Error> drain_doorbells() {
    char sink[4096];
    for (int i = 0; i < 16; i++) {
      const ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0 && static_cast<size_t>(n) < sizeof sink) return std::nullopt;
      if (n > 0 || (n < 0 && errno == EINTR)) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
      if (n < 0) return make_error(Code::Unavailable, std::string("read failed: ") + std::strerror(errno));
      return make_error(Code::Unavailable, "peer closed the connection");
    }
    return std::nullopt;
  }

  // What the loop watches fd for: input unless a leader reads, room while bytes wait.
  std::mutex interest_mu;
  bool loop_reads = false;   // [interest_mu]
  bool loop_writes = false;  // [interest_mu]
  int leading = 0;           // [interest_mu] leaders in or leaving lead()
  uint32_t registered = 0;   // [interest_mu] the events fd is in epfd with (0: not in it)

  // [interest_mu] Out of the set rather than in it with no events: EPOLLHUP is
  // reported whatever was asked for, and would wake the loop while a leader reads.
  void apply_interest() {
    // With the ring, room is announced by a doorbell byte (input), and the socket itself
    // is always writable.
    const uint32_t want = (loop_reads && leading == 0 ? EPOLLIN : 0u) | (loop_writes && !ring ? EPOLLOUT : 0u);
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
    // Out of the loop's sight before reading the socket; with the ring only before the
    // first poll (an answer read while spinning then costs no epoll_ctl at all; a
    // doorbell meanwhile can wake the loop, which finds the read lock taken).
    bool out_of_set = false;
    auto leave_the_loops_set = [&] {
      if (!out_of_set) add_leader(+1);
      out_of_set = true;
    };
    if (!ring) leave_the_loops_set();
    bool handed = false;
    // Whatever happens in here (an allocation that fails), the socket goes back to the
    // loop's set and what was handed over is announced.
    struct StepDown {
      ReadSide& r;
      std::unique_lock<std::mutex>& lk;
      bool& handed;
      bool& out_of_set;
      ~StepDown() {
        if (lk.owns_lock()) lk.unlock();
        if (out_of_set) r.add_leader(-1);
        if (handed) {
          std::lock_guard wl(r.w->mu);
          if (r.w->wake) uv_async_send(r.w->wake);  // the loop handles the backlog
        }
      }
    } step_down{*this, lk, handed, out_of_set};
    // Leaving with bytes in the ring that no doorbell will announce (it was polled, or
    // the leader stops early): arm it, and if something came, the loop reads it.
    struct ArmOnLeave {
      ReadSide& r;
      ~ArmOnLeave() {
        if (!r.ring || r.closing.load() || !r.ring->in.arm()) return;
        std::lock_guard wl(r.w->mu);
        if (r.w->wake) uv_async_send(r.w->wake);
      }
    } arm_on_leave{*this};  // destroyed before step_down, so still under mu
    if (ring && spin_ns > 0) {
      // Polls the ring for the answer first: no doorbell on either side.
      ring->in.disarm();
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns);
      for (int turn = 0; !handed && !closing.load() && !finished() && std::chrono::steady_clock::now() < spin_until; turn++) {
        if (!ring->in.readable()) {
          // A peer this CPU runs for us goes first (now and then: each yield is a syscall).
          if (turn % 64 == 63) sched_yield();
          continue;
        }
        const Read got = read_some(/*sleep=*/false);
        if (got == Read::Ended) return false;
        handed = got == Read::Handed;
      }
    }
    while (!handed && !closing.load() && unprocessed.load() == 0 && !finished()) {
      if (ring) {
        const Read got = read_some();  // arms the ring once it is empty
        if (got == Read::Ended) break;
        // The doorbells just read may have said the peer freed room for what waits to
        // be written: the loop, whose socket we hold, cannot know, so write it here.
        write_waiting();
        if ((handed = got == Read::Handed) || finished()) break;
      }
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0) break;
      if (!out_of_set) {
        leave_the_loops_set();
        // interrupt() wakes only leaders it can see: one that ended our call before we
        // were counted has already made finished() true.
        if (finished() || closing.load()) break;
      }
      pollfd p[2] = {{fd, POLLIN, 0}, {wakefd, POLLIN, 0}};
      const int r = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      if (p[1].revents & POLLIN) {
        uint64_t v;
        (void)!::read(wakefd, &v, sizeof v);
        continue;  // look at finished() and closing again
      }
      if (p[0].revents == 0 || ring) continue;  // the ring and its doorbells: read at the top
      const Read got = read_some();
      if (got == Read::Ended) break;  // back in the loop's set, the loop sees the end itself
      handed = got == Read::Handed;
    }
    return handed;
  }

  enum class Read { Drained, Handed, Ended };
  // [mu held, leader] Reads until the link is drained (Drained), a frame or an error
  // went to the backlog (Handed), or the peer closed or the read failed (Ended). A ring
  // the peer broke is handed over as an error, which fails the channel.
  Read read_some(bool sleep = true) {
    for (;;) {
      Pulled got = pull(sleep);
      if (got.end && got.end->code == Code::InvalidArgument) {  // a broken ring: the loop fails the channel
        hand_to_loop(Result<Frame>(std::move(*got.end)));
        return Read::Handed;
      }
      if (got.end) return Read::Ended;
      if (got.n == 0) return Read::Drained;
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
      if (!ring && got.n < got.asked) return Read::Drained;
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

  // With the ring, after reading doorbells: writes what waits for room (one look at the
  // ring, asking for room again if there is none); a failed write is the loop's to
  // report, which it finds when woken.
  void write_waiting() {
    if (w->waiting.load() == 0) return;
    std::lock_guard wl(w->mu);
    const int err = w->write_some();
    if (err != 0 && err != EAGAIN && w->wake) uv_async_send(w->wake);
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
      uv_idle_start(&idle, on_idle);
    }
  }
  static void on_idle(uv_idle_t* h);  // below MsgpackChannel, which it calls
  MsgpackChannel* owner = nullptr;  // null once the Channel is gone
  std::shared_ptr<WriteSide> w;
  std::shared_ptr<ReadSide> r;
};

class MsgpackChannel final : public Channel {
 public:
  MsgpackChannel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued, uint32_t spin_us,
                 std::shared_ptr<RingLink> ring)
      : max_queued_(max_queued) {
    st_ = new LoopState();
    st_->owner = this;
    st_->w = std::make_shared<WriteSide>(fd, max_frame, max_queued, std::move(ring));
    const int epfd = epoll_create1(EPOLL_CLOEXEC);
    const int wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    st_->r = std::make_shared<ReadSide>(fd, epfd, wakefd, max_frame, st_->w, uint64_t(spin_us) * 1000);
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
    // Frames the peer wrote before we were reading: no doorbell announced them (the
    // ring starts disarmed), so arm it now and look.
    if (st_->r->ring) uv_async_send(&st_->async);
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
      fail(st_->w->write_error(err));
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
  // socket could not be put back into the loop's set; with the ring also: a leader left
  // bytes in it, the channel started, or room came while a leader held the socket.
  void on_async() {
    std::weak_ptr<int> alive = alive_;
    if (const int err = st_->r->watch_failed.load()) {
      return fail(make_error(Code::Unavailable, std::string("cannot watch the socket: ") + std::strerror(err)));
    }
    if (st_->r->ring && !flush()) return;
    update_poll();
    if (!alive.expired() && open_) handle_backlog();
    if (!alive.expired() && open_ && reading_ && st_->r->ring) read_all();
  }

  // Writes what waits (the ring may have room now). false: the channel failed.
  bool flush() {
    if (st_->w->waiting.load() == 0) return true;
    int err;
    {
      std::lock_guard lk(st_->w->mu);
      err = st_->w->write_some();
    }
    if (err != 0 && err != EAGAIN) {
      fail(st_->w->write_error(err));
      return false;
    }
    return true;
  }

 public:
  // The spinning idle handle, with the ring: reads what the ring holds without a
  // syscall; `sleep`: the last look, which arms it (the loop may sleep next).
  // The ring's sleep word is set by whoever holds the read lock: a leader arms it before
  // it polls, and only the loop spinning here disarms it (a leader's poll never sleeps
  // through a disarmed ring); the last holder arms it as it leaves.
  void poll_ring(bool sleep) {
    if (!reading_ || !open_) return;
    {
      std::unique_lock lk(st_->r->mu, std::try_to_lock);
      if (!lk.owns_lock()) return;  // a leader reads, and arms when it leaves
      if (!sleep) {
        st_->r->ring->in.disarm();
        if (!st_->r->ring->in.readable()) return;
      }
    }
    read_all(sleep);
  }

 private:

  void on_poll(int status) {
    if (status < 0) return fail(make_error(Code::Unavailable, std::string("poll failed: ") + uv_strerror(status)));
    epoll_event ev{};
    if (epoll_wait(st_->r->epfd, &ev, 1, 0) != 1) return;  // a leader took the socket meanwhile
    std::weak_ptr<int> alive = alive_;
    // With the ring any event may be the doorbell for room we asked for.
    if ((ev.events & (EPOLLOUT | EPOLLERR)) || (st_->r->ring && st_->w->waiting.load() > 0)) {
      int err;
      {
        std::lock_guard lk(st_->w->mu);
        err = st_->w->write_some();
      }
      if (err != 0 && err != EAGAIN) return fail(st_->w->write_error(err));
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

  // Reads until the link is drained (at most 32 reads per wake-up, as libuv does, so
  // one busy peer cannot hold the loop), straight into the decoder's buffer: a large
  // frame's body is never copied twice. A leader holding the socket reads it instead.
  // `sleep` (the ring): arm the ring once it is empty, and read the doorbells.
  void read_all(bool sleep = true) {
    std::weak_ptr<int> alive = alive_;
    std::shared_ptr<ReadSide> r = st_->r;
    bool drained = false;
    for (int i = 0; i < 32 && !alive.expired() && open_; i++) {
      std::vector<Result<Frame>> frames;
      std::optional<Error> end;
      {
        std::unique_lock lk(r->mu, std::try_to_lock);
        if (!lk.owns_lock()) {  // a leader reads: it takes over (after the room check below)
          drained = true;
          break;
        }
        {
          std::lock_guard bl(r->backlog_mu);  // a leader's frames came first
          frames.swap(r->backlog);
        }
        ReadSide::Pulled got = r->pull(sleep);
        end = std::move(got.end);
        if (got.n > 0) {
          while (auto next = r->decoder.next()) {
            const bool bad = !next->ok();
            frames.push_back(std::move(*next));
            r->unprocessed++;
            if (bad) break;
          }
        }
        drained = got.n == 0 || (!r->ring && got.n < got.asked);
      }
      handle(frames);
      if (end && !alive.expired() && open_) return fail(*end);
      if (drained) break;
    }
    if (!r->ring || alive.expired() || !open_) return;
    // The doorbells pull() read (`sleep`) may have said the peer freed room for bytes
    // that wait: look for room again, or no one would (a 256 KiB ring stalled an 8 MiB
    // input once a spinning loop's last look ate that doorbell).
    if (sleep && !flush()) return;
    // 32 reads and more to come: the loop looks again on its next turn (the ring may
    // hold more without a doorbell pending).
    if (!drained && !alive.expired() && open_) uv_async_send(&st_->async);
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

void LoopState::on_idle(uv_idle_t* h) {
  auto* s = static_cast<LoopState*>(h->data);
  if (uv_hrtime() >= s->spin_until) {
    uv_idle_stop(h);
    if (s->owner && s->r->ring) s->owner->poll_ring(/*sleep=*/true);  // arms it before the loop sleeps
    return;
  }
  if (s->owner && s->r->ring) s->owner->poll_ring(/*sleep=*/false);
  // The peer may be waiting for this CPU (it answers us on the same one): it goes
  // first. Without this a small call took 24-37 µs instead of 11.
  sched_yield();
}

}  // namespace

std::unique_ptr<Channel> make_msgpack_channel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued,
                                              uint32_t spin_us, std::shared_ptr<RingLink> ring) {
  return std::make_unique<MsgpackChannel>(loop, fd, max_frame, max_queued, spin_us, std::move(ring));
}

}  // namespace airlock::proto
