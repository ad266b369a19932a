// A shared input mapped into a skill's linear memory instead of copied into it
// (issue 15; docs/SKILL_ABI.md "Large inputs"). The runtime grows a fresh instance's
// memory by the window's pages, then maps the sealed memfd's pages over them.
//
// MAP_PRIVATE, readable and writable: the skill reads the host's pages in place (no
// copy, no fault for pages already resident), and a write makes a private copy of that
// one page, so the shared buffer never changes, and a skill that writes into its input
// (the ABI has always given it its own input bytes) keeps working. A read-only mapping
// was measured against: a write from wasm code becomes V8's out-of-bounds trap, but
// memory.fill/memory.copy run in V8's C++ runtime, where the same fault kills the
// extension.
//
// The window must be undone before the instance's memory goes back to V8 (a GC may
// hand that address range to someone else): release() maps fresh anonymous memory over
// it, and the destructor does the same.
#pragma once

#include <cstddef>
#include <cstdint>

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
  // (page-aligned, inside the instance's memory). Errors: Internal with errno's words.
  static Result<InputWindow> map(uint8_t* at, int fd, uint64_t file_offset, size_t length);
  void release();
  void forget() { at_ = nullptr, len_ = 0; }  // V8 moved the memory: the range is not ours
  bool active() const { return at_ != nullptr; }
  size_t length() const { return len_; }

 private:
  uint8_t* at_ = nullptr;
  size_t len_ = 0;
};

}  // namespace airlock::runtime
