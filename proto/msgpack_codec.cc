// The layout is documented in msgpack_codec.h; keep the two in step.
#include "airlock/msgpack_codec.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <iterator>
#include <limits>
#include <msgpack.hpp>
#include <string>
#include <type_traits>
#include <utility>

namespace airlock::proto {
namespace {

enum Tag : uint8_t {
  kTagRequest = 1,
  kTagResponse = 2,
  kTagCancel = 3,
  kTagLoadSkill = 4,
  kTagUnloadSkill = 5,
  kTagReady = 6,
  kTagHealth = 7,
  kTagShutdown = 8,
  kTagLog = 9,
};

// A decoder keeps at most this much buffer once large frames stop (see next()).
constexpr size_t kRetainBufferBytes = 1u << 20;

Error too_large(uint64_t size, uint32_t max_frame, std::string_view what) {
  return make_error(Code::ResourceExhausted, std::string(what) + " " + std::to_string(size) +
                                                 " bytes exceeds max frame size " +
                                                 std::to_string(max_frame) + " bytes");
}

Error malformed(std::string what) {
  return make_error(Code::InvalidArgument, "malformed msgpack frame: " + std::move(what));
}

// ---------------------------------------------------------------- encoding

// msgpack's packer writes to any type with write(const char*, size_t).
struct StringSink {
  std::string& out;
  void write(const char* data, size_t len) { out.append(data, len); }
};

class Writer {
 public:
  explicit Writer(std::string& out) : sink_{out}, pk_(sink_) {}

  void begin(Tag tag, uint32_t fields) {
    pk_.pack_array(fields + 1);
    pk_.pack_uint8(tag);
  }
  void u(uint64_t v) { pk_.pack_uint64(v); }  // packs the smallest width that fits
  void i(int32_t v) { pk_.pack_int32(v); }
  // Sizes fit in uint32: encode_msgpack refused frames whose inline_bytes exceed max_frame.
  void str(const std::string& s) {
    pk_.pack_str(static_cast<uint32_t>(s.size()));
    pk_.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
  }
  void bin(const std::string& s) {
    pk_.pack_bin(static_cast<uint32_t>(s.size()));
    pk_.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
  }
  void refs(const std::vector<ShmRef>& refs) {
    pk_.pack_array(static_cast<uint32_t>(refs.size()));
    for (const ShmRef& r : refs) {
      pk_.pack_array(3);
      u(r.buffer_id);
      u(r.offset);
      u(r.length);
    }
  }

  void operator()(const Request& r) {
    begin(kTagRequest, 7);
    u(r.id);
    u(r.parent_id);
    u(r.timeout_us);
    str(r.target);
    str(r.method);
    bin(r.payload);
    refs(r.shm_refs);
  }
  void operator()(const Response& r) {
    begin(kTagResponse, 6);
    u(r.id);
    u(static_cast<uint8_t>(r.code));
    u(static_cast<uint8_t>(r.trap));
    str(r.error);
    bin(r.payload);
    refs(r.shm_refs);
  }
  void operator()(const Cancel& c) {
    begin(kTagCancel, 1);
    u(c.id);
  }
  void operator()(const LoadSkill& l) {
    begin(kTagLoadSkill, 7);
    u(l.id);
    str(l.name);
    bin(l.wasm);
    str(l.path);
    u(l.max_memory_pages);
    u(l.timeout_ms);
    refs(l.compiled);
  }
  void operator()(const UnloadSkill& x) {
    begin(kTagUnloadSkill, 2);
    u(x.id);
    str(x.name);
  }
  void operator()(const Ready& r) {
    begin(kTagReady, 4);
    u(r.protocol_version);
    i(r.pid);
    str(r.name);
    str(r.sandbox);
  }
  void operator()(const Health& h) {
    begin(kTagHealth, 1);
    u(h.id);
  }
  void operator()(const Shutdown& s) {
    begin(kTagShutdown, 1);
    u(s.grace_ms);
  }
  void operator()(const Log& l) {
    begin(kTagLog, 3);
    u(l.level);
    str(l.message);
    str(l.skill);
  }

