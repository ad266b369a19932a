// Byte rings in shared memory: one writer, one reader, each in its own process (SPSC),
// with doorbells rung only when the other side has said it sleeps. A link beside the
// socket (docs/ARCHITECTURE.md, "The shared-memory ring"): the msgpack channel can carry
// its frames here and keep the socket for doorbell bytes and hang-up
// (HostOptions::ring_bytes); rpc_bench's raw_ring* baselines time the bare ring. Two
// kinds of doorbell: a futex on the sleep word (wait(), ring(): for threads that block
// on the ring alone) or anything the owner chooses (arm(), take_sleeper(): the channel
// sends one byte on the socket, which its epoll set already watches).
//
// The memory is written by a peer that may be hostile, so nothing read from it is
// trusted:
//  * Each side keeps its own index privately and only *publishes* it (the writer its
//    head, the reader its tail); it never reads its own index back from the memory.
//  * The other side's index is loaded once per operation and checked: a head more than
//    `capacity` ahead of the reader's tail, or behind it, is malformed, and so is a tail
//    ahead of the writer's head or more than `capacity` behind it. A malformed index
//    fails that end for good (InvalidArgument, "malformed ring: ..."): the owner drops the
//    peer, as it does for a malformed frame.
//  * Bytes are copied out once into the caller's memory, then decoded there (no double
//    fetch); positions are masked, so no index can point outside the data area.
//  * Waiting always has a deadline; a peer that scribbles on the sleep words costs at
//    most spurious wake-ups until then.
//  * The memfd is sealed against shrinking and growing before the peer sees it, so the
//    peer cannot truncate it under us (a SIGBUS on the next access).
//
// Layout of one ring (offsets in bytes; each word on its own cache line, so the two
// sides do not false-share): head at 0, tail at 64, reader_sleeps at 128, writer_waits
// at 192, data at 256 (capacity bytes, a power of two). A RingPair holds two rings, one
// per direction: ring 0 carries the creator's bytes to the peer, ring 1 the peer's back.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "airlock/status.h"

namespace airlock::proto {

inline constexpr size_t kRingHeaderBytes = 256;
inline constexpr uint32_t kRingMinCapacity = 4096;
inline constexpr uint32_t kRingMaxCapacity = 64u << 20;

// The bytes one ring occupies: header plus data.
constexpr size_t ring_bytes(uint32_t capacity) { return kRingHeaderBytes + capacity; }

// The writing end of one ring, over memory laid out as above (`region` must hold
// ring_bytes(capacity) bytes and outlive this object).
class RingWriter {
 public:
  RingWriter() = default;
  RingWriter(std::byte* region, uint32_t capacity);

  // Copies as much of `bytes` as fits and publishes it; returns how many (0: full). A
  // stream, like a socket: a caller with more to send waits for room.
  Result<size_t> write(std::span<const std::byte> bytes);
  // Whether the reader said it sleeps; clears the word so that one doorbell serves a
  // burst of writes. Call after a write that published bytes, and ring the doorbell if
  // true.
  bool take_sleeper();
  // Says this writer waits for room (the reader's take_waiting_writer() then answers
  // true once it freed some), and looks again: room there is now needs no doorbell.
  Result<size_t> ask_for_room();
  // Bytes free now (one load of the reader's tail).
  Result<size_t> room();

  // The futex doorbell (FUTEX_WAKE on the reader's word: shared, so not PRIVATE).
  void ring();
  // write() + take_sleeper() + ring() when needed.
  Result<size_t> write_and_ring(std::span<const std::byte> bytes);
  // Waits on the futex until the reader has freed room, spinning `spin` first; false
  // when `until` passed first.
  Result<bool> wait_for_room(std::chrono::steady_clock::time_point until, std::chrono::nanoseconds spin = {});

 private:
  Result<uint64_t> load_tail();
  std::byte* base_ = nullptr;
  uint32_t cap_ = 0;
  uint64_t head_ = 0;  // private; published to the memory after each write
  bool failed_ = false;
};

// The reading end of one ring.
class RingReader {
 public:
  RingReader() = default;
  RingReader(std::byte* region, uint32_t capacity);

