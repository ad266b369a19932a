// The logical frames exchanged between host and extension, defined once.
// Both wire encodings (msgpack_codec.h, proto_codec.h) map exactly these structs, so
// everything above the transport works on Frame and never sees an encoding.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "airlock/status.h"

namespace airlock::proto {

// Largest encoded frame either encoding accepts by default (whole frame, not just payload).
constexpr uint32_t kDefaultMaxFrameBytes = 64u << 20;
// Most shm_refs one Request/Response may carry. Bounds what a decoder allocates for an
// announced array before its elements have arrived.
constexpr uint32_t kMaxShmRefs = 1024;
// Log levels use spdlog's numbering: 0 trace .. 5 critical, 6 off.
constexpr uint8_t kMaxLogLevel = 6;
// 2: Log carries the skill apart from the message (the host writes the prefix); Ready
//    reports the sandbox.
// 3: LoadSkill's compiled code travels in shared memory (a ref), not in the frame.
constexpr uint32_t kProtocolVersion = 3;

// A slice of a shared memory buffer that was passed earlier (by SCM_RIGHTS) and is
// referred to by id from then on.
struct ShmRef {
  uint64_t buffer_id = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const ShmRef&) const = default;
};

// A call, in either direction: host -> extension (target = skill) or extension -> host
// (target = host service). A call chain is nested Requests linked by parent_id.
struct Request {
  uint64_t id = 0;
  uint64_t parent_id = 0;   // 0 = top-level call
  uint64_t timeout_us = 0;  // remaining budget when sent; 0 = none
  std::string target;       // skill name, or service name for extension->host calls
  std::string method;       // function
  std::string payload;      // bytes
  std::vector<ShmRef> shm_refs;
  bool operator==(const Request&) const = default;
};

struct Response {
  uint64_t id = 0;  // the Request (or Health, LoadSkill, UnloadSkill) answered
  Code code = Code::Ok;
  TrapKind trap = TrapKind::None;  // only meaningful when code == Code::Trap
  std::string error;
  std::string payload;  // bytes
  std::vector<ShmRef> shm_refs;
  bool operator==(const Response&) const = default;
};

struct Cancel {
  uint64_t id = 0;
  bool operator==(const Cancel&) const = default;
};

// Answered by a Response with the same id.
struct LoadSkill {
  uint64_t id = 0;
  std::string name;
  std::string wasm;  // module bytes, or empty when path is set
  std::string path;
  uint32_t max_memory_pages = 0;  // 0 = extension default
  uint32_t timeout_ms = 0;        // 0 = extension default
  // The module's code from the host's compile cache (V8's serialization), in shared
  // memory: empty, or one ref to a sealed memfd announced on the side channel just
  // before (a 32 KB skill's code is ~105 KB, which a frame would copy four times on the
  // way and queue on the socket). The extension lets go of it once the load is done,
  // uses it instead of compiling when its engine accepts it, and its answer says which:
  // "cache: hit", "cache: rejected", or "cache: missing" (the buffer did not resolve).
  std::vector<ShmRef> compiled;
  bool operator==(const LoadSkill&) const = default;
};

struct UnloadSkill {
  uint64_t id = 0;
  std::string name;
  bool operator==(const UnloadSkill&) const = default;
};

// Sent once by the extension when it is serving.
struct Ready {
  uint32_t protocol_version = kProtocolVersion;
  int32_t pid = 0;
  std::string name;
  std::string sandbox;  // what the extension's sandbox applied and missed (for the host's report)
  bool operator==(const Ready&) const = default;
};

// Answered by a Response whose payload is a short status text.
struct Health {
  uint64_t id = 0;
  bool operator==(const Health&) const = default;
};

struct Shutdown {
  uint32_t grace_ms = 0;
  bool operator==(const Shutdown&) const = default;
};

// Extension -> host log line. The host escapes both strings and writes the prefix
// ("[ext NAME] [skill SKILL] "): an extension cannot forge another's lines.
struct Log {
  uint8_t level = 2;  // spdlog numbering, 0..kMaxLogLevel
  std::string message;
  std::string skill;  // empty: the extension's own line
  bool operator==(const Log&) const = default;
};

// The variant order is part of nothing on the wire: each encoding has its own explicit
// tags. Append new frame types at the end anyway.
using Frame =
    std::variant<Request, Response, Cancel, LoadSkill, UnloadSkill, Ready, Health, Shutdown, Log>;

std::string_view frame_name(const Frame& f);  // "Request", "Response", ...

// The Response answering request `id` with `r`, and back: one mapping for both sides.
Response make_response(uint64_t id, Result<std::string> r);
Result<std::string> result_of(Response&& r);  // payload or error; shm_refs are the caller's

// Bytes carried in the frame's string fields: a lower bound of its size in either
// encoding, cheap enough to refuse an oversized frame before encoding it.
uint64_t inline_bytes(const Frame& f);

// Checks what the C++ types cannot: enum ranges, log level, shm_refs count.
// InvalidArgument with the reason otherwise. Both encoders refuse invalid frames and
// both decoders only return valid ones, so a peer never sees a frame it would reject.
Status validate(const Frame& f);

}  // namespace airlock::proto
