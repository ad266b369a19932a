// memfd-backed shared buffers: the writer's side (Buffer) and the reader's side
// (ReadOnlyMapping / map_readonly).
//
// Sealing (see shm/README.md for the whole story):
//  * Buffer::seal() applies F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK. The writer
//    keeps its existing writable mapping (so a pooled buffer can be refilled for the next
//    call), while nobody can create a new writable mapping, write(2) to the fd, mprotect a
//    post-seal read-only mapping to writable, or resize it. This is "read-only for the
//    receiver", NOT "immutable": the sender can still write through its old mapping, so a
//    sender must not touch a buffer between handing it over and getting the answer.
//    That is enough when the sender is trusted (host -> extension inputs).
//  * Buffer::seal_immutable() drops the writable mapping, remaps read-only and adds
//    F_SEAL_WRITE, which the kernel grants only when no writable shared mapping exists
//    anywhere. Then nothing can change the bytes any more (no TOCTOU, even against the
//    sender), at the price of never reusing the buffer. Use it (and require it with
//    SealPolicy::kImmutable) when the sender is not trusted (extension -> host outputs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "airlock/shm/unique_fd.h"
#include "airlock/status.h"

namespace airlock::shm {

// What a receiver demands of an fd before it maps it.
enum class SealPolicy : uint8_t {
  // F_SEAL_GROW | F_SEAL_SHRINK and F_SEAL_FUTURE_WRITE (or F_SEAL_WRITE): the receiver
  // cannot write and the size cannot change under it. Trust the sender not to write
  // during a call.
  kReadOnly,
  // F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_WRITE: nobody, the sender included, can write.
  kImmutable,
};

class Buffer {
 public:
  // A new memfd of exactly `size` bytes (> 0), mapped read-write. The name only shows up
  // in /proc/<pid>/fd and /proc/<pid>/maps ("/memfd:<name>"), handy when hunting leaks.
  static Result<Buffer> create(uint64_t size, std::string_view name = "airlock");
  // A new memfd holding a copy of `bytes` (written through the fd, never mapped here),
  // sealed immutable at once: for handing bytes that already sit in memory to a peer
  // without a mapping to set up and tear down on this side (each munmap of a process
  // with threads on other CPUs costs a TLB shootdown). data() and bytes() are empty.
  static Result<Buffer> copy_of(std::span<const std::byte> bytes, std::string_view name = "airlock");

  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  // Process-unique, never 0; what ShmRef::buffer_id carries once the fd was passed.
  uint64_t id() const { return id_; }
  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }

  // Writable view; nullptr / empty once seal_immutable() took the writable mapping away.
  std::byte* data() { return writable_ ? base_ : nullptr; }
  std::span<std::byte> writable() { return {data(), writable_ ? size_ : 0}; }
  // Read view, always valid.
  const std::byte* data() const { return base_; }
  std::span<const std::byte> bytes() const { return {base_, base_ ? size_ : 0}; }

  // F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK. Idempotent; permanent (seals can
  // never be removed). The writable mapping stays usable.
  Status seal();
  // seal() + F_SEAL_WRITE after replacing the writable mapping with a read-only one.
  // Fails (Unavailable) if someone else still holds a writable mapping of this memfd; the
  // buffer is then read-only here but not yet immutable.
  Status seal_immutable();
  bool sealed() const { return sealed_; }
  bool immutable() const { return immutable_; }

  // Which peer (Exporter) this buffer was first shared with; 0 = none yet. One buffer
  // only ever goes to one peer, so stale bytes of one extension's call can never be seen
  // by another extension that later receives the same (pooled) buffer.
  uint64_t peer() const { return peer_; }
  void set_peer(uint64_t p) { peer_ = p; }
  // For a buffer meant for many readers (one dataset given to every extension): any
  // exporter may share it. Only for buffers that are never pooled for other contents.
  static constexpr uint64_t kAnyPeer = ~uint64_t{0};
  void allow_any_peer() { peer_ = kAnyPeer; }

 private:
  Buffer(UniqueFd fd, std::byte* base, uint64_t size, uint64_t id);
  void unmap();

  UniqueFd fd_;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t id_ = 0;
  uint64_t peer_ = 0;
  bool writable_ = true;  // base_ is the read-write mapping
  bool sealed_ = false;
  bool immutable_ = false;
};

// The receiver's read-only mapping of a buffer someone passed it. Owns fd and mapping.
class ReadOnlyMapping {
 public:
  ReadOnlyMapping(ReadOnlyMapping&& o) noexcept;
  ReadOnlyMapping& operator=(ReadOnlyMapping&& o) noexcept;
  ReadOnlyMapping(const ReadOnlyMapping&) = delete;
  ReadOnlyMapping& operator=(const ReadOnlyMapping&) = delete;
  ~ReadOnlyMapping();

  const std::byte* data() const { return base_; }
  uint64_t size() const { return size_; }
  std::span<const std::byte> bytes() const { return {base_, size_}; }
  // Kept open so the engine can map these pages again elsewhere (e.g. MAP_FIXED into a
  // wasm linear memory); the seals make such mappings read-only as well.
  int fd() const { return fd_.get(); }

 private:
  friend Result<ReadOnlyMapping> map_readonly(UniqueFd, uint64_t, SealPolicy);
  ReadOnlyMapping(UniqueFd fd, const std::byte* base, uint64_t size);
  void unmap();

  UniqueFd fd_;
  const std::byte* base_ = nullptr;
  uint64_t size_ = 0;
};

// The checks of map_readonly without the mapping: seals as `policy` requires, size as
// announced. InvalidArgument says which is wrong.
Status verify_sealed(int fd, uint64_t expected_size, SealPolicy policy);

// Takes ownership of `fd` (closed on failure too). Refuses with InvalidArgument unless
// the fd is a memfd carrying the seals `policy` demands and exactly `expected_size`
// bytes long. The seals are checked *before* mapping: a read-only mapping made before
// F_SEAL_FUTURE_WRITE could later be mprotect()ed writable, one made after cannot.
Result<ReadOnlyMapping> map_readonly(UniqueFd fd, uint64_t expected_size,
                                     SealPolicy policy = SealPolicy::kReadOnly);

}  // namespace airlock::shm