 private:
  StringSink sink_;
  msgpack::packer<StringSink> pk_;
};

// ---------------------------------------------------------------- decoding

std::string_view type_name(msgpack::type::object_type t) {
  switch (t) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return "bool";
    case msgpack::type::POSITIVE_INTEGER: return "unsigned int";
    case msgpack::type::NEGATIVE_INTEGER: return "negative int";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return "float";
    case msgpack::type::STR: return "str";
    case msgpack::type::BIN: return "bin";
    case msgpack::type::ARRAY: return "array";
    case msgpack::type::MAP: return "map";
    case msgpack::type::EXT: return "ext";
  }
  return "unknown";
}

// Reads the fields of one frame array in order. The first problem is remembered and
// reported by finish(), so decoders read straight through without checking each field.
class Fields {
 public:
  // first: index of the first field; 1 in a frame array, whose element 0 is the tag.
  Fields(const msgpack::object_array& a, std::string_view frame, uint32_t first = 1)
      : a_(a), frame_(frame), next_(first) {}

  template <class UInt>
  void u(UInt& v, const char* name) {
    const msgpack::object* o = take(name, msgpack::type::POSITIVE_INTEGER);
    if (!o) return;
    if (o->via.u64 > std::numeric_limits<UInt>::max()) {
      return fail(name, "value " + std::to_string(o->via.u64) + " out of range");
    }
    v = static_cast<UInt>(o->via.u64);
  }
  template <class Enum>
  void e(Enum& v, const char* name) {  // range is checked by validate()
    std::underlying_type_t<Enum> raw = 0;
    u(raw, name);
    v = static_cast<Enum>(raw);
  }
  void i(int32_t& v, const char* name) {
    const msgpack::object* o = at(name);
    if (!o) return;
    if (o->type == msgpack::type::POSITIVE_INTEGER &&
        o->via.u64 <= uint64_t(std::numeric_limits<int32_t>::max())) {
      v = static_cast<int32_t>(o->via.u64);
    } else if (o->type == msgpack::type::NEGATIVE_INTEGER &&
               o->via.i64 >= std::numeric_limits<int32_t>::min()) {
      v = static_cast<int32_t>(o->via.i64);
    } else {
      fail(name, "expected int32, got " + std::string(type_name(o->type)));
    }
  }
  void str(std::string& v, const char* name) {
    if (const msgpack::object* o = take(name, msgpack::type::STR))
      v.assign(o->via.str.ptr, o->via.str.size);
  }
  void bin(std::string& v, const char* name) {
    if (const msgpack::object* o = take(name, msgpack::type::BIN))
      v.assign(o->via.bin.ptr, o->via.bin.size);
  }
  void refs(std::vector<ShmRef>& v, const char* name = "shm_refs") {
    const msgpack::object* o = take(name, msgpack::type::ARRAY);
    if (!o) return;
    v.reserve(o->via.array.size);  // bounded by the unpack limit (kMaxShmRefs)
    for (uint32_t k = 0; k < o->via.array.size && !err_; ++k) {
      const msgpack::object& ref = o->via.array.ptr[k];
      if (ref.type != msgpack::type::ARRAY || ref.via.array.size != 3) {
        return fail(name,
                    "element " + std::to_string(k) + " is not a [buffer_id, offset, length] array");
      }
      Fields triple(ref.via.array, frame_, 0);
      ShmRef r;
      triple.u(r.buffer_id, "shm_refs.buffer_id");
      triple.u(r.offset, "shm_refs.offset");
      triple.u(r.length, "shm_refs.length");
      if (triple.err_) err_ = std::move(triple.err_);
      v.push_back(r);
    }
  }

  Result<Frame> finish(Frame f) {
    if (err_) return malformed(std::move(*err_));
    if (Status s = validate(f); !s.ok()) return malformed(s.error().message);
    return f;
  }

 private:
  const msgpack::object* at(const char* name) {
    if (err_) return nullptr;
    if (next_ >= a_.size) {  // unreachable when the caller checked the array length
      fail(name, "missing");
      return nullptr;
    }
    return &a_.ptr[next_++];
  }
  const msgpack::object* take(const char* name, msgpack::type::object_type want) {
    const msgpack::object* o = at(name);
    if (o && o->type != want) {
      fail(name,
           "expected " + std::string(type_name(want)) + ", got " + std::string(type_name(o->type)));
      return nullptr;
    }
    return o;
  }
  void fail(const char* name, std::string what) {
    if (!err_) err_ = std::string(frame_) + "." + name + ": " + std::move(what);
  }

