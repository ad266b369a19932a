#include "airlock/shm/registry.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace airlock::shm {

namespace {
std::string id_text(uint64_t id) { return "shm buffer " + std::to_string(id); }
}  // namespace

Status Registry::add(uint64_t id, UniqueFd fd, uint64_t size) {
  if (id == 0) return make_error(Code::InvalidArgument, "shm buffer id 0 is reserved");
  // Seals and size are checked now, by a throw-away look (map_readonly checks them again
  // when it maps): a buffer that would be refused is refused when it arrives.
  if (auto st = verify_sealed(fd.get(), size, opts_.policy); !st) {
    return make_error(st.error().code, id_text(id) + ": " + st.error().message);
  }
  std::lock_guard lock(mu_);
  if (entries_.count(id)) return make_error(Code::InvalidArgument, id_text(id) + " announced twice");
  if (entries_.size() >= opts_.max_buffers) {
    return make_error(Code::ResourceExhausted, "peer holds " + std::to_string(entries_.size()) + " shm buffers already");
  }
  if (size > opts_.max_bytes - bytes_) {
    return make_error(Code::ResourceExhausted, id_text(id) + " of " + std::to_string(size) + " bytes: the peer would hold more than " +
                                                   std::to_string(opts_.max_bytes) + " bytes of shm buffers");
  }
  entries_.emplace(id, Entry{std::move(fd), size, nullptr});
  bytes_ += size;
  return ok_status();
}

Status Registry::pump(FdChannel& channel, const std::function<void(uint64_t id)>& on_return) {
  for (;;) {
    auto r = channel.try_recv_message();
    if (!r) return r.take_error();
    if (!r->has_value()) return ok_status();
    SideMessage& m = **r;
    if (m.kind == SideMessage::Kind::kReturn) {
      if (on_return) on_return(m.id);
      continue;
    }
    if (m.kind == SideMessage::Kind::kLastWords) {
      std::lock_guard lock(mu_);
      last_words_ = m.id;
      continue;
    }
    if (m.kind == SideMessage::Kind::kRing) {  // only ever the first message, read before this
      return make_error(Code::InvalidArgument, "fd channel: a ring offered after the start");
    }
    Status s = m.kind == SideMessage::Kind::kAnnounce ? add(m.id, std::move(m.fd), m.size)
                                                      : release(m.id);
    if (!s) return s;
  }
}

Result<View> Registry::resolve(const proto::ShmRef& ref) const {
  std::shared_ptr<const ReadOnlyMapping> m;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(ref.buffer_id);
    if (it == entries_.end())
      return make_error(Code::InvalidArgument, id_text(ref.buffer_id) + " unknown (never passed)");
    Entry& e = it->second;
    if (!e.mapping) {
      auto mapped = map_readonly(std::move(e.fd), e.size, opts_.policy);
      if (!mapped) {
        // The fd is gone with the failed attempt: the entry cannot be used again.
        bytes_ -= e.size;
        entries_.erase(it);
        return make_error(mapped.error().code, id_text(ref.buffer_id) + ": " + mapped.error().message);
      }
      e.mapping = std::make_shared<const ReadOnlyMapping>(std::move(*mapped));
    }
    m = e.mapping;
  }
  // Written so nothing can overflow: offset <= size, then length <= size - offset.
  const uint64_t size = m->size();
  if (ref.offset > size || ref.length > size - ref.offset) {
    return make_error(Code::InvalidArgument,
                      id_text(ref.buffer_id) + ": slice [offset " + std::to_string(ref.offset) +
                          ", length " + std::to_string(ref.length) + "] outside its " +
                          std::to_string(size) + " bytes");
  }
  View v;
  v.bytes = m->bytes().subspan(ref.offset, ref.length);
  v.offset = ref.offset;
  v.mapping = std::move(m);
  return v;
}

Status Registry::read_once(const proto::ShmRef& ref, std::string& out) {
  Entry e;  // closed (or unmapped) after the lock is dropped
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(ref.buffer_id);
    if (it == entries_.end()) return make_error(Code::InvalidArgument, id_text(ref.buffer_id) + " unknown (never passed)");
    if (ref.offset != 0 || ref.length != it->second.size) {
      return make_error(Code::InvalidArgument, id_text(ref.buffer_id) + ": a lent buffer is read whole");
    }
    bytes_ -= it->second.size;
    e = std::move(it->second);
    entries_.erase(it);
    releases_++;
  }
  out.resize(e.size);
  if (e.mapping) {
    std::memcpy(out.data(), e.mapping->data(), e.size);
    return ok_status();
  }
  for (uint64_t got = 0; got < e.size;) {
    const ssize_t n = ::pread(e.fd.get(), out.data() + got, e.size - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_error(Code::InvalidArgument, id_text(ref.buffer_id) + ": shorter than announced");
    got += static_cast<uint64_t>(n);
  }
  return ok_status();
}

Status Registry::release(uint64_t id) {
  Entry last;  // unmapped after the lock is dropped
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return make_error(Code::NotFound, id_text(id) + " not held");
  bytes_ -= it->second.size;
  last = std::move(it->second);
  entries_.erase(it);
  releases_++;
  return ok_status();
}

void Registry::clear() {
  std::unordered_map<uint64_t, Entry> gone;
  std::lock_guard lock(mu_);
  gone.swap(entries_);
  releases_ += gone.size();
  bytes_ = 0;
  last_words_.reset();
}

std::optional<uint64_t> Registry::last_words() const {
  std::lock_guard lock(mu_);
  return last_words_;
}

uint64_t Registry::releases() const {
  std::lock_guard lock(mu_);
  return releases_;
}

size_t Registry::open_count() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

uint64_t Registry::mapped_bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

namespace {
std::atomic<uint64_t> g_next_exporter{1};
}  // namespace

Exporter::Exporter(FdChannel& channel, int timeout_ms)
    : channel_(&channel), timeout_ms_(timeout_ms), token_(g_next_exporter++) {}

Result<proto::ShmRef> Exporter::share(Buffer& b, uint64_t offset, uint64_t length) {
  if (offset > b.size() || length > b.size() - offset)
    return make_error(Code::InvalidArgument, "shm share: slice outside the buffer");
  if (b.peer() != 0 && b.peer() != Buffer::kAnyPeer && b.peer() != token_)
    return make_error(Code::PermissionDenied,
                      id_text(b.id()) + " was shared with another peer; use one Pool per peer");
  if (auto s = b.seal(); !s) return s.take_error();
  std::lock_guard lock(mu_);
  if (!sent_.count(b.id())) {
    if (auto s = channel_->announce(b.id(), b.fd(), b.size(), timeout_ms_); !s) return s.take_error();
    sent_.insert(b.id());
    if (b.peer() != Buffer::kAnyPeer) b.set_peer(token_);
  }
  return proto::ShmRef{b.id(), offset, length};
}

Status Exporter::drop(uint64_t id) {
  std::lock_guard lock(mu_);
  if (sent_.erase(id) == 0) return ok_status();
  return channel_->drop(id, timeout_ms_);
}

void Exporter::forget(uint64_t id) {
  std::lock_guard lock(mu_);
  sent_.erase(id);
}

void Exporter::forget_all() {
  std::lock_guard lock(mu_);
  sent_.clear();
}

bool Exporter::shared(uint64_t id) const {
  std::lock_guard lock(mu_);
  return sent_.count(id) != 0;
}

size_t Exporter::shared_count() const {
  std::lock_guard lock(mu_);
  return sent_.size();
}

}  // namespace airlock::shm
