// A hostile extension for host tests: it speaks the real protocol on either transport
// (the library's own channels), then misbehaves as $AIRLOCK_FAKE says. Started as the
// zygote (argv "zygote"), it misbehaves as the file `zygote-mode` next to argv[0] says.
//
// Extension modes ($AIRLOCK_FAKE; unknown or empty: a well-behaved echo extension):
//   crash            exit(7) before Ready          silent        never sends Ready
//   garbage          Ready, then bytes that are no frame (msgpack)
//   oversized        Ready, then a header announcing a 1 GiB frame (msgpack)
//   bad-version      Ready with protocol version 1
//   ready-flood      answers LoadSkill, then sends 2,000 Ready frames
//   stray-response   a Response to a request never sent
//   double-response  answers every call twice
//   host-frame       sends a Cancel (a frame only hosts send)
//   huge-output      answers calls with a 64 GiB sparse sealed memfd as shared output
//   log-forge        answers calls after logging lines with newlines and ANSI escapes
//   log-flood        answers calls after sending 20,000 log lines
//   service-flood    per call: 5,000 service requests under it, answers after the replies
//   forged-service   a service request with an id outside the extension's range
//   no-health        answers calls, never answers Health
//   echo             well-behaved
//   With HostOptions::ring_bytes (it takes the ring the host offers, --ring-bytes):
//   ring-bad-head    answers the first call; at the second publishes a head beyond the ring
//   ring-bad-tail    publishes a tail ahead of the host's head, then answers the first call
//   ring-doorbells   answers every call, then rings 256 KiB of doorbell bytes
// Zygote modes (file zygote-mode; the zygote gets no environment):
//   hello-then-canary   a proper hello; answers requests with the pidfd of the pid in
//                       the file canary-pid (a process of the test, not forked for us)
//   own-pidfd           answers with its own pidfd
//   silent-after-hello  a hello, then never answers
//   garbage-reply       a hello, then a reply of junk
//   pid-number          a hello, then the old protocol's int32 pid as a reply
//   (anything else: writes a Ready frame instead of a hello)
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uv.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "airlock/channel.h"
#include "airlock/msgpack_codec.h"
#include "airlock/ring.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/zygote_wire.h"

using namespace airlock;
using namespace airlock::proto;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

int send_datagram(int sock, const std::string& bytes, int fd = -1) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  return static_cast<int>(sendmsg(sock, &mh, MSG_NOSIGNAL));
}

int run_zygote(const std::string& dir) {
  const std::string mode = read_file(dir + "/zygote-mode");
  const int sock = 3;
  if (mode.empty() || (mode != "hello-then-canary" && mode != "own-pidfd" && mode != "silent-after-hello" &&
                       mode != "garbage-reply" && mode != "pid-number")) {
    std::string out;
    (void)encode_msgpack(Ready{kProtocolVersion, getpid(), "fake", ""}, out);
    (void)!write(sock, out.data(), out.size());
    pause();
    return 0;
  }
  send_datagram(sock, zygote::encode_hello());
  char buf[zygote::kMaxRequestBytes];
  for (;;) {
    ssize_t n = recv(sock, buf, sizeof buf, 0);  // fds attached are dropped (closed) by the kernel
    if (n <= 0) return 0;
    auto req = zygote::parse_request(std::string_view(buf, static_cast<size_t>(n)));
    const uint64_t seq = req.ok() ? req->seq : 0;
    if (mode == "silent-after-hello") continue;
    if (mode == "garbage-reply") {
      send_datagram(sock, "this is no reply");
    } else if (mode == "pid-number") {
      int32_t pid = 11;
      send_datagram(sock, std::string(reinterpret_cast<char*>(&pid), sizeof pid));
    } else {
      pid_t target = mode == "own-pidfd" ? getpid() : static_cast<pid_t>(std::atoi(read_file(dir + "/canary-pid").c_str()));
      int pidfd = static_cast<int>(syscall(SYS_pidfd_open, target, 0));
      send_datagram(sock, zygote::encode_reply({seq, 0}), pidfd);
      if (pidfd >= 0) close(pidfd);
    }
  }
}

// A sealed memfd of `size` bytes that costs nothing (sparse).
int sparse_sealed_memfd(uint64_t size) {
  int fd = memfd_create("fake-huge", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) return -1;
  fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_WRITE);
  return fd;
}

struct Fake {
  std::string mode;
  uv_loop_t* loop = nullptr;
  std::unique_ptr<Channel> ch;
  shm::FdChannel side{shm::UniqueFd(4)};
  uint64_t next_service = 1;
  uv_timer_t quit{};
  std::shared_ptr<RingLink> ring;
  uint32_t ring_capacity = 0;
  int calls = 0;

  void send(const Frame& f) { (void)ch->send(f); }

  // The ring the host offered first on the side channel (as serve does, unchecked).
  bool take_ring() {
    pollfd p{side.fd(), POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return false;
    auto m = side.try_recv_message();
    if (!m.ok() || !m->has_value() || (*m)->kind != shm::SideMessage::Kind::kRing) return false;
    auto pair = RingPair::attach((*m)->fd.release(), ring_capacity);
    if (!pair.ok()) return false;
    ring = RingLink::peer(std::move(*pair));
    return true;
  }

  // Writes one 64-bit word of the shared ring pair: ring 0 carries the host's frames to
  // us, ring 1 ours to the host; the head is at 0, the tail at 64.
  void scribble(int which, size_t offset, uint64_t v) {
    const size_t size = 2 * ring_bytes(ring_capacity);
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, ring->pair->fd(), 0);
    if (m == MAP_FAILED) return;
    std::memcpy(static_cast<char*>(m) + which * ring_bytes(ring_capacity) + offset, &v, 8);
    munmap(m, size);
  }

