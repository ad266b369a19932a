#include "airlock/shm/buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "airlock/shm/accounting.h"

namespace airlock::shm {
namespace {

// Linux >= 6.3; glibc 2.36's headers predate it. Makes the memfd non-executable for
// good (F_SEAL_EXEC): skill inputs are data, never code.
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

constexpr int kReadOnlySeals = F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK;

std::atomic<uint64_t> g_next_id{1};

Error sys_error(Code c, std::string what) {
  return make_error(c, what + ": " + std::strerror(errno));
}

std::string seal_names(int seals) {
  std::string s;
  auto add = [&](int bit, const char* name) {
    if (seals & bit) s += s.empty() ? name : std::string("|") + name;
  };
  add(F_SEAL_SEAL, "SEAL");
  add(F_SEAL_SHRINK, "SHRINK");
  add(F_SEAL_GROW, "GROW");
  add(F_SEAL_WRITE, "WRITE");
  add(F_SEAL_FUTURE_WRITE, "FUTURE_WRITE");
  return s.empty() ? "none" : s;
}

}  // namespace

namespace {
Result<UniqueFd> new_memfd(std::string_view name) {
  std::string n(name.substr(0, 200));  // the kernel limits names to 249 bytes
  int fd = ::memfd_create(n.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
  if (fd < 0 && errno == EINVAL)  // kernel < 6.3: no MFD_NOEXEC_SEAL
    fd = ::memfd_create(n.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return sys_error(Code::ResourceExhausted, "memfd_create");
  return UniqueFd(fd);
}
}  // namespace

Result<Buffer> Buffer::create(uint64_t size, std::string_view name) {
  if (size == 0) return make_error(Code::InvalidArgument, "shm buffer of 0 bytes");
  if (size > static_cast<uint64_t>(INT64_MAX))
    return make_error(Code::InvalidArgument, "shm buffer size too large");
  auto owned = new_memfd(name);
  if (!owned) return owned.take_error();
  const int fd = owned->get();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
    return sys_error(Code::ResourceExhausted, "ftruncate memfd");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error(Code::ResourceExhausted, "mmap memfd");
  return Buffer(std::move(*owned), static_cast<std::byte*>(p), size, g_next_id++);
}

Result<Buffer> Buffer::copy_of(std::span<const std::byte> bytes, std::string_view name) {
  if (bytes.empty()) return make_error(Code::InvalidArgument, "shm buffer of 0 bytes");
  auto owned = new_memfd(name);
  if (!owned) return owned.take_error();
  const int fd = owned->get();
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return sys_error(Code::ResourceExhausted, "write memfd");
    done += static_cast<size_t>(n);
  }
  if (::fcntl(fd, F_ADD_SEALS, kReadOnlySeals | F_SEAL_WRITE) != 0)
    return sys_error(Code::Internal, "F_ADD_SEALS WRITE|GROW|SHRINK");
  Buffer b(std::move(*owned), nullptr, bytes.size(), g_next_id++);
  b.writable_ = false;
  b.sealed_ = b.immutable_ = true;
  return b;
}

Buffer::Buffer(UniqueFd fd, std::byte* base, uint64_t size, uint64_t id)
    : fd_(std::move(fd)), base_(base), size_(size), id_(id) {
  detail::count_buffer(1, static_cast<int64_t>(size_));
}

Buffer::Buffer(Buffer&& o) noexcept
    : fd_(std::move(o.fd_)),
      base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      id_(std::exchange(o.id_, 0)),
      peer_(std::exchange(o.peer_, 0)),
      writable_(std::exchange(o.writable_, false)),
      sealed_(std::exchange(o.sealed_, false)),
      immutable_(std::exchange(o.immutable_, false)) {}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    unmap();
    fd_ = std::move(o.fd_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    id_ = std::exchange(o.id_, 0);
    peer_ = std::exchange(o.peer_, 0);
    writable_ = std::exchange(o.writable_, false);
    sealed_ = std::exchange(o.sealed_, false);
    immutable_ = std::exchange(o.immutable_, false);
  }
  return *this;
}

Buffer::~Buffer() { unmap(); }

// Ends this object's hold (mapped or not, as copy_of's are not); a moved-from one holds
// nothing (size 0).
void Buffer::unmap() {
  if (size_ == 0) return;
  if (base_ != nullptr) ::munmap(base_, size_);
  detail::count_buffer(-1, -static_cast<int64_t>(size_));
  base_ = nullptr;
  size_ = 0;
}

Status Buffer::seal() {
  if (sealed_) return ok_status();
  if (::fcntl(fd_.get(), F_ADD_SEALS, kReadOnlySeals) != 0)
    return sys_error(Code::Internal, "F_ADD_SEALS FUTURE_WRITE|GROW|SHRINK");
  sealed_ = true;
  return ok_status();
}

Status Buffer::seal_immutable() {
  if (immutable_) return ok_status();
  if (auto s = seal(); !s) return s;
  if (writable_) {
    // Map read-only *after* F_SEAL_FUTURE_WRITE: such a mapping cannot become writable
    // (no VM_MAYWRITE), so unlike the old writable one it does not block F_SEAL_WRITE.
    void* ro = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_.get(), 0);
    if (ro == MAP_FAILED) return sys_error(Code::ResourceExhausted, "mmap memfd read-only");
    ::munmap(base_, size_);
    base_ = static_cast<std::byte*>(ro);
    writable_ = false;
  }
  if (::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_WRITE) != 0) {
    // EBUSY: some process still has a writable (or pre-seal shared) mapping.
    return sys_error(Code::Unavailable,
                     "F_ADD_SEALS WRITE (memfd still mapped writable elsewhere?)");
  }
  immutable_ = true;
  return ok_status();
}

