#include "runtime/input_window.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace airlock::runtime {

InputWindow& InputWindow::operator=(InputWindow&& o) noexcept {
  if (this != &o) {
    release();
    at_ = std::exchange(o.at_, nullptr);
    len_ = std::exchange(o.len_, 0);
  }
  return *this;
}

Result<InputWindow> InputWindow::map(uint8_t* at, int fd, uint64_t file_offset, size_t length) {
  InputWindow w;
  if (length == 0) return w;
  void* p = mmap(at, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd,
                 static_cast<off_t>(file_offset));
  if (p == MAP_FAILED) {
    const int err = errno;
    // MAP_FIXED failed: the range may now be unmapped. Put anonymous memory back so the
    // instance's memory stays whole (it is dropped after this call anyway).
    mmap(at, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return make_error(Code::Internal, std::string("cannot map the shared input: ") + std::strerror(err));
  }
  w.at_ = at;
  w.len_ = length;
  return w;
}

void InputWindow::release() {
  if (!at_) return;
  // Zero-filled private memory again, as V8 left it: V8 never learns of the window.
  mmap(at_, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  at_ = nullptr;
  len_ = 0;
}

}  // namespace airlock::runtime