  // Copies up to out.size() published bytes into `out` and frees their room; returns
  // how many (0: empty). Fails for good once the writer published an impossible head.
  Result<size_t> read(std::span<std::byte> out);
  // Whether the writer said it waits for room; clears the word. Call after a read that
  // freed room, and ring the writer's doorbell if true.
  bool take_waiting_writer();
  // Whether bytes wait (one load of the writer's head; a malformed one counts as
  // "something to read", whose read() then fails).
  bool readable() const;
  // Says this reader is about to sleep (the writer's take_sleeper() then answers true),
  // and looks again: returns readable(), so that bytes published just before are not
  // slept through. disarm(): polling, no doorbell wanted.
  bool arm();
  void disarm();

  // read() + take_waiting_writer() + a futex wake of the writer when needed.
  Result<size_t> read_and_ring(std::span<std::byte> out);
  // Waits until bytes are published: spins `spin` first (a peer on another CPU answers
  // within a few µs without any syscall on either side), then arms and sleeps on the
  // futex. false when `until` passed first.
  bool wait(std::chrono::steady_clock::time_point until, std::chrono::nanoseconds spin = {});

 private:
  std::byte* base_ = nullptr;
  uint32_t cap_ = 0;
  uint64_t tail_ = 0;  // private; published after each read
  bool failed_ = false;
};

// Two rings in one memfd of 2 * ring_bytes(capacity), mapped here. The creator (the
// host) uses creator_writer()/creator_reader(); the peer maps the fd it was given with
// attach() and uses peer_writer()/peer_reader().
class RingPair {
 public:
  // capacity: a power of two in [kRingMinCapacity, kRingMaxCapacity].
  static Result<RingPair> create(uint32_t capacity, const char* name = "airlock-ring");
  // Maps a ring memfd received from the creator, taking the fd (closed on failure too):
  // refuses (InvalidArgument) a capacity out of range, an fd that is not a memfd sealed
  // against resizing, or the wrong size.
  static Result<RingPair> attach(int fd, uint32_t capacity);

  RingPair(RingPair&& o) noexcept;
  RingPair& operator=(RingPair&& o) noexcept;
  RingPair(const RingPair&) = delete;
  RingPair& operator=(const RingPair&) = delete;
  ~RingPair();

  int fd() const { return fd_; }
  uint32_t capacity() const { return cap_; }
  RingWriter creator_writer() { return {ring(0), cap_}; }
  RingReader creator_reader() { return {ring(1), cap_}; }
  RingWriter peer_writer() { return {ring(1), cap_}; }
  RingReader peer_reader() { return {ring(0), cap_}; }

 private:
  RingPair(int fd, std::byte* base, uint32_t cap) : fd_(fd), base_(base), cap_(cap) {}
  std::byte* ring(int i) { return base_ + i * ring_bytes(cap_); }
  static Result<RingPair> attach_checked(int fd, uint32_t capacity, bool created);
  void release();
  int fd_ = -1;
  std::byte* base_ = nullptr;
  uint32_t cap_ = 0;
};

// One process's two ends of a RingPair, as a channel uses them (make_channel's `ring`):
// `out` under the channel's write lock, `in` under its read lock.
struct RingLink {
  std::shared_ptr<RingPair> pair;  // keeps the mapping alive as long as either end
  RingWriter out;
  RingReader in;
  // `creator`: the ends of the process that made the pair (the host), else the peer's.
  static std::shared_ptr<RingLink> of(std::shared_ptr<RingPair> pair, bool creator) {
    auto l = std::make_shared<RingLink>();
    l->out = creator ? pair->creator_writer() : pair->peer_writer();
    l->in = creator ? pair->creator_reader() : pair->peer_reader();
    l->pair = std::move(pair);
    return l;
  }
  static std::shared_ptr<RingLink> creator(RingPair p) { return of(std::make_shared<RingPair>(std::move(p)), true); }
  static std::shared_ptr<RingLink> peer(RingPair p) { return of(std::make_shared<RingPair>(std::move(p)), false); }
};

}  // namespace airlock::proto