  const msgpack::object_array& a_;
  std::string_view frame_;
  uint32_t next_;
  std::optional<std::string> err_;
};

Result<Frame> from_object(const msgpack::object& o) {
  if (o.type != msgpack::type::ARRAY) {
    return malformed("frame is a " + std::string(type_name(o.type)) + ", not an array");
  }
  if (o.via.array.size == 0) return malformed("frame is an empty array");
  const msgpack::object_array& a = o.via.array;
  if (a.ptr[0].type != msgpack::type::POSITIVE_INTEGER) {
    return malformed("frame tag is a " + std::string(type_name(a.ptr[0].type)));
  }
  const uint64_t tag = a.ptr[0].via.u64;
  // Field count per tag (without the tag itself); index 0 unused.
  static constexpr uint32_t kFields[] = {0, 7, 6, 1, 7, 2, 4, 1, 1, 3};
  if (tag == 0 || tag >= std::size(kFields))
    return malformed("unknown frame tag " + std::to_string(tag));
  if (a.size != kFields[tag] + 1) {
    return malformed("frame tag " + std::to_string(tag) + " wants " +
                     std::to_string(kFields[tag] + 1) + " array elements, got " +
                     std::to_string(a.size));
  }

  switch (static_cast<Tag>(tag)) {
    case kTagRequest: {
      Request r;
      Fields f(a, "Request");
      f.u(r.id, "id");
      f.u(r.parent_id, "parent_id");
      f.u(r.timeout_us, "timeout_us");
      f.str(r.target, "target");
      f.str(r.method, "method");
      f.bin(r.payload, "payload");
      f.refs(r.shm_refs);
      return f.finish(std::move(r));
    }
    case kTagResponse: {
      Response r;
      Fields f(a, "Response");
      f.u(r.id, "id");
      f.e(r.code, "code");
      f.e(r.trap, "trap");
      f.str(r.error, "error");
      f.bin(r.payload, "payload");
      f.refs(r.shm_refs);
      return f.finish(std::move(r));
    }
    case kTagCancel: {
      Cancel c;
      Fields f(a, "Cancel");
      f.u(c.id, "id");
      return f.finish(c);
    }
    case kTagLoadSkill: {
      LoadSkill l;
      Fields f(a, "LoadSkill");
      f.u(l.id, "id");
      f.str(l.name, "name");
      f.bin(l.wasm, "wasm");
      f.str(l.path, "path");
      f.u(l.max_memory_pages, "max_memory_pages");
      f.u(l.timeout_ms, "timeout_ms");
      f.refs(l.compiled, "compiled");
      return f.finish(std::move(l));
    }
    case kTagUnloadSkill: {
      UnloadSkill x;
      Fields f(a, "UnloadSkill");
      f.u(x.id, "id");
      f.str(x.name, "name");
      return f.finish(std::move(x));
    }
    case kTagReady: {
      Ready r;
      Fields f(a, "Ready");
      f.u(r.protocol_version, "protocol_version");
      f.i(r.pid, "pid");
      f.str(r.name, "name");
      f.str(r.sandbox, "sandbox");
      return f.finish(std::move(r));
    }
    case kTagHealth: {
      Health h;
      Fields f(a, "Health");
      f.u(h.id, "id");
      return f.finish(h);
    }
    case kTagShutdown: {
      Shutdown s;
      Fields f(a, "Shutdown");
      f.u(s.grace_ms, "grace_ms");
      return f.finish(s);
    }
    case kTagLog: {
      Log l;
      Fields f(a, "Log");
      f.u(l.level, "level");
      f.str(l.message, "message");
      f.str(l.skill, "skill");
      return f.finish(std::move(l));
    }
  }
  return malformed("unknown frame tag " + std::to_string(tag));  // unreachable
}

uint32_t read_le32(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}

void write_le32(char* p, uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<char>((v >> (8 * k)) & 0xff);
}

}  // namespace

Status encode_msgpack(const Frame& f, std::string& out, uint32_t max_frame) {
  if (Status s = validate(f); !s.ok()) return s;
  // Refuse before copying anything; also guarantees every string fits msgpack's 32-bit lengths.
  const uint64_t at_least = inline_bytes(f);
  if (at_least > max_frame) return too_large(at_least, max_frame, "frame of at least");

  const size_t start = out.size();
  out.reserve(start + kMsgpackHeaderBytes + at_least + 64);
  out.append(kMsgpackHeaderBytes, '\0');  // length, patched below
  Writer w(out);
  std::visit(w, f);
  const size_t body = out.size() - start - kMsgpackHeaderBytes;
  if (body > max_frame) {
    out.resize(start);
    return too_large(body, max_frame, "encoded frame of");
  }
  write_le32(out.data() + start, static_cast<uint32_t>(body));
  return ok_status();
}

