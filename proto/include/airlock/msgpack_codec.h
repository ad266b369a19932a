// msgpack encoding of airlock::proto::Frame, for the socketpair transport.
//
// Wire layout of one frame:
//
//   +--------------------+----------------------------------------------+
//   | N: uint32 LE (4 B) | N bytes: exactly one msgpack array            |
//   +--------------------+----------------------------------------------+
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
//   6 Ready        [6, protocol_version, pid:int, name:str]
//   7 Health       [7, id]
//   8 Shutdown     [8, grace_ms]
//   9 Log          [9, level, message:str]
//
// Tags equal the oneof field numbers in airlock.proto. Tags and field order are the
// protocol: never renumber or reorder; add a new tag instead of changing a layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
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
Result<Frame> decode_msgpack_body(const char* data, size_t len, uint32_t max_frame = kDefaultMaxFrameBytes);

// Incremental decoder for a byte stream: feed whatever arrived, take complete frames.
// Costs one copy of the bytes into its buffer and one out into the frame's strings.
class MsgpackDecoder {
 public:
  explicit MsgpackDecoder(uint32_t max_frame = kDefaultMaxFrameBytes);

  void feed(const char* data, size_t len);

  // Next complete frame; std::nullopt if more bytes are needed. Errors are sticky (the
  // stream has lost framing and is unusable afterwards; every later call returns the same
  // error): InvalidArgument for malformed frames, saying what was wrong; ResourceExhausted
  // when the announced length is above max_frame (checked before anything is buffered).
  std::optional<Result<Frame>> next();

  // Bytes received but not yet returned as frames.
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  void compact();

  uint32_t max_frame_;
  std::string buf_;
  size_t pos_ = 0;  // start of the first unread byte in buf_
  std::optional<Error> error_;
};

}  // namespace airlock::proto