ReadOnlyMapping::ReadOnlyMapping(UniqueFd fd, const std::byte* base, uint64_t size)
    : fd_(std::move(fd)), base_(base), size_(size) {
  detail::count_mapping(1, static_cast<int64_t>(size_));
}

ReadOnlyMapping::ReadOnlyMapping(ReadOnlyMapping&& o) noexcept
    : fd_(std::move(o.fd_)),
      base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

ReadOnlyMapping& ReadOnlyMapping::operator=(ReadOnlyMapping&& o) noexcept {
  if (this != &o) {
    unmap();
    fd_ = std::move(o.fd_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

ReadOnlyMapping::~ReadOnlyMapping() { unmap(); }

void ReadOnlyMapping::unmap() {
  if (base_ == nullptr) return;
  ::munmap(const_cast<std::byte*>(base_), size_);
  detail::count_mapping(-1, -static_cast<int64_t>(size_));
  base_ = nullptr;
}

Status verify_sealed(int fd, uint64_t expected_size, SealPolicy policy) {
  if (fd < 0) return make_error(Code::InvalidArgument, "shm: no fd");
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0)  // EINVAL: not a memfd/shmem file, so it cannot be sealed at all
    return make_error(Code::InvalidArgument, "shm: fd is not a sealable memfd");
  const int write_seal = policy == SealPolicy::kImmutable
                             ? F_SEAL_WRITE
                             : (seals & F_SEAL_WRITE ? F_SEAL_WRITE : F_SEAL_FUTURE_WRITE);
  const int required = write_seal | F_SEAL_GROW | F_SEAL_SHRINK;
  if ((seals & required) != required) {
    return make_error(Code::InvalidArgument, "shm: buffer not sealed (has " + seal_names(seals) +
                                                 ", needs " + seal_names(required) + ")");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error(Code::Internal, "fstat memfd");
  if (expected_size == 0 || static_cast<uint64_t>(st.st_size) != expected_size) {
    return make_error(Code::InvalidArgument,
                      "shm: buffer is " + std::to_string(st.st_size) + " bytes, announced " +
                          std::to_string(expected_size));
  }
  return ok_status();
}

Result<ReadOnlyMapping> map_readonly(UniqueFd fd, uint64_t expected_size, SealPolicy policy) {
  if (auto st = verify_sealed(fd.get(), expected_size, policy); !st) return st.take_error();
  void* p = ::mmap(nullptr, expected_size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return sys_error(Code::ResourceExhausted, "mmap received memfd");
  return ReadOnlyMapping(std::move(fd), static_cast<const std::byte*>(p), expected_size);
}

}  // namespace airlock::shm
