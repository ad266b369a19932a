// Reuses memfd buffers: a fresh 8 MiB memfd costs ~10 ms (page faults on first touch), a
// reused one whose pages are already populated and mapped on both sides ~0.2 ms.
//
// Reuse with seals: a pooled buffer is sealed with F_SEAL_FUTURE_WRITE the first time it
// is handed over. That seal is permanent, but it only stops *new* writable mappings and
// write(2); the pool keeps the buffer's original writable mapping, so the host refills it
// for the next call, and the receiver's read-only mapping (kept by its Registry) sees the
// new bytes without any new mmap. The contract that makes this safe:
//  * the host writes only while it holds the Lease and before handing the buffer over,
//    and does not write again until the call that uses it has answered;
//  * the receiver treats the contents as valid only for the duration of that call.
// Use one Pool per peer (extension): a buffer handed to one extension is never handed to
// another, so no extension can read what the host wrote for a different one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "airlock/shm/buffer.h"
#include "airlock/status.h"

namespace airlock::shm {

struct PoolOptions {
  uint64_t min_class_bytes = 64u << 10;    // smallest size class (powers of two above it)
  uint64_t max_class_bytes = 256u << 20;   // larger requests get an unpooled buffer
  uint64_t max_idle_bytes = 512u << 20;    // idle buffers kept beyond this are freed
};

class Pool;

// A buffer on loan from a Pool; goes back to the pool when destroyed (or release()d).
class Lease {
 public:
  Lease() = default;
  Lease(Lease&&) noexcept = default;
  Lease& operator=(Lease&& o) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { release(); }

  Buffer& buffer() { return *buffer_; }
  const Buffer& buffer() const { return *buffer_; }
  // The size asked for; the buffer itself is the (larger) size class.
  uint64_t size() const { return size_; }
  // Empty if someone made the buffer immutable meanwhile.
  std::span<std::byte> writable() {
    auto w = buffer_->writable();
    return w.empty() ? w : w.first(size_);
  }
  std::span<const std::byte> bytes() const { return buffer_->bytes().first(size_); }
  explicit operator bool() const { return buffer_ != nullptr; }

  // Returns the buffer now. Only once the call that read it has answered.
  void release();

 private:
  friend class Pool;
  struct Shared;
  Lease(std::shared_ptr<Shared> pool, std::unique_ptr<Buffer> b, uint64_t size)
      : pool_(std::move(pool)), buffer_(std::move(b)), size_(size) {}

  std::shared_ptr<Shared> pool_;  // keeps the pool's state alive if the Pool dies first
  std::unique_ptr<Buffer> buffer_;
  uint64_t size_ = 0;
};

class Pool {
 public:
  explicit Pool(PoolOptions opts = {});
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // An idle buffer of the right size class, or a new one. Thread-safe.
  Result<Lease> acquire(uint64_t size);

  // Called with a buffer's id just before the pool frees it (trim, over the idle bound,
  // oversized, and in ~Pool) so the owner can tell the peer to unmap it (Exporter::drop).
  // Whatever it uses must outlive the Pool (declare the Exporter first) or be unhooked
  // with set_on_free(nullptr) before it dies.
  void set_on_free(std::function<void(uint64_t id)> f);

  void trim();  // frees every idle buffer
  uint64_t idle_bytes() const;
  size_t idle_count() const;
  size_t leased_count() const;

  // The size class a request of `size` bytes gets, or nullopt if it is not pooled.
  std::optional<uint64_t> class_for(uint64_t size) const;

 private:
  std::shared_ptr<Lease::Shared> shared_;
};

}  // namespace airlock::shm
