// shm/: sealed memfd buffers, the pool, fd passing, the per-peer registry, leak accounting,
// and the 8 MiB pooled-vs-fresh measurement quoted in shm/README.md.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "airlock/shm/accounting.h"
#include "airlock/shm/buffer.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/shm/pool.h"
#include "airlock/shm/registry.h"

namespace airlock::shm {
namespace {

constexpr uint64_t kMiB = 1u << 20;

void fill(std::span<std::byte> s, uint64_t seed) {
  for (size_t i = 0; i + 8 <= s.size(); i += 8) {
    const uint64_t v = seed * 0x9E3779B97F4A7C15ull + i;
    std::memcpy(s.data() + i, &v, 8);
  }
}

uint64_t checksum(std::span<const std::byte> s) {
  uint64_t sum = 0;
  for (size_t i = 0; i + 8 <= s.size(); i += 8) {
    uint64_t v;
    std::memcpy(&v, s.data() + i, 8);
    sum += v;
  }
  return sum;
}

size_t open_memfds() {
  auto n = count_open_memfds();
  EXPECT_TRUE(n.ok()) << n.error().to_string();
  return n.ok() ? *n : 0;
}

UniqueFd dup_fd(int fd) { return UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

Buffer make_buffer(uint64_t size) {
  auto b = Buffer::create(size, "shm_test");
  EXPECT_TRUE(b.ok()) << b.error().to_string();
  return std::move(*b);
}

std::pair<FdChannel, FdChannel> make_channels() {
  auto p = FdChannel::pair();
  EXPECT_TRUE(p.ok()) << p.error().to_string();
  return std::move(*p);
}

// Waits for the side channel to become readable (the forked tests).
bool wait_readable(int fd, int timeout_ms = 5000) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

// Leak baseline: open memfds of the whole process and this library's mapped bytes.
struct Baseline {
  size_t memfds = open_memfds();
  Stats st = stats();
  void expect_back() const {
    EXPECT_EQ(open_memfds(), memfds);
    EXPECT_EQ(stats().buffers, st.buffers);
    EXPECT_EQ(stats().mappings, st.mappings);
    EXPECT_EQ(stats().mapped_bytes(), st.mapped_bytes());
  }
};

// ---------------------------------------------------------------- Buffer and seals

TEST(ShmBuffer, CreateWriteReadAndAccount) {
  Baseline base;
  {
    Buffer a = make_buffer(kMiB);
    Buffer b = make_buffer(4096);
    EXPECT_NE(a.id(), 0u);
    EXPECT_NE(a.id(), b.id());
    EXPECT_EQ(a.size(), kMiB);
    EXPECT_GE(a.fd(), 0);
    EXPECT_TRUE(::fcntl(a.fd(), F_GETFD) & FD_CLOEXEC);
    fill(a.writable(), 7);
    EXPECT_EQ(checksum(a.bytes()), checksum(std::as_const(a).bytes()));
    EXPECT_EQ(open_memfds(), base.memfds + 2);
    EXPECT_EQ(stats().buffer_bytes, base.st.buffer_bytes + kMiB + 4096);
    Buffer moved = std::move(a);  // moves keep one owner: counted once, closed once
    EXPECT_EQ(stats().buffers, base.st.buffers + 2);
  }
  base.expect_back();
  auto zero = Buffer::create(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.error().code, Code::InvalidArgument);
}

TEST(ShmBuffer, SealedBufferRefusesNewWritersWritesAndResizes) {
  Buffer b = make_buffer(kMiB);
  ASSERT_TRUE(b.seal().ok());
  ASSERT_TRUE(b.seal().ok());  // idempotent
  const int seals = ::fcntl(b.fd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK),
            F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK);

  errno = 0;
  EXPECT_EQ(::mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, b.fd(), 0), MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::write(b.fd(), "x", 1), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::pwrite(b.fd(), "x", 1, 100), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(b.fd(), 2 * kMiB), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(b.fd(), 4096), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::fallocate(b.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096), -1);
  // Reopening through /proc gives a new file description of the same sealed inode.
  const std::string path = "/proc/self/fd/" + std::to_string(b.fd());
  UniqueFd reopened(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(reopened.valid());
  EXPECT_EQ(::mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, reopened.get(), 0),
            MAP_FAILED);
  EXPECT_EQ(::write(reopened.get(), "x", 1), -1);
}

// The fact the pool's reuse rests on: after F_SEAL_FUTURE_WRITE the writer's old mapping
// still writes, and a receiver's read-only mapping sees those writes without remapping.
TEST(ShmBuffer, WriterKeepsItsMappingAfterSealAndReaderSeesNewBytes) {
  Buffer b = make_buffer(kMiB);
  fill(b.writable(), 1);
  ASSERT_TRUE(b.seal().ok());
  auto m = map_readonly(dup_fd(b.fd()), kMiB);
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_EQ(checksum(m->bytes()), checksum(b.bytes()));
  fill(b.writable(), 2);  // next call's input, same pages
  EXPECT_EQ(checksum(m->bytes()), checksum(b.bytes()));
  EXPECT_EQ(std::memcmp(m->data(), b.data(), kMiB), 0);
}

TEST(ShmBuffer, ReceiverMappingCannotBeMadeWritable) {
  Buffer b = make_buffer(64 * 1024);
  ASSERT_TRUE(b.seal().ok());
  auto m = map_readonly(dup_fd(b.fd()), b.size());
  ASSERT_TRUE(m.ok());
  void* p = const_cast<std::byte*>(m->data());
  EXPECT_EQ(::mprotect(p, m->size(), PROT_READ | PROT_WRITE), -1);
  EXPECT_EQ(errno, EACCES);
}

TEST(ShmBuffer, ReceiverRefusesUnsealedPartlySealedWrongSizeAndNonMemfd) {
  Baseline base;
  {
    Buffer unsealed = make_buffer(kMiB);
    auto r = map_readonly(dup_fd(unsealed.fd()), kMiB);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Code::InvalidArgument);
    EXPECT_NE(r.error().message.find("not sealed"), std::string::npos) << r.error().message;

    Buffer partly = make_buffer(kMiB);
    ASSERT_EQ(::fcntl(partly.fd(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK), 0);
    EXPECT_EQ(map_readonly(dup_fd(partly.fd()), kMiB).error().code, Code::InvalidArgument);

    Buffer sealed = make_buffer(kMiB);
    ASSERT_TRUE(sealed.seal().ok());
    EXPECT_EQ(map_readonly(dup_fd(sealed.fd()), kMiB + 1).error().code, Code::InvalidArgument);
    EXPECT_EQ(map_readonly(dup_fd(sealed.fd()), 0).error().code, Code::InvalidArgument);
    // Only FUTURE_WRITE: fine for kReadOnly, not enough for kImmutable.
    EXPECT_EQ(map_readonly(dup_fd(sealed.fd()), kMiB, SealPolicy::kImmutable).error().code,
              Code::InvalidArgument);

    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd keep_write(p[1]);
    EXPECT_EQ(map_readonly(UniqueFd(p[0]), 1).error().code, Code::InvalidArgument);
    EXPECT_EQ(map_readonly(UniqueFd(), 1).error().code, Code::InvalidArgument);
  }
  base.expect_back();  // refused fds were closed, not leaked
}

TEST(ShmBuffer, SealImmutableDropsWritableMappingAndAddsSealWrite) {
  Buffer b = make_buffer(kMiB);
  fill(b.writable(), 3);
  const uint64_t sum = checksum(b.bytes());
  ASSERT_TRUE(b.seal_immutable().ok());
  EXPECT_TRUE(b.immutable());
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_TRUE(b.writable().empty());
  EXPECT_EQ(checksum(b.bytes()), sum);
  EXPECT_TRUE(::fcntl(b.fd(), F_GET_SEALS) & F_SEAL_WRITE);
  auto m = map_readonly(dup_fd(b.fd()), kMiB, SealPolicy::kImmutable);
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_EQ(checksum(m->bytes()), sum);
}

TEST(ShmBuffer, CopyOfIsAnImmutableUnmappedMemfdWithTheBytes) {
  Baseline base;
  {
    std::vector<std::byte> bytes(100'000);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(i * 7 + 1);
    auto b = Buffer::copy_of(bytes, "copy-test");
    ASSERT_TRUE(b.ok()) << b.error().to_string();
    EXPECT_EQ(b->size(), bytes.size());
    EXPECT_TRUE(b->immutable());
    EXPECT_EQ(b->data(), nullptr);  // never mapped here
    EXPECT_TRUE(b->bytes().empty());
    EXPECT_EQ(stats().mappings, base.st.mappings);
    const int seals = ::fcntl(b->fd(), F_GET_SEALS);
    EXPECT_TRUE(seals & F_SEAL_WRITE);
    EXPECT_TRUE(seals & F_SEAL_GROW);
    EXPECT_TRUE(seals & F_SEAL_SHRINK);
    EXPECT_LT(::pwrite(b->fd(), "x", 1, 0), 0);  // nobody writes it any more
    auto m = map_readonly(dup_fd(b->fd()), bytes.size(), SealPolicy::kImmutable);
    ASSERT_TRUE(m.ok()) << m.error().to_string();
    EXPECT_EQ(checksum(m->bytes()), checksum(bytes));
    EXPECT_EQ(stats().buffers, base.st.buffers + 1);
  }
  base.expect_back();
  EXPECT_EQ(Buffer::copy_of({}).error().code, Code::InvalidArgument);
}

TEST(ShmRegistry, ReadOnceCopiesAWholeLentBufferAndLetsGoOfIt) {
  Baseline base;
  {
    std::vector<std::byte> bytes(70'000, std::byte{0x5c});
    bytes[69'999] = std::byte{1};
    auto b = Buffer::copy_of(bytes);
    ASSERT_TRUE(b.ok());
    Registry reg;
    ASSERT_TRUE(reg.add(3, dup_fd(b->fd()), bytes.size()).ok());
    ASSERT_TRUE(reg.add(4, dup_fd(b->fd()), bytes.size()).ok());
    std::string out;
    // Only the whole buffer: a slice or an unknown id is refused and nothing is let go.
    EXPECT_EQ(reg.read_once({3, 1, bytes.size() - 1}, out).error().code, Code::InvalidArgument);
    EXPECT_EQ(reg.read_once({3, 0, 10}, out).error().code, Code::InvalidArgument);
    EXPECT_EQ(reg.read_once({9, 0, bytes.size()}, out).error().code, Code::InvalidArgument);
    EXPECT_EQ(reg.open_count(), 2u);
    const uint64_t released = reg.releases();
    ASSERT_TRUE(reg.read_once({3, 0, bytes.size()}, out).ok());
    EXPECT_EQ(out.size(), bytes.size());
    EXPECT_EQ(std::memcmp(out.data(), bytes.data(), bytes.size()), 0);
    EXPECT_EQ(reg.open_count(), 1u);  // gone from the registry: read once
    EXPECT_EQ(reg.releases(), released + 1);
    EXPECT_EQ(reg.read_once({3, 0, bytes.size()}, out).error().code, Code::InvalidArgument);
    // One that a View mapped already is copied from the mapping.
    auto v = reg.resolve({4, 0, bytes.size()});
    ASSERT_TRUE(v.ok());
    std::string again;
    ASSERT_TRUE(reg.read_once({4, 0, bytes.size()}, again).ok());
    EXPECT_EQ(again, out);
    EXPECT_EQ(reg.open_count(), 0u);
  }
  base.expect_back();
}

TEST(ShmBuffer, SealImmutableFailsWhileAnotherWritableMappingExists) {
  Buffer b = make_buffer(64 * 1024);
  void* other = ::mmap(nullptr, b.size(), PROT_READ | PROT_WRITE, MAP_SHARED, b.fd(), 0);
  ASSERT_NE(other, MAP_FAILED);
  auto s = b.seal_immutable();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::Unavailable);
  EXPECT_FALSE(b.immutable());
  EXPECT_EQ(b.data(), nullptr);  // our own writable mapping is gone already
  ::munmap(other, b.size());
  EXPECT_TRUE(b.seal_immutable().ok());
  EXPECT_TRUE(b.immutable());
}

// ---------------------------------------------------------------- fd passing

TEST(ShmFdPassing, SendsFdsWithBytesAndReceivesThemCloexec) {
  auto [a, b] = make_channels();
  Buffer x = make_buffer(4096), y = make_buffer(4096);
  const int fds[] = {x.fd(), y.fd()};
  ASSERT_TRUE(send_fds(a.fd(), fds, "hello").ok());
  auto r = recv_fds(b.fd(), 64, 4, /*nonblocking=*/true);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->bytes, "hello");
  ASSERT_EQ((*r)->fds.size(), 2u);
  for (auto& fd : (*r)->fds) EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
  // Nothing more to read: nullopt, not an error.
  auto none = b.try_recv();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  // Needs at least one byte.
  EXPECT_EQ(send_fds(a.fd(), fds, "").error().code, Code::InvalidArgument);
}

TEST(ShmFdPassing, TruncatedControlDataIsAnErrorAndClosesWhatArrived) {
  Baseline base;
  {
    auto [a, b] = make_channels();
    Buffer x = make_buffer(4096), y = make_buffer(4096), z = make_buffer(4096);
    const int fds[] = {x.fd(), y.fd(), z.fd()};
    ASSERT_TRUE(a.send(fds, "three").ok());
    const size_t with_buffers = open_memfds();
    auto r = b.try_recv(64, 1);  // room for one fd only -> MSG_CTRUNC
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, Code::InvalidArgument);
    EXPECT_EQ(open_memfds(), with_buffers);  // the one fd that arrived was closed
  }
  base.expect_back();
}

TEST(ShmFdPassing, PeerClosedIsUnavailable) {
  auto [a, b] = make_channels();
  a.close();
  auto r = b.try_recv();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::Unavailable);
  EXPECT_EQ(b.announce(1, 0, 1).error().code, Code::Unavailable);  // EPIPE, no SIGPIPE
}

