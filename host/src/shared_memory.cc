// Shared memory on the host side: SharedBuffer (a sealed memfd from an extension's pool,
// or host-wide), Extension::allocate and the sending of a buffer's fd before the frame
// that names it. Large outputs coming back are taken in peer_frames.cc.
#include <poll.h>
#include <unistd.h>

#include <cstring>

#include "host_impl.h"

namespace airlock {

using detail::ExtensionState;

Result<proto::ShmRef> Extension::share(const Payload& in) {
  auto& b = *in.buffer().s_;
  if (b.owner && b.owner != s_.get()) {
    return make_error(Code::InvalidArgument, "shared buffer belongs to another extension (allocate it from '" +
                                                 s_->opts.name + "', or host-wide with Host::allocate)");
  }
  if (in.offset() > b.size || in.length() > b.size - in.offset()) {
    return make_error(Code::InvalidArgument, "slice [" + std::to_string(in.offset()) + ", +" + std::to_string(in.length()) +
                                                 ") is outside the " + std::to_string(b.size) + "-byte buffer");
  }
  if (!b.owner) {
    std::lock_guard lk(b.mu);
    bool known = std::any_of(b.shared_with.begin(), b.shared_with.end(), [&](auto& w) { return w.lock() == s_; });
    if (!known) b.shared_with.push_back(s_);
  }
  std::lock_guard lk(s_->shm_mu);
  if (!s_->exporter || !s_->side.valid()) {
    return make_error(Code::Unavailable, "extension '" + s_->opts.name + "' is not running");
  }
  // Sends the fd over the side channel the first time this process sees the buffer;
  // always before the frame that names it.
  return s_->exporter->share(b.buffer(), in.offset(), in.length());
}

namespace detail {
std::optional<proto::ShmRef> ExtensionState::lend_code(shm::Buffer& code, std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    int room = -1;  // a dup of the side socket, to wait on without the lock
    {
      std::lock_guard lk(shm_mu);
      if (!exporter || !side.valid()) return std::nullopt;
      auto r = exporter->share(code);
      if (r.ok()) return *r;
      // Full (the exporter never waits): ~270 announcements fit in the socket's buffer,
      // and the extension takes them as it reaches the loads that name them.
      if (r.error().code != Code::Timeout) return std::nullopt;
      if (std::chrono::steady_clock::now() < deadline) room = ::dup(side.fd());
    }
    if (room < 0) return std::nullopt;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{room, POLLOUT, 0};
    (void)::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left.count(), 1, 1000)));
    ::close(room);
  }
}

void ExtensionState::code_returned(uint64_t id) {
  std::lock_guard lk(shm_mu);
  if (exporter) exporter->forget(id);
}

BufferState::~BufferState() {
  if (!own) return;  // pooled: the pool's on_free hook tells the extension
  for (auto& w : shared_with) {
    if (auto e = w.lock()) {
      std::lock_guard lk(e->shm_mu);
      if (e->exporter && e->side.valid()) (void)e->exporter->drop(own->id());
    }
  }
}
}  // namespace detail

Result<SharedBuffer> Host::allocate(size_t size) {
  if (size == 0) return make_error(Code::InvalidArgument, "cannot allocate an empty shared buffer");
  auto b = shm::Buffer::create(size, "airlock-host");
  if (!b.ok()) return b.take_error();
  auto st = std::make_shared<detail::BufferState>();
  st->own.emplace(std::move(b.value()));
  st->own->allow_any_peer();
  st->size = size;
  return SharedBuffer(std::move(st));
}

Result<SharedBuffer> Extension::allocate(size_t size) {
  if (size == 0) return make_error(Code::InvalidArgument, "cannot allocate an empty shared buffer");
  std::shared_ptr<shm::Pool> pool;
  {
    std::lock_guard lk(s_->shm_mu);
    if (!s_->pool) {
      s_->pool = std::make_shared<shm::Pool>();
      std::weak_ptr<ExtensionState> w = s_;
      s_->pool->set_on_free([w](uint64_t id) {  // a freed buffer: the extension may unmap it
        if (auto e = w.lock()) {
          std::lock_guard l(e->shm_mu);
          if (e->exporter && e->side.valid()) (void)e->exporter->drop(id);
        }
      });
    }
    pool = s_->pool;
  }
  auto lease = pool->acquire(size);
  if (!lease.ok()) return lease.take_error();
  auto st = std::make_shared<detail::BufferState>();
  st->lease = std::move(lease.value());
  st->size = size;
  st->owner = s_.get();
  return SharedBuffer(std::move(st));
}

std::span<uint8_t> SharedBuffer::data() {
  auto w = s_->buffer().writable();
  return {reinterpret_cast<uint8_t*>(w.data()), s_->size};
}
size_t SharedBuffer::size() const { return s_ ? s_->size : 0; }

}  // namespace airlock
