// A shared input mapped into a skill's linear memory instead of copied into it
// (issue 15; docs/SKILL_ABI.md "Large inputs"). The runtime grows a fresh instance's
// memory by the window's pages, then maps the sealed memfd's pages over them (and keeps
// the instance, its window zero again, for the next such call: skill_runtime.cc).
//
// MAP_PRIVATE and read-only, watched: the skill reads the host's pages in place (no
// copy, no fault for pages already resident). A write (from wasm code, from V8's C++
// memory.fill/memory.copy, or from an import writing a result there) faults; the
// runtime's SIGSEGV handler, installed after V8's trap handler and chaining to it for
// every other fault, finds the address in a watched window, makes that window writable
// and marks it written, and the write goes on into a private copy of the page. So the
// shared buffer never changes, a skill that writes into its input (the ABI has always
// given it its own input bytes) keeps working, and the runtime knows, for free, whether
// the window is still exactly the file. (Letting V8 turn the write into its
// out-of-bounds trap was measured against: memory.fill/copy fault outside wasm code,
// where V8's handler does not look, and the extension died.)
//
// Kept across calls (settle()): a call that wrote none of its input leaves a mapping
// that is exactly what mapping the same range again would give (MAP_PRIVATE pages not
// copied show the file as it is now, so even a pooled buffer the host filled anew reads
// right), so the next call on the same buffer range skips the mmap, the page faults and
// the munmap: 50 MiB summed in 3.4 ms over a kept mapping, as over anonymous memory,
// and 7.4 ms over a fresh one (C, this VM). 256 windows are watched at once; past that a
// window is mapped writable and never kept.
//
// The window must be undone before the instance's memory goes back to V8 (a GC may
// hand that address range to someone else): release() maps fresh anonymous memory over
// it, and the destructor does the same.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "airlock/status.h"

namespace airlock::runtime {

class InputWindow {
 public:
  InputWindow() = default;
  InputWindow(InputWindow&& o) noexcept { *this = static_cast<InputWindow&&>(o); }
  InputWindow& operator=(InputWindow&& o) noexcept;
  InputWindow(const InputWindow&) = delete;
  InputWindow& operator=(const InputWindow&) = delete;
  ~InputWindow() { release(); }

  // Maps `length` bytes of `fd` from `file_offset` (a multiple of the OS page) at `at`
  // (page-aligned, inside the instance's memory), in a window of `window` bytes
  // (>= length) that release() makes zero again whole: the skill may have written past
  // its input too. `source` is what the bytes belong to (the shared buffer's mapping):
  // holds() compares it. Errors: Internal with errno's words.
  static Result<InputWindow> map(uint8_t* at, int fd, uint64_t file_offset, size_t length, size_t window,
                                 const std::shared_ptr<const void>& source);
  // Whether this window, kept by settle(), already maps that range of that buffer.
  bool holds(const std::shared_ptr<const void>& source, uint64_t file_offset, size_t length) const;
  // After a call that ended well: keeps the mapping if nothing wrote into it (and zeroes
  // the window past it), or releases it. Returns whether it was kept.
  bool settle();
  // Releases a kept window whose buffer is gone everywhere else: it must not pin the
  // buffer's pages after the host dropped it.
  void release_if_orphaned() {
    if (at_ && source_.expired()) release();
  }
  void release();
  void forget();  // V8 moved the memory: the range is not ours
  bool active() const { return at_ != nullptr; }
  size_t length() const { return len_; }  // the window's

 private:
  uint8_t* at_ = nullptr;
  size_t len_ = 0;     // the window's
  size_t mapped_ = 0;  // the file's part of it, from at_
  uint64_t file_offset_ = 0;
  void* guard_ = nullptr;  // its watch slot (input_window.cc); none: mapped writable
  std::weak_ptr<const void> source_;
};

}  // namespace airlock::runtime
