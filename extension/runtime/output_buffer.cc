#include "runtime/output_buffer.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4  // Linux 5.7; for shared mappings 5.13
#endif

namespace airlock::runtime {

namespace {
bool anonymous_again(uint8_t* at, size_t size) {
  return mmap(at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) != MAP_FAILED;
}
}  // namespace

OutputBuffer& OutputBuffer::operator=(OutputBuffer&& o) noexcept {
  if (this != &o) {
    release();
    at_ = std::exchange(o.at_, nullptr);
    length_ = std::exchange(o.length_, 0);
    poisoned_ = std::exchange(o.poisoned_, false);
    slot_ = std::exchange(o.slot_, OutputSlot{});
    source_ = std::exchange(o.source_, nullptr);
  }
  return *this;
}

Result<OutputBuffer> OutputBuffer::map(uint8_t* at, const OutputSlot& slot, size_t length, OutputSource* source,
                                       bool* broken) {
  *broken = false;
  // Fresh memory, as memory.grow gives: a pooled buffer still holds an earlier output,
  // perhaps another skill's (the pages are resident: ~0.4 ms for 8 MiB).
  std::memset(slot.data, 0, slot.size);
  // DONTUNMAP leaves the slot's own range mapped (its pages reachable through it again
  // should we fail to move back), so nothing else can take that address meanwhile.
  void* p = mremap(slot.data, slot.size, slot.size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, at);
  if (p == MAP_FAILED) {
    const int err = errno;
    // A failed MREMAP_FIXED may have unmapped the target: memory back, or the instance
    // must not live on.
    *broken = !anonymous_again(at, slot.size);
    return make_error(Code::Internal, std::string("output buffer: mremap: ") + std::strerror(err));
  }
  OutputBuffer b;
  b.at_ = at;
  b.length_ = length;
  b.slot_ = slot;
  b.source_ = source;
  return b;
}

OutputBuffer OutputBuffer::plain(uint8_t* at, size_t length) {
  OutputBuffer b;
  b.at_ = at;
  b.length_ = length;
  return b;
}

bool OutputBuffer::move_back() {
  // Page tables and all, onto the slot's own (still mapped) range: the pages stay
  // resident there for the next output. Then the wasm pages are anonymous again.
  const bool ok = mremap(at_, slot_.size, slot_.size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, slot_.data) !=
                  MAP_FAILED;
  // If this fails the range may still map the slot, writable: the instance must go
  // (poisoned), or a later call could write into outputs that are not its own.
  if (!anonymous_again(at_, slot_.size)) poisoned_ = true;
  at_ = nullptr;
  return ok;  // if not, the slot's range still maps the same pages: they fault in again
}

WrittenOutput OutputBuffer::take(bool caller_takes_slot, std::string* copy) {
  WrittenOutput w;
  if (!at_) return w;
  if (!slot_.data) {  // plain: the bytes are the skill's
    copy->assign(reinterpret_cast<const char*>(at_), length_);
    at_ = nullptr;
    return w;
  }
  move_back();
  if (caller_takes_slot) {
    w.token = std::exchange(slot_.token, 0);
    w.length = length_;
  } else {
    copy->assign(reinterpret_cast<const char*>(slot_.data), length_);
  }
  release();
  return w;
}

void OutputBuffer::release() {
  if (at_ && slot_.data) move_back();
  at_ = nullptr;
  if (slot_.token && source_) source_->release(slot_.token);
  slot_ = {};
}

void OutputBuffer::forget() {
  at_ = nullptr;  // V8 freed the range and our moved mapping with it; the slot's own range still maps its pages
  if (slot_.token && source_) source_->release(slot_.token);
  slot_ = {};
}

}  // namespace airlock::runtime