TEST(ShmFdPassing, MalformedSideMessagesAreRefused) {
  Baseline base;
  {
    auto [a, b] = make_channels();
    ASSERT_TRUE(a.send({}, "short").ok());
    EXPECT_EQ(b.try_recv_message().error().code, Code::InvalidArgument);
    std::string announce_without_fd(24, '\0');
    announce_without_fd[0] = 1;
    ASSERT_TRUE(a.send({}, announce_without_fd).ok());
    EXPECT_EQ(b.try_recv_message().error().code, Code::InvalidArgument);
    Buffer x = make_buffer(4096);
    const int fds[] = {x.fd()};
    std::string drop_with_fd(24, '\0');
    drop_with_fd[0] = 2;
    ASSERT_TRUE(a.send(fds, drop_with_fd).ok());
    EXPECT_EQ(b.try_recv_message().error().code, Code::InvalidArgument);
    std::string bad_kind(24, '\0');
    bad_kind[0] = 9;
    ASSERT_TRUE(a.send({}, bad_kind).ok());
    EXPECT_EQ(b.try_recv_message().error().code, Code::InvalidArgument);
  }
  base.expect_back();
}

TEST(ShmFdPassing, SendTimesOutWhenPeerStopsReading) {
  auto [a, b] = make_channels();
  Status s = ok_status();
  int sent = 0;
  for (; sent < 100000 && s.ok(); ++sent) s = a.drop(1, /*timeout_ms=*/20);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::Timeout);
  EXPECT_GT(sent, 10);
}