Result<Frame> decode_msgpack_body(const char* data, size_t len, uint32_t max_frame) {
  if (len > max_frame) return too_large(len, max_frame, "frame of");
  if (len == 0) return malformed("empty frame");
  // Limits keep hostile input from making msgpack allocate: arrays are allocated when their
  // header is read, so cap them; the deepest valid nesting is frame > shm_refs > ref.
  const msgpack::unpack_limit limit(/*array=*/kMaxShmRefs, /*map=*/0, /*str=*/len, /*bin=*/len,
                                    /*ext=*/0, /*depth=*/3);
  // Let str/bin objects point into data instead of being copied into the zone: the only
  // copy is the one into the frame's std::string.
  auto refer = [](msgpack::type::object_type, size_t, void*) { return true; };
  // One zone per thread, emptied after each frame: saves two mallocs and an 8 KiB chunk
  // per frame, a large share of a small frame's decode time.
  thread_local msgpack::zone zone;
  struct ClearZone {
    ~ClearZone() { zone.clear(); }
  } clear_after;
  size_t off = 0;
  msgpack::object obj;
  try {
    obj = msgpack::unpack(zone, data, len, off, refer, nullptr, limit);
  } catch (const std::exception& e) {  // parse_error, insufficient_bytes, *_size_overflow, ...
    return malformed(e.what());
  }
  if (off != len)
    return malformed(std::to_string(len - off) + " trailing bytes after the frame array");
  return from_object(obj);
}

MsgpackDecoder::MsgpackDecoder(uint32_t max_frame) : max_frame_(max_frame) {}

void MsgpackDecoder::feed(const char* data, size_t len) {
  if (error_ || len == 0) return;  // a dead stream buffers nothing more
  reserve_tail(std::max(len, missing()));
  std::memcpy(buf_.get() + end_, data, len);
  end_ += len;
}

std::span<char> MsgpackDecoder::prepare(size_t min_bytes) {
  reserve_tail(std::max({min_bytes, missing(), size_t(1)}));
  return {buf_.get() + end_, cap_ - end_};
}

void MsgpackDecoder::commit(size_t len) {
  if (error_) return;
  end_ += std::min(len, cap_ - end_);
}

size_t MsgpackDecoder::missing() const {
  const size_t unread = end_ - begin_;
  if (unread < kMsgpackHeaderBytes) return 0;
  const uint32_t n = read_le32(buf_.get() + begin_);
  if (n > max_frame_) return 0;  // next() will refuse it; don't reserve for it
  const size_t whole = kMsgpackHeaderBytes + size_t(n);
  return whole > unread ? whole - unread : 0;
}

void MsgpackDecoder::reserve_tail(size_t bytes) {
  if (cap_ - end_ >= bytes) return;
  const size_t unread = end_ - begin_;
  if (cap_ - unread >= bytes && unread <= begin_) {
    // Slide the unread bytes to the front. Only when they are no more than the consumed
    // prefix they replace, so each byte moves O(1) times on average however the stream
    // is chunked; otherwise growing (by at least 2x) is the amortized-linear choice.
    std::memmove(buf_.get(), buf_.get() + begin_, unread);
  } else {
    const size_t cap = std::max(unread + bytes, 2 * cap_);
    auto bigger = std::make_unique_for_overwrite<char[]>(cap);  // untouched pages cost nothing
    if (unread > 0) std::memcpy(bigger.get(), buf_.get() + begin_, unread);
    buf_ = std::move(bigger);
    cap_ = cap;
  }
  begin_ = 0;
  end_ = unread;
}

std::optional<Result<Frame>> MsgpackDecoder::next() {
  if (error_) return Result<Frame>(*error_);
  const size_t unread = end_ - begin_;
  if (unread < kMsgpackHeaderBytes) return std::nullopt;
  const uint32_t n = read_le32(buf_.get() + begin_);
  if (n > max_frame_) {
    error_ = too_large(n, max_frame_, "announced frame of");
    return Result<Frame>(*error_);
  }
  const size_t whole = kMsgpackHeaderBytes + size_t(n);
  if (unread < whole) return std::nullopt;

  Result<Frame> r = decode_msgpack_body(buf_.get() + begin_ + kMsgpackHeaderBytes, n, max_frame_);
  begin_ += whole;
  if (!r.ok()) error_ = r.error();
  if (begin_ == end_) {
    begin_ = end_ = 0;
    // Keep a large buffer while large frames keep coming (faulting in fresh pages ran at
    // ~1.6 GB/s here); give it back once a small frame shows they stopped.
    if (cap_ > kRetainBufferBytes && whole <= kRetainBufferBytes) {
      buf_.reset();
      cap_ = 0;
    }
  }
  return r;
}

}  // namespace airlock::proto
