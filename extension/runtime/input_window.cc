#include "runtime/input_window.h"

#include <signal.h>
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

namespace airlock::runtime {

namespace {

// The windows mapped read-only right now, for the SIGSEGV handler: lock-free slots it
// can read at any instant (only the loop thread maps and unmaps; the handler runs on
// the thread that faulted, which is that same thread when wasm or an import writes).
struct Guard {
  std::atomic<uintptr_t> start{0}, end{0};
  std::atomic<bool> written{false};
};
constexpr uintptr_t kClaimed = 1;  // a slot being filled in: not yet a window
constexpr size_t kGuards = 256;  // more windows at once (parked mapped calls) map read-write, unkept
std::array<Guard, kGuards> g_guards;
struct sigaction g_next {};  // the handler before ours: V8's trap handler, or the default

void on_segv(int sig, siginfo_t* info, void* ctx) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (info->si_code == SEGV_ACCERR) {
    const int saved_errno = errno;
    bool mended = false;
    // Every slot that covers the address (a stale one too, should V8 have moved a memory
    // whose window was not released yet): each is spoilt.
    for (auto& g : g_guards) {
      const uintptr_t s = g.start.load(std::memory_order_acquire);
      if (s <= kClaimed || addr < s || addr >= g.end.load(std::memory_order_acquire)) continue;
      // A write into a read-only input: let it through (the page becomes a private
      // copy, as with any MAP_PRIVATE write) and remember that the window is spoilt.
      g.written.store(true, std::memory_order_release);
      mended |= mprotect(reinterpret_cast<void*>(s), g.end.load(std::memory_order_relaxed) - s, PROT_READ | PROT_WRITE) == 0;
    }
    errno = saved_errno;
    if (mended) return;
  }
  // Not ours: V8's trap handler (a wasm out-of-bounds access) or a real crash.
  if (g_next.sa_flags & SA_SIGINFO) {
    g_next.sa_sigaction(sig, info, ctx);
  } else if (g_next.sa_handler == SIG_DFL || g_next.sa_handler == SIG_IGN) {
    signal(sig, SIG_DFL);  // the fault repeats on return and ends the process as it would have
  } else {
    g_next.sa_handler(sig);
  }
}

// Installed on the first window, so after V8's own (which it chains to).
bool install_handler() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ok = sigaction(SIGSEGV, &sa, &g_next) == 0;
  });
  return ok;
}

Guard* take_guard(uint8_t* at, size_t length) {
  if (!install_handler()) return nullptr;
  for (auto& g : g_guards) {
    // Claimed with a compare-and-swap: runtimes on other threads (in-process hosts,
    // tests) take slots too.
    uintptr_t free_slot = 0;
    if (!g.start.compare_exchange_strong(free_slot, kClaimed, std::memory_order_acq_rel)) continue;
    g.written.store(false, std::memory_order_relaxed);
    g.end.store(reinterpret_cast<uintptr_t>(at + length), std::memory_order_release);
    g.start.store(reinterpret_cast<uintptr_t>(at), std::memory_order_release);
    return &g;
  }
  return nullptr;
}

void drop_guard(void* g) {
  if (g) static_cast<Guard*>(g)->start.store(0, std::memory_order_release);
}

}  // namespace

InputWindow& InputWindow::operator=(InputWindow&& o) noexcept {
  if (this != &o) {
    release();
    at_ = std::exchange(o.at_, nullptr);
    len_ = std::exchange(o.len_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
    file_offset_ = o.file_offset_;
    guard_ = std::exchange(o.guard_, nullptr);
    source_ = std::move(o.source_);
  }
  return *this;
}

Result<InputWindow> InputWindow::map(uint8_t* at, int fd, uint64_t file_offset, size_t length, size_t window,
                                     const std::shared_ptr<const void>& source) {
  InputWindow w;
  if (length == 0 || window < length) return w;
  // Read-only while a guard slot watches it; without one, writable and never kept.
  Guard* g = take_guard(at, length);
  void* p = mmap(at, length, g ? PROT_READ : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd,
                 static_cast<off_t>(file_offset));
  if (p == MAP_FAILED) {
    const int err = errno;
    drop_guard(g);
    // MAP_FIXED failed: the range may now be unmapped. Put anonymous memory back so the
    // instance's memory stays whole (it is dropped after this call anyway).
    mmap(at, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return make_error(Code::Internal, std::string("cannot map the shared input: ") + std::strerror(err));
  }
  w.at_ = at;
  w.len_ = window;
  w.mapped_ = length;
  w.file_offset_ = file_offset;
  w.guard_ = g;
  w.source_ = source;
  return w;
}

bool InputWindow::holds(const std::shared_ptr<const void>& source, uint64_t file_offset, size_t length) const {
  if (!at_ || !source || file_offset != file_offset_ || length != mapped_) return false;
  // Same owner, not merely the same address: the weak reference keeps the control block,
  // so a live source cannot share it with a buffer that came after ours.
  return !source_.owner_before(source) && !source.owner_before(source_);
}

bool InputWindow::settle() {
  if (!at_) return false;
  const auto* g = static_cast<const Guard*>(guard_);
  if (!g || g->written.load(std::memory_order_acquire) || source_.expired()) {
    release();
    return false;
  }
  // The skill may have written past its input, in the rest of the window: zero again.
  if (len_ > mapped_ && madvise(at_ + mapped_, len_ - mapped_, MADV_DONTNEED) != 0) {
    release();
    return false;
  }
  return true;
}

void InputWindow::forget() {
  drop_guard(guard_);  // the range is someone else's now: a fault there is not ours to mend
  guard_ = nullptr;
  at_ = nullptr, len_ = 0, mapped_ = 0;
  source_.reset();
}

void InputWindow::release() {
  if (!at_) return;
  drop_guard(guard_);
  guard_ = nullptr;
  // Zero-filled private memory again, as V8 left it: V8 never learns of the window.
  mmap(at_, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  at_ = nullptr;
  len_ = 0;
  mapped_ = 0;
  source_.reset();
}

}  // namespace airlock::runtime