// A real second process: the child gets the fd over the side channel, maps it read-only
// through a Registry, checks it cannot write, and sends back the checksum it read.
TEST(ShmFdPassing, ForkedChildMapsReadOnlyAndChecksums) {
  auto [host, child_end] = make_channels();
  int result_pipe[2];
  ASSERT_EQ(::pipe2(result_pipe, O_CLOEXEC), 0);
  Buffer b = make_buffer(8 * kMiB);
  fill(b.writable(), 42);
  const uint64_t expected = checksum(b.bytes());

  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    host.close();
    Registry reg;
    if (!wait_readable(child_end.fd()) || !reg.pump(child_end).ok()) ::_exit(2);
    auto v = reg.resolve({b.id(), 0, 8 * kMiB});
    if (!v.ok()) ::_exit(3);
    if (::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd(), 0) != MAP_FAILED)
      ::_exit(4);
    if (::write(v->fd(), "x", 1) != -1) ::_exit(5);
    const uint64_t sum = checksum(v->bytes);
    if (::write(result_pipe[1], &sum, sizeof sum) != sizeof sum) ::_exit(6);
    ::_exit(0);
  }
  ::close(result_pipe[1]);
  Exporter exporter(host);
  auto ref = exporter.share(b);
  ASSERT_TRUE(ref.ok()) << ref.error().to_string();
  uint64_t got = 0;
  EXPECT_EQ(::read(result_pipe[0], &got, sizeof got), static_cast<ssize_t>(sizeof got));
  ::close(result_pipe[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  EXPECT_EQ(got, expected);
}

// ---------------------------------------------------------------- Registry / Exporter

TEST(ShmRegistry, ResolveRefusesForgedAndOutOfRangeRefs) {
  Registry reg;
  Buffer b = make_buffer(kMiB);
  ASSERT_TRUE(b.seal().ok());
  ASSERT_TRUE(reg.add(7, dup_fd(b.fd()), kMiB).ok());

  auto expect_invalid = [&](proto::ShmRef ref, const char* what) {
    auto v = reg.resolve(ref);
    ASSERT_FALSE(v.ok()) << what;
    EXPECT_EQ(v.error().code, Code::InvalidArgument) << what;
    EXPECT_FALSE(v.error().message.empty());
  };
  expect_invalid({8, 0, 1}, "unknown id");
  expect_invalid({0, 0, 1}, "id 0");
  expect_invalid({7, UINT64_MAX, 1}, "offset UINT64_MAX");
  expect_invalid({7, UINT64_MAX, 0}, "offset UINT64_MAX, empty");
  expect_invalid({7, 1, UINT64_MAX}, "offset+length wraps");
  expect_invalid({7, 0, kMiB + 1}, "length beyond size");
  expect_invalid({7, kMiB - 10, 11}, "tail beyond size");
  expect_invalid({7, kMiB + 1, 0}, "offset beyond size");

  auto whole = reg.resolve({7, 0, kMiB});
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->bytes.size(), kMiB);
  auto tail = reg.resolve({7, kMiB - 10, 10});
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->bytes.data(), whole->bytes.data() + kMiB - 10);
  EXPECT_EQ(tail->offset, kMiB - 10);
  auto empty_end = reg.resolve({7, kMiB, 0});
  ASSERT_TRUE(empty_end.ok());
  EXPECT_TRUE(empty_end->bytes.empty());

  // Duplicate and reserved ids are refused when announced, too.
  EXPECT_EQ(reg.add(7, dup_fd(b.fd()), kMiB).error().code, Code::InvalidArgument);
  EXPECT_EQ(reg.add(0, dup_fd(b.fd()), kMiB).error().code, Code::InvalidArgument);
  EXPECT_EQ(reg.release(99).error().code, Code::NotFound);
}

