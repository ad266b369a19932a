#include "airlock/shm/pool.h"

#include <algorithm>
#include <bit>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace airlock::shm {

// The pool's state, shared with its leases so a lease outliving the Pool is harmless.
struct Lease::Shared {
  PoolOptions opts;
  std::mutex mu;
  bool alive = true;  // false once the Pool is gone: returned buffers are just freed
  std::map<uint64_t, std::vector<std::unique_ptr<Buffer>>> idle;  // class size -> buffers
  uint64_t idle_bytes = 0;
  size_t leased = 0;
  std::function<void(uint64_t)> on_free;

  // Frees buffers outside the lock: on_free may send on a socket.
  static void free_all(std::vector<std::unique_ptr<Buffer>> bufs, std::function<void(uint64_t)> hook) {
    for (auto& b : bufs) {
      if (hook) hook(b->id());
      b.reset();
    }
  }
};

Lease& Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    pool_ = std::move(o.pool_);
    buffer_ = std::move(o.buffer_);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void Lease::release() {
  if (!buffer_) return;
  auto pool = std::move(pool_);
  std::unique_ptr<Buffer> b = std::move(buffer_);
  size_ = 0;
  std::vector<std::unique_ptr<Buffer>> to_free;
  std::function<void(uint64_t)> hook;
  {
    std::lock_guard lock(pool->mu);
    --pool->leased;
    const uint64_t cls = b->size();
    // A buffer made immutable can never be written again: not worth keeping.
    const bool keep = pool->alive && !b->immutable() && cls <= pool->opts.max_class_bytes &&
                      pool->idle_bytes + cls <= pool->opts.max_idle_bytes;
    if (keep) {
      pool->idle_bytes += cls;
      pool->idle[cls].push_back(std::move(b));
      return;
    }
    to_free.push_back(std::move(b));
    hook = pool->on_free;
  }
  pool->free_all(std::move(to_free), std::move(hook));
}

Pool::Pool(PoolOptions opts) : shared_(std::make_shared<Lease::Shared>()) {
  if (opts.min_class_bytes == 0) opts.min_class_bytes = 4096;
  opts.min_class_bytes = std::bit_ceil(opts.min_class_bytes);
  shared_->opts = opts;
}

Pool::~Pool() {
  trim();
  std::lock_guard lock(shared_->mu);
  shared_->alive = false;
  shared_->on_free = nullptr;  // whatever it points at may die with us
}

std::optional<uint64_t> Pool::class_for(uint64_t size) const {
  const auto& o = shared_->opts;
  if (size > o.max_class_bytes || size > (uint64_t{1} << 62)) return std::nullopt;
  return std::max(o.min_class_bytes, std::bit_ceil(size));
}

Result<Lease> Pool::acquire(uint64_t size) {
  if (size == 0) return make_error(Code::InvalidArgument, "shm pool: acquire(0)");
  auto cls = class_for(size);
  if (cls) {
    std::lock_guard lock(shared_->mu);
    auto it = shared_->idle.find(*cls);
    if (it != shared_->idle.end() && !it->second.empty()) {
      std::unique_ptr<Buffer> b = std::move(it->second.back());
      it->second.pop_back();
      shared_->idle_bytes -= *cls;
      ++shared_->leased;
      return Lease(shared_, std::move(b), size);
    }
  }
  // Oversized requests get an exact-size buffer that is freed on release.
  auto b = Buffer::create(cls.value_or(size), "airlock-pool");
  if (!b) return b.take_error();
  std::lock_guard lock(shared_->mu);
  ++shared_->leased;
  return Lease(shared_, std::make_unique<Buffer>(std::move(*b)), size);
}

void Pool::set_on_free(std::function<void(uint64_t id)> f) {
  std::lock_guard lock(shared_->mu);
  shared_->on_free = std::move(f);
}

void Pool::trim() {
  std::vector<std::unique_ptr<Buffer>> to_free;
  std::function<void(uint64_t)> hook;
  {
    std::lock_guard lock(shared_->mu);
    for (auto& [cls, bufs] : shared_->idle)
      for (auto& b : bufs) to_free.push_back(std::move(b));
    shared_->idle.clear();
    shared_->idle_bytes = 0;
    hook = shared_->on_free;
  }
  shared_->free_all(std::move(to_free), std::move(hook));
}

uint64_t Pool::idle_bytes() const {
  std::lock_guard lock(shared_->mu);
  return shared_->idle_bytes;
}

size_t Pool::idle_count() const {
  std::lock_guard lock(shared_->mu);
  size_t n = 0;
  for (auto& [cls, bufs] : shared_->idle) n += bufs.size();
  return n;
}

size_t Pool::leased_count() const {
  std::lock_guard lock(shared_->mu);
  return shared_->leased;
}

}  // namespace airlock::shm
