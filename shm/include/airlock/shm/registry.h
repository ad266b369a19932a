// The per-peer tables that turn a ShmRef from a frame into bytes.
//
//  * Registry (receiver): buffer_id -> read-only mapping of an fd the peer passed. Ids
//    are the peer's own; one Registry per peer means a peer can only ever name buffers it
//    sent itself. Anything else in a ShmRef (unknown id, offset/length outside the
//    buffer) is InvalidArgument, never a crash.
//  * Exporter (sender): passes each buffer's fd to its peer once and refers to it by id
//    afterwards; tells the peer to drop it when the buffer is freed.
//
// Reference counting: a mapping is held by the Registry entry (the sender's hold, ended
// by the sender's Drop, release() or clear()) and by every View a call still uses; it is
// unmapped and its fd closed when the last of them lets go. So clear() on a dead peer
// frees everything not in use, and a call running on another thread never reads unmapped
// memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "airlock/frame.h"
#include "airlock/shm/buffer.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/status.h"

namespace airlock::shm {

// A resolved ShmRef: the bytes, plus what keeps them mapped.
struct View {
  std::span<const std::byte> bytes;
  uint64_t offset = 0;  // of bytes within the memfd (for re-mapping it elsewhere)
  std::shared_ptr<const ReadOnlyMapping> mapping;
  int fd() const { return mapping ? mapping->fd() : -1; }
};

struct RegistryOptions {
  SealPolicy policy = SealPolicy::kReadOnly;  // kImmutable for an untrusted sender
  size_t max_buffers = 4096;                   // each costs an fd (and a VMA once mapped)
  uint64_t max_bytes = uint64_t(1) << 40;      // announced sizes held at once (address space)
};

class Registry {
 public:
  explicit Registry(RegistryOptions opts = {}) : opts_(opts) {}

  // A buffer arrived: verify seals and size (it is mapped read-only on its first
  // resolve(), so an announced but unused buffer costs only its fd). `id` must be
  // non-zero and new; past max_buffers or max_bytes -> ResourceExhausted. Takes `fd`
  // (closed on failure).
  Status add(uint64_t id, UniqueFd fd, uint64_t size);
  // Reads every pending side-channel message: kAnnounce -> add, kDrop -> release. Call
  // it when the channel is readable and before resolving a frame's ShmRefs. Stops at the
  // first bad message and returns its error (a peer that sends one is misbehaving).
  // Drains the side channel: announcements are added, drops released; kReturn messages
  // (about buffers *we* shared) go to `on_return`.
  // kLastWords is kept for last_words().
  Status pump(FdChannel& channel, const std::function<void(uint64_t id)>& on_return = {});
  // The syscall number of the peer's last kLastWords message, if one came (clear() forgets it).
  std::optional<uint64_t> last_words() const;

  Result<View> resolve(const proto::ShmRef& ref) const;
  // The bytes of a buffer lent for one message (the whole buffer: offset 0, its full
  // length), copied into `out`, and the buffer let go of. It is read through its fd,
  // never mapped: for ~100 KB used once, mmap + faults + munmap (a TLB shootdown in a
  // process with threads) cost more than the copy. Unknown or partial ref -> error.
  Status read_once(const proto::ShmRef& ref, std::string& out);
  // Ends the sender's hold; the mapping goes once no View uses it. Unknown -> NotFound.
  Status release(uint64_t id);
  // Peer died: ends every hold.
  void clear();

  size_t open_count() const;     // entries held
  uint64_t releases() const;     // entries let go of so far (release(), Drops, clear())
  uint64_t mapped_bytes() const; // their sizes

 private:
  RegistryOptions opts_;
  struct Entry {
    UniqueFd fd;  // until the first resolve() maps it
    uint64_t size = 0;
    std::shared_ptr<const ReadOnlyMapping> mapping;
  };
  mutable std::mutex mu_;
  mutable std::unordered_map<uint64_t, Entry> entries_;
  mutable uint64_t bytes_ = 0;
  std::optional<uint64_t> last_words_;  // under mu_
  uint64_t releases_ = 0;               // under mu_
};

class Exporter {
 public:
  // Uses (does not own) `channel`, which must outlive the Exporter. `timeout_ms`: how
  // long a send may wait for room (0: never; a peer that stopped reading makes share()
  // and drop() fail at once instead of stalling the caller).
  explicit Exporter(FdChannel& channel, int timeout_ms = 5000);

  // Seals `b` (F_SEAL_FUTURE_WRITE, unless already sealed), passes its fd to the peer if
  // not done before, and returns the ref for [offset, offset+length). Out of range ->
  // InvalidArgument; a buffer already shared with another peer -> PermissionDenied.
  Result<proto::ShmRef> share(Buffer& b, uint64_t offset, uint64_t length);
  Result<proto::ShmRef> share(Buffer& b) { return share(b, 0, b.size()); }

  // The buffer is being freed: tell the peer to unmap it (no-op if never shared).
  Status drop(uint64_t id);
  // The peer closes this one itself (a buffer lent for one message, e.g. a LoadSkill's
  // code): nothing to tell it, only to stop remembering the id.
  void forget(uint64_t id);
  // Peer died: nothing to tell anyone.
  void forget_all();

  bool shared(uint64_t id) const;
  size_t shared_count() const;
  uint64_t token() const { return token_; }

 private:
  FdChannel* channel_;
  int timeout_ms_;
  uint64_t token_;
  mutable std::mutex mu_;
  std::unordered_set<uint64_t> sent_;
};

}  // namespace airlock::shm