TEST(ShmRegistry, ViewsKeepMappingAliveAfterReleaseAndClear) {
  Baseline base;
  Buffer b = make_buffer(kMiB);
  fill(b.writable(), 5);
  ASSERT_TRUE(b.seal().ok());
  Registry reg;
  ASSERT_TRUE(reg.add(1, dup_fd(b.fd()), kMiB).ok());
  ASSERT_TRUE(reg.add(2, dup_fd(b.fd()), kMiB).ok());
  EXPECT_EQ(reg.open_count(), 2u);
  EXPECT_EQ(reg.mapped_bytes(), 2 * kMiB);
  {
    auto v = reg.resolve({1, 0, kMiB});
    ASSERT_TRUE(v.ok());
    ASSERT_TRUE(reg.release(1).ok());
    reg.clear();  // the peer died while a call still reads buffer 1
    EXPECT_EQ(reg.open_count(), 0u);
    EXPECT_EQ(reg.mapped_bytes(), 0u);
    EXPECT_EQ(stats().mappings, base.st.mappings + 1);
    EXPECT_EQ(checksum(v->bytes), checksum(b.bytes()));  // still mapped: no use-after-unmap
  }
  EXPECT_EQ(stats().mappings, base.st.mappings);
  EXPECT_EQ(reg.resolve({2, 0, 1}).error().code, Code::InvalidArgument);
}