  void on_frame(Frame&& f) {
    if (auto* h = std::get_if<Health>(&f)) {
      if (mode != "no-health") send(make_response(h->id, std::string("ok")));
      return;
    }
    if (auto* l = std::get_if<LoadSkill>(&f)) {
      send(make_response(l->id, std::string()));
      if (mode == "ready-flood") {
        for (int i = 0; i < 2000; ++i) send(Ready{kProtocolVersion, getpid(), "flood", ""});
      }
      return;
    }
    if (auto* s = std::get_if<Shutdown>(&f)) {
      (void)s;
      ch->close();
      uv_stop(loop);
      return;
    }
    auto* r = std::get_if<Request>(&f);
    if (!r) return;
    if (mode == "huge-output") {
      const uint64_t size = 64ull << 30;
      int fd = sparse_sealed_memfd(size);
      (void)side.announce(4242, fd, size);
      close(fd);
      Response resp;
      resp.id = r->id;
      resp.shm_refs.push_back({4242, 0, size});
      return send(resp);
    }
    if (mode == "log-forge") {
      send(Log{5, "\n[2026-12-01 00:00:00.000] [critical] [host] FORGED", "x"});
      send(Log{2, "\x1b[2J\x1b[31mred\rover\x9b" "6n", "\x1b]0;title\x07"});
    }
    if (mode == "log-flood") {
      for (int i = 0; i < 20000; ++i) send(Log{2, "flood " + std::to_string(i), "x"});
    }
    if (mode == "service-flood") {
      for (int i = 0; i < 5000; ++i) {
        Request q;
        q.id = (1ull << 63) | next_service++;
        q.parent_id = r->id;
        q.target = "svc";
        q.payload = std::string(1024, 's');
        send(q);
      }
    }
    if (mode == "forged-service") {
      Request q;
      q.id = 7;  // no top bit: an id from the host's range
      q.parent_id = r->id;
      q.target = "svc";
      send(q);
      return;
    }
    if (mode == "stray-response") return send(make_response(r->id + 1'000'000, std::string("never asked")));
    if (mode == "ring-bad-head" || mode == "ring-bad-tail" || mode == "ring-doorbells") {
      if (mode == "ring-bad-head" && calls++ > 0) {
        scribble(1, 0, ~uint64_t{0} / 2);  // far beyond what the host consumed
        (void)!write(3, "b", 1);           // and wake the host to look
        return;
      }
      // Before the answer, so that the host's next write (the next call) finds it.
      if (mode == "ring-bad-tail") scribble(0, 64, ~uint64_t{0} / 2);  // far ahead of what the host wrote
      send(make_response(r->id, r->payload));
      if (mode == "ring-doorbells") {
        const std::string bells(256 * 1024, 'b');
        (void)!write(3, bells.data(), bells.size());
      }
      return;
    }
    if (mode == "host-frame") return send(Cancel{r->id});
    send(make_response(r->id, r->payload));
    if (mode == "double-response") send(make_response(r->id, r->payload));
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string transport = "msgpack";
  uint32_t ring_bytes_arg = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "zygote") {
      std::string self = argv[0];
      return run_zygote(self.substr(0, self.find_last_of('/')));
    }
    if (a == "--transport" && i + 1 < argc) transport = argv[i + 1];
    if (a == "--ring-bytes" && i + 1 < argc) ring_bytes_arg = static_cast<uint32_t>(std::atoi(argv[i + 1]));
  }
  const char* env = getenv("AIRLOCK_FAKE");
  Fake fake;
  fake.mode = env ? env : "";
  if (fake.mode == "crash") return 7;
  if (fake.mode == "silent") {
    pause();
    return 0;
  }
  if (fake.mode == "garbage" || fake.mode == "oversized") {  // raw bytes, msgpack only
    std::string out;
    (void)encode_msgpack(Ready{kProtocolVersion, getpid(), "fake", ""}, out);
    out += fake.mode == "garbage" ? std::string("\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1", 9) : std::string("\x00\x00\x00\x40", 4);
    if (write(3, out.data(), out.size()) < 0) return 1;
    pause();
    return 0;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake.loop = &loop;
  fake.ring_capacity = ring_bytes_arg;
  if (fake.ring_capacity > 0 && !fake.take_ring()) return 5;
  fake.ch = make_channel(transport == "grpc" ? Encoding::Grpc : Encoding::Msgpack, Role::Extension, &loop, 3,
                         kDefaultMaxFrameBytes, kDefaultMaxQueuedBytes, 0, fake.ring);
  fake.ch->start({[&](Frame&& f) { fake.on_frame(std::move(f)); }, [&](const Error&) { uv_stop(&loop); }});
  fake.send(Ready{fake.mode == "bad-version" ? 1u : kProtocolVersion, getpid(), "fake", ""});
  uv_run(&loop, UV_RUN_DEFAULT);
  if (fake.ch) fake.ch->close();
  uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
