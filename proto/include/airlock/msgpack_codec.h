// msgpack encoding of airlock::proto::Frame, for the socketpair transport.
//
// Wire layout of one frame:
//
//   +--------------------+------------------------------------+
//   | N: uint32 LE (4 B) | N bytes: exactly one msgpack array |
//   +--------------------+------------------------------------+
//
// The array is [tag, field...] with the fields in the order below; its length must be
// exactly 1 + the number of fields. uint = msgpack positive int (any width), str = msgpack
// str (not checked for UTF-8), bin = msgpack bin, refs = array of [buffer_id, offset,
// length] uint triples (at most kMaxShmRefs).
//
//   1 Request      [1, id, parent_id, timeout_us, target:str, method:str, payload:bin, refs]
//   2 Response     [2, id, code:uint, trap:uint, error:str, payload:bin, refs]
//   3 Cancel       [3, id]
//   4 LoadSkill    [4, id, name:str, wasm:bin, path:str, max_memory_pages, timeout_ms]
//   5 UnloadSkill  [5, id, name:str]
//   6 Ready        [6, protocol_version, pid:int, name:str, sandbox:str]   (protocol version 2)
//   7 Health       [7, id]
//   8 Shutdown     [8, grace_ms]
//   9 Log          [9, level, message:str, skill:str]   (protocol version 2)
//
// Decoders refuse anything else (maps, ext, floats, nil, deeper nesting, bytes after the
// array, enum values out of range), and allocate at most a small multiple of the frame's
// size: array headers are capped at kMaxShmRefs elements before anything is allocated.
//
// Tags equal the oneof field numbers in airlock.proto. Tags and field order are the
// protocol: never renumber or reorder; add a new tag instead of changing a layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "airlock/frame.h"
#include "airlock/status.h"

namespace airlock::proto {

constexpr size_t kMsgpackHeaderBytes = 4;

// Appends the length-prefixed encoding of f to out. ResourceExhausted if the encoded frame
// (without the 4-byte prefix) exceeds max_frame; InvalidArgument if validate(f) fails.
// On error out is left as it was.
Status encode_msgpack(const Frame& f, std::string& out, uint32_t max_frame = kDefaultMaxFrameBytes);

// Decodes one frame body: the N bytes after the length prefix. Same errors as
// MsgpackDecoder::next(). For transports that delimit frames themselves.
Result<Frame> decode_msgpack_body(const char* data, size_t len,
                                  uint32_t max_frame = kDefaultMaxFrameBytes);

// Incremental decoder for a byte stream: feed whatever arrived, take complete frames.
// Once a frame's length is known its whole size is reserved, so a large frame arriving in
// pieces is copied into the buffer once; with prepare()/commit() not even that.
class MsgpackDecoder {
 public:
  explicit MsgpackDecoder(uint32_t max_frame = kDefaultMaxFrameBytes);

  void feed(const char* data, size_t len);

  // Zero-copy alternative to feed(), for readers that read into memory they are given
  // (libuv's alloc callback): returns writable space of at least min_bytes, more when a
  // partly received frame needs more; read into it, then commit(bytes_read). The span is
  // valid until the next call to any other member.
  std::span<char> prepare(size_t min_bytes);
  void commit(size_t len);

  // Next complete frame; std::nullopt if more bytes are needed. Errors are sticky (the
  // stream has lost framing and is unusable afterwards; every later call returns the same
  // error): InvalidArgument for malformed frames, saying what was wrong; ResourceExhausted
  // when the announced length is above max_frame (checked before the body is buffered).
  std::optional<Result<Frame>> next();

  // Bytes received but not yet returned as frames.
  size_t buffered() const { return end_ - begin_; }

 private:
  size_t missing() const;           // bytes the partly received frame still needs, or 0
  void reserve_tail(size_t bytes);  // ensures cap_ - end_ >= bytes

  uint32_t max_frame_;
  // A plain array rather than std::string: prepare() must hand out space without zeroing.
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t begin_ = 0;  // first unread byte
  size_t end_ = 0;    // one past the last received byte
  std::optional<Error> error_;
};

}  // namespace airlock::proto