TEST(ShmRegistry, RefusesUnsealedAnnouncementAndTooManyBuffers) {
  Baseline base;
  {
    auto [tx, rx] = make_channels();
    Buffer unsealed = make_buffer(4096);
    ASSERT_TRUE(tx.announce(unsealed.id(), unsealed.fd(), 4096).ok());  // bypasses Exporter
    Registry reg;
    auto s = reg.pump(rx);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().code, Code::InvalidArgument);
    EXPECT_EQ(reg.open_count(), 0u);

    Registry small(RegistryOptions{SealPolicy::kReadOnly, 2});
    Buffer b = make_buffer(4096);
    ASSERT_TRUE(b.seal().ok());
    ASSERT_TRUE(small.add(1, dup_fd(b.fd()), 4096).ok());
    ASSERT_TRUE(small.add(2, dup_fd(b.fd()), 4096).ok());
    EXPECT_EQ(small.add(3, dup_fd(b.fd()), 4096).error().code, Code::ResourceExhausted);
  }
  base.expect_back();
}

TEST(ShmExporter, SharesOncePerBufferSealsAndRefersById) {
  auto [tx, rx] = make_channels();
  Exporter exporter(tx);
  Registry reg;
  Buffer b = make_buffer(kMiB);
  fill(b.writable(), 9);
  auto r1 = exporter.share(b, 4096, 8192);
  ASSERT_TRUE(r1.ok()) << r1.error().to_string();
  EXPECT_TRUE(b.sealed());
  EXPECT_EQ(*r1, (proto::ShmRef{b.id(), 4096, 8192}));
  ASSERT_TRUE(reg.pump(rx).ok());
  EXPECT_EQ(reg.open_count(), 1u);
  auto r2 = exporter.share(b);  // second share: no second fd
  ASSERT_TRUE(r2.ok());
  auto pending = rx.try_recv();
  ASSERT_TRUE(pending.ok());
  EXPECT_FALSE(pending->has_value());
  auto v = reg.resolve(*r1);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(std::memcmp(v->bytes.data(), b.data() + 4096, 8192), 0);

  EXPECT_EQ(exporter.share(b, kMiB, 1).error().code, Code::InvalidArgument);
  EXPECT_EQ(exporter.share(b, UINT64_MAX, 2).error().code, Code::InvalidArgument);
  auto [tx2, rx2] = make_channels();
  Exporter other(tx2);
  EXPECT_EQ(other.share(b).error().code, Code::PermissionDenied);

  ASSERT_TRUE(exporter.drop(b.id()).ok());
  ASSERT_TRUE(reg.pump(rx).ok());
  EXPECT_EQ(reg.open_count(), 0u);
  EXPECT_FALSE(exporter.shared(b.id()));
}

