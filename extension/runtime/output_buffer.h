// A call's output written by the skill straight into shared memory (issue 15;
// docs/SKILL_ABI.md "Large outputs"). airlock.output_buffer(len) grows the instance's
// memory by the pages a slot needs (they count against the skill's limit, like any
// allocation) and moves a writable mapping of a pooled shared buffer there, page
// tables and all: mremap(MREMAP_FIXED | MREMAP_DONTUNMAP), ~30-60 µs for 8 MiB and no
// page fault for pages already resident. (A shared buffer sealed for its reader with
// F_SEAL_FUTURE_WRITE may not be mapped writable again, but its existing writable
// mapping may move.) When the call returns the mapping moves back to where it was and
// the wasm pages are anonymous again; the buffer goes to the host as the output, which
// reads it from its own kept mapping, as with any pooled output: no copy in the
// extension. Before: the skill's bytes were copied into a string, then into the pooled
// buffer (2 copies). A fresh memfd per output instead was measured slower than copying
// (8 MiB: 18 ms against 12 ms per call): the kernel allocated, zeroed and freed every
// page each call.
//
// Without a source (in-process) the bytes are ordinary pages of the skill's memory,
// copied once into the result. Like InputWindow, a mapping must be undone before V8
// gets the memory back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "airlock/status.h"

namespace airlock::runtime {

// A writable, page-aligned mapping of `size` bytes (a multiple of the page) of shared
// memory, named by `token`. The runtime zeroes it before the skill sees it.
struct OutputSlot {
  uint8_t* data = nullptr;
  size_t size = 0;
  uint64_t token = 0;
};

// Where airlock.output_buffer gets its shared memory (the server: its output pool).
class OutputSource {
 public:
  virtual ~OutputSource() = default;
  virtual Result<OutputSlot> acquire(size_t len) = 0;
  virtual void release(uint64_t token) = 0;  // not the output after all (an error, a trap)
};

// What a call's output became when the skill wrote it into a slot: `length` bytes of
// the slot `token`, for the caller to send (CallOptions::written_output).
struct WrittenOutput {
  uint64_t token = 0;  // 0: none
  uint64_t length = 0;
};

class OutputBuffer {
 public:
  OutputBuffer() = default;
  OutputBuffer(OutputBuffer&& o) noexcept { *this = static_cast<OutputBuffer&&>(o); }
  OutputBuffer& operator=(OutputBuffer&& o) noexcept;
  OutputBuffer(const OutputBuffer&) = delete;
  OutputBuffer& operator=(const OutputBuffer&) = delete;
  ~OutputBuffer() { release(); }

  // Moves `slot`'s mapping to `at` (page-aligned, inside the instance's memory, at least
  // slot.size bytes grown for it). The output is `length` bytes of it.
  // On failure, *broken says the skill's memory there could not be restored either (the
  // call must trap: its instance must not live on).
  static Result<OutputBuffer> map(uint8_t* at, const OutputSlot& slot, size_t length, OutputSource* source,
                                  bool* broken);
  // Pages of the skill's own memory (no source): the output is `length` bytes from `at`.
  static OutputBuffer plain(uint8_t* at, size_t length);
  // The call ended well: moves the mapping back; the slot is the output if the caller
  // takes slots (it sends it), else its bytes are copied into `copy` and it goes back.
  WrittenOutput take(bool caller_takes_slot, std::string* copy);
  void release();  // moves the mapping back and gives the slot back to its source
  void forget();   // V8 moved the memory: the range is not ours; the slot goes back
  bool active() const { return at_ != nullptr; }
  bool poisoned() const { return poisoned_; }  // a mapping could not be undone: drop the instance
  uint8_t* at() const { return at_; }
  size_t length() const { return length_; }

 private:
  bool move_back();
  uint8_t* at_ = nullptr;
  size_t length_ = 0;
  bool poisoned_ = false;
  OutputSlot slot_;  // data == nullptr: plain
  OutputSource* source_ = nullptr;
};

}  // namespace airlock::runtime