// ---------------------------------------------------------------- Pool

TEST(ShmPool, SizeClassesAndReuseOfTheSameBuffer) {
  Pool pool;
  EXPECT_EQ(pool.class_for(1), 64u * 1024);
  EXPECT_EQ(pool.class_for(64 * 1024 + 1), 128u * 1024);
  EXPECT_EQ(pool.class_for(8 * kMiB), 8 * kMiB);
  EXPECT_FALSE(pool.class_for(UINT64_MAX).has_value());

  auto a = pool.acquire(100 * 1024);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 100u * 1024);
  EXPECT_EQ(a->buffer().size(), 128u * 1024);
  EXPECT_EQ(a->writable().size(), 100u * 1024);
  const uint64_t id = a->buffer().id();
  a->release();
  EXPECT_EQ(pool.idle_count(), 1u);
  auto b = pool.acquire(70 * 1024);  // same class
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->buffer().id(), id);
  EXPECT_EQ(pool.leased_count(), 1u);
  auto c = pool.acquire(70 * 1024);  // the idle one is taken: a new one
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->buffer().id(), id);
  EXPECT_EQ(pool.acquire(0).error().code, Code::InvalidArgument);
}

TEST(ShmPool, IdleBytesAreBoundedAndFreedBuffersAreReported) {
  Baseline base;
  std::vector<uint64_t> freed;
  {
    Pool pool(PoolOptions{64 * 1024, 1 * kMiB, 256 * 1024});
    pool.set_on_free([&](uint64_t id) { freed.push_back(id); });
    std::vector<Lease> leases;
    for (int i = 0; i < 3; ++i) leases.push_back(std::move(*pool.acquire(128 * 1024)));
    auto big = pool.acquire(2 * kMiB);  // beyond max_class_bytes: exact size, never kept
    ASSERT_TRUE(big.ok());
    EXPECT_EQ(big->buffer().size(), 2 * kMiB);
    const uint64_t big_id = big->buffer().id();
    big->release();
    ASSERT_EQ(freed.size(), 1u);
    EXPECT_EQ(freed[0], big_id);
    leases.clear();  // 3 x 128 KiB back, room for 2
    EXPECT_EQ(pool.idle_bytes(), 256u * 1024);
    EXPECT_EQ(pool.idle_count(), 2u);
    EXPECT_EQ(freed.size(), 2u);
    pool.trim();
    EXPECT_EQ(pool.idle_bytes(), 0u);
    EXPECT_EQ(freed.size(), 4u);
  }
  base.expect_back();
}

TEST(ShmPool, LeaseMayOutliveItsPool) {
  Baseline base;
  {
    Lease lease;
    {
      Pool pool;
      auto l = pool.acquire(1000);
      ASSERT_TRUE(l.ok());
      lease = std::move(*l);
    }
    fill(lease.writable(), 1);
  }
  base.expect_back();
}

// The reuse cycle end to end: sealed once, rewritten by the host through its own mapping,
// seen by the receiver's existing mapping, fd passed only once.
TEST(ShmPool, SealedPooledBufferIsRefilledAndReceiverSeesNewInput) {
  auto [tx, rx] = make_channels();
  Pool pool;
  Exporter exporter(tx);
  Registry reg;
  uint64_t first_id = 0;
  for (uint64_t call = 1; call <= 3; ++call) {
    auto lease = pool.acquire(kMiB);
    ASSERT_TRUE(lease.ok());
    if (call == 1) first_id = lease->buffer().id();
    EXPECT_EQ(lease->buffer().id(), first_id);
    fill(lease->writable(), call);
    auto ref = exporter.share(lease->buffer(), 0, lease->size());
    ASSERT_TRUE(ref.ok()) << ref.error().to_string();
    ASSERT_TRUE(reg.pump(rx).ok());
    auto v = reg.resolve(*ref);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(checksum(v->bytes), checksum(lease->bytes())) << "call " << call;
  }
  EXPECT_EQ(reg.open_count(), 1u);
  EXPECT_EQ(exporter.shared_count(), 1u);
}

// ---------------------------------------------------------------- leaks

TEST(ShmLeaks, ThousandBufferCallsReturnToBaseline) {
  Baseline base;
  size_t peak_memfds = 0;
  {
    auto [tx, rx] = make_channels();
    Exporter exporter(tx);
    Registry reg;
    Pool pool(PoolOptions{64 * 1024, 512 * 1024, 2 * kMiB});
    pool.set_on_free([&](uint64_t id) { ASSERT_TRUE(exporter.drop(id).ok()); });
    for (int i = 0; i < 1000; ++i) {
      // Mostly pooled sizes; every 10th call is oversized and so a fresh, unpooled buffer.
      const uint64_t size = i % 10 == 9 ? 600 * 1024 : (64 * 1024) << (i % 3);
      auto lease = pool.acquire(size);
      ASSERT_TRUE(lease.ok());
      fill(lease->writable(), static_cast<uint64_t>(i));
      auto ref = exporter.share(lease->buffer(), 0, lease->size());
      ASSERT_TRUE(ref.ok()) << ref.error().to_string();
      ASSERT_TRUE(reg.pump(rx).ok());
      auto v = reg.resolve(*ref);
      ASSERT_TRUE(v.ok()) << v.error().to_string();
      ASSERT_EQ(checksum(v->bytes), checksum(lease->bytes()));
      peak_memfds = std::max(peak_memfds, open_memfds());
    }
    pool.trim();
    ASSERT_TRUE(reg.pump(rx).ok());  // the drops
    EXPECT_EQ(reg.open_count(), 0u);
    EXPECT_EQ(exporter.shared_count(), 0u);
  }
  EXPECT_LE(peak_memfds, base.memfds + 10);  // reused, not one per call
  base.expect_back();
}

// An extension crashes mid-call while holding host input buffers and having sent the host
// an output buffer: after the host cleans up that peer, its counts are back to baseline.
TEST(ShmLeaks, PeerCrashMidCallReturnsHostToBaseline) {
  Baseline base;
  {
    auto [host_end, child_end] = make_channels();
    Exporter exporter(host_end);  // before the Pool: the pool's on_free hook uses it
    Pool pool;
    pool.set_on_free([&](uint64_t id) { (void)exporter.drop(id); });
    Registry outputs(RegistryOptions{SealPolicy::kImmutable, 64});
    int ready[2];
    ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);

    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      host_end.close();
      Registry inputs;
      if (!wait_readable(child_end.fd()) || !inputs.pump(child_end).ok()) ::_exit(2);
      auto out = Buffer::create(2 * kMiB, "output");
      if (!out.ok()) ::_exit(3);
      fill(out->writable(), 77);
      // Output to an untrusted-sender policy host: immutable, not just read-only.
      if (!out->seal_immutable().ok() || !child_end.announce(1, out->fd(), out->size()).ok())
        ::_exit(4);
      if (::write(ready[1], "r", 1) != 1) ::_exit(5);
      ::pause();  // "mid-call": never answers
      ::_exit(0);
    }
    ::close(ready[1]);
    std::vector<Lease> in_flight;
    for (int i = 0; i < 3; ++i) {
      auto lease = pool.acquire(kMiB);
      ASSERT_TRUE(lease.ok());
      fill(lease->writable(), static_cast<uint64_t>(i));
      ASSERT_TRUE(exporter.share(lease->buffer()).ok());
      in_flight.push_back(std::move(*lease));
    }
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    ::close(ready[0]);
    ASSERT_TRUE(outputs.pump(host_end).ok());
    auto out = outputs.resolve({1, 0, 2 * kMiB});
    ASSERT_TRUE(out.ok()) << out.error().to_string();
    EXPECT_GT(open_memfds(), base.memfds);
    EXPECT_GT(stats().mapped_bytes(), base.st.mapped_bytes());

    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status));
    // The host's cleanup for a dead peer.
    exporter.forget_all();
    out = Error{};  // the failed call drops its view of the output
    outputs.clear();
    in_flight.clear();
    pool.trim();
    host_end.close();
  }
  base.expect_back();
}



}  // namespace
}  // namespace airlock::shm
