// Fuzzes the msgpack decoders: the stream decoder MsgpackDecoder (what a msgpack channel
// runs on every byte a peer sends) and decode_msgpack_body.
//
// Input: byte 0 says how the rest is delivered, the rest is the byte stream itself
// (4-byte LE length + msgpack array, repeated), as a peer would write it:
//   bits 0-1  max_frame: 0-1 the default (64 MiB), 2 = 4096, 3 = 16 bytes
//   bit  2    feed() (0) or the zero-copy prepare()/commit() (1)
//   bits 3-7  chunking: 0 = one chunk; otherwise the seed of the chunk sizes (1..8 or
//             1..1024 bytes each), i.e. the split points of the stream.
// After each chunk, next() is drained until it needs more bytes or fails.
//
// Checked, beyond "no sanitizer report": every frame returned is valid(), re-encodes
// (encode_msgpack) no larger than it arrived, to the same msgpack values as the bytes
// it was decoded from (read by an independent little msgpack reader below: only the
// widths may change), decodes back equal, and re-encodes to the same bytes; the decoder consumes exactly the length-prefixed bytes of each frame, waits
// exactly when a frame is incomplete, and its errors are sticky and agree with
// decode_msgpack_body on the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "airlock/frame.h"
#include "airlock/msgpack_codec.h"
#include "airlock/status.h"
#include "fuzz_check.h"

namespace {

using namespace airlock;
using namespace airlock::proto;

uint32_t max_frame_for(uint8_t ctl) {
  switch (ctl & 3) {
    case 2: return 4096;
    case 3: return 16;
    default: return kDefaultMaxFrameBytes;
  }
}

uint32_t le32(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}

bool same_error(const Error& a, const Error& b) {
  return a.code == b.code && a.message == b.message && a.trap == b.trap;
}

// An independent reader of the msgpack subset a frame may use (ints, str, bin, arrays),
// to compare what arrived with what the encoder writes back by value, not by bytes.
struct Value {
  enum Kind : uint8_t { kUint, kNegInt, kStr, kBin, kArray } kind = kUint;
  uint64_t u = 0;  // kUint, or kNegInt as two's complement
  std::string bytes;
  std::vector<Value> items;
  bool operator==(const Value&) const = default;
};

class ValueReader {
 public:
  ValueReader(const char* p, size_t n) : p_(reinterpret_cast<const unsigned char*>(p)), n_(n) {}
  // The one value filling all the bytes, or nullopt.
  std::optional<Value> read_all() {
    std::optional<Value> v = read(0);
    if (!v || pos_ != n_) return std::nullopt;
    return v;
  }

 private:
  bool take(size_t k, uint64_t& out) {  // k-byte big-endian unsigned
    if (n_ - pos_ < k) return false;
    out = 0;
    for (size_t i = 0; i < k; ++i) out = out << 8 | p_[pos_++];
    return true;
  }
  std::optional<Value> blob(Value::Kind kind, uint64_t len) {
    if (n_ - pos_ < len) return std::nullopt;
    Value v;
    v.kind = kind;
    v.bytes.assign(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return v;
  }
  std::optional<Value> array(uint64_t count, int depth) {
    if (depth >= 3 || count > n_ - pos_) return std::nullopt;  // each item takes a byte
    Value v;
    v.kind = Value::kArray;
    for (uint64_t i = 0; i < count; ++i) {
      std::optional<Value> item = read(depth + 1);
      if (!item) return std::nullopt;
      v.items.push_back(std::move(*item));
    }
    return v;
  }
  static Value integer(int64_t x) {  // one value for each number, whatever its width
    Value v;
    v.kind = x < 0 ? Value::kNegInt : Value::kUint;
    v.u = static_cast<uint64_t>(x);
    return v;
  }
  std::optional<Value> read(int depth) {
    uint64_t t = 0, x = 0;
    if (!take(1, t)) return std::nullopt;
    if (t <= 0x7f) return integer(int64_t(t));
    if (t >= 0xe0) return integer(int64_t(int8_t(t)));
    if ((t & 0xf0) == 0x90) return array(t & 0x0f, depth);
    if ((t & 0xe0) == 0xa0) return blob(Value::kStr, t & 0x1f);
    switch (t) {
      case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        if (!take(size_t(1) << (t - 0xcc), x)) return std::nullopt;
        Value v;
        v.u = x;
        return v;
      }
      case 0xd0: return take(1, x) ? std::optional(integer(int8_t(x))) : std::nullopt;
      case 0xd1: return take(2, x) ? std::optional(integer(int16_t(x))) : std::nullopt;
      case 0xd2: return take(4, x) ? std::optional(integer(int32_t(x))) : std::nullopt;
      case 0xd3: return take(8, x) ? std::optional(integer(int64_t(x))) : std::nullopt;
      case 0xd9: case 0xda: case 0xdb:
        return take(size_t(1) << (t - 0xd9), x) ? blob(Value::kStr, x) : std::nullopt;
      case 0xc4: case 0xc5: case 0xc6:
        return take(size_t(1) << (t - 0xc4), x) ? blob(Value::kBin, x) : std::nullopt;
      case 0xdc: case 0xdd:
        return take(size_t(2) << (t - 0xdc), x) ? array(x, depth) : std::nullopt;
      default: return std::nullopt;  // nil, bool, float, map, ext: never in a frame
    }
  }

  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
};

// A frame decoded from body[0, body_len) is written back as the same values.
void check_same_values(const char* body, size_t body_len, const std::string& wire) {
  std::optional<Value> in = ValueReader(body, body_len).read_all();
  std::optional<Value> out =
      ValueReader(wire.data() + kMsgpackHeaderBytes, wire.size() - kMsgpackHeaderBytes).read_all();
  AIRLOCK_FUZZ_CHECK(in.has_value());  // the decoder accepted it: it is made of these types
  AIRLOCK_FUZZ_CHECK(out.has_value());
  AIRLOCK_FUZZ_CHECK(*in == *out);
}

// A frame decoded from body[0, body_len) survives encode -> decode unchanged.
void check_round_trip(const Frame& f, uint32_t max_frame, const char* body_in, size_t body_len) {
  AIRLOCK_FUZZ_CHECK(validate(f).ok());
  std::string wire;
  Status s = encode_msgpack(f, wire, max_frame);
  AIRLOCK_FUZZ_CHECK(s.ok());  // the encoder writes the smallest widths: never larger
  AIRLOCK_FUZZ_CHECK(wire.size() > kMsgpackHeaderBytes);
  AIRLOCK_FUZZ_CHECK(wire.size() - kMsgpackHeaderBytes <= body_len);
  AIRLOCK_FUZZ_CHECK(le32(wire.data()) == wire.size() - kMsgpackHeaderBytes);
  check_same_values(body_in, body_len, wire);

  Result<Frame> body = decode_msgpack_body(wire.data() + kMsgpackHeaderBytes,
                                           wire.size() - kMsgpackHeaderBytes, max_frame);
  AIRLOCK_FUZZ_CHECK(body.ok());
  AIRLOCK_FUZZ_CHECK(*body == f);

  MsgpackDecoder d(max_frame);
  d.feed(wire.data(), wire.size());
  std::optional<Result<Frame>> streamed = d.next();
  AIRLOCK_FUZZ_CHECK(streamed.has_value() && streamed->ok());
  AIRLOCK_FUZZ_CHECK(**streamed == f);
  AIRLOCK_FUZZ_CHECK(!d.next().has_value());
  AIRLOCK_FUZZ_CHECK(d.buffered() == 0);

  std::string again;
  AIRLOCK_FUZZ_CHECK(encode_msgpack(*body, again, max_frame).ok());
  AIRLOCK_FUZZ_CHECK(again == wire);
}

// Chunk sizes from a small xorshift generator seeded by the control byte.
class Chunker {
 public:
  explicit Chunker(uint8_t seed) : state_(seed ? 0x9e3779b9u * seed : 0) {}
  size_t next(size_t left) {
    if (state_ == 0) return left;
    state_ ^= state_ << 13;
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    const size_t span = (state_ & 0x100) ? 1024 : 8;
    return std::min(left, size_t(1) + (state_ >> 9) % span);
  }

 private:
  uint32_t state_;
};

void fuzz_stream(uint8_t ctl, const char* stream, size_t len) {
  const uint32_t max_frame = max_frame_for(ctl);
  const bool zero_copy = ctl & 4;
  Chunker chunker(ctl >> 3);
  MsgpackDecoder dec(max_frame);
  size_t fed = 0;       // bytes handed to the decoder
  size_t consumed = 0;  // bytes of the frames it returned
  std::optional<Error> failed;

  while (fed < len && !failed) {
    const size_t n = chunker.next(len - fed);
    if (zero_copy) {
      std::span<char> room = dec.prepare(n);
      AIRLOCK_FUZZ_CHECK(room.size() >= n);
      std::memcpy(room.data(), stream + fed, n);
      dec.commit(n);
    } else {
      dec.feed(stream + fed, n);
    }
    fed += n;
    AIRLOCK_FUZZ_CHECK(dec.buffered() == fed - consumed);

    for (;;) {
      const size_t unread = fed - consumed;
      const char* at = stream + consumed;
      std::optional<Result<Frame>> r = dec.next();
      if (!r) {  // waiting: the next frame really is incomplete
        AIRLOCK_FUZZ_CHECK(dec.buffered() == unread);
        if (unread >= kMsgpackHeaderBytes) {
          const uint32_t announced = le32(at);
          AIRLOCK_FUZZ_CHECK(announced <= max_frame);
          AIRLOCK_FUZZ_CHECK(kMsgpackHeaderBytes + size_t(announced) > unread);
        }
        break;
      }
      AIRLOCK_FUZZ_CHECK(unread >= kMsgpackHeaderBytes);
      const uint32_t announced = le32(at);
      if (!r->ok()) {
        const Error& e = r->error();
        if (announced > max_frame) {
          AIRLOCK_FUZZ_CHECK(e.code == Code::ResourceExhausted);
        } else {
          // A complete frame that does not decode: the same verdict as the body decoder.
          AIRLOCK_FUZZ_CHECK(e.code == Code::InvalidArgument);
          AIRLOCK_FUZZ_CHECK(kMsgpackHeaderBytes + size_t(announced) <= unread);
          Result<Frame> body = decode_msgpack_body(at + kMsgpackHeaderBytes, announced, max_frame);
          AIRLOCK_FUZZ_CHECK(!body.ok() && same_error(body.error(), e));
        }
        failed = e;
        break;
      }
      const size_t whole = kMsgpackHeaderBytes + size_t(announced);
      AIRLOCK_FUZZ_CHECK(announced <= max_frame && whole <= unread);
      AIRLOCK_FUZZ_CHECK(dec.buffered() == unread - whole);
      // However the stream was split, the frame equals the one decoded in one piece.
      Result<Frame> body = decode_msgpack_body(at + kMsgpackHeaderBytes, announced, max_frame);
      AIRLOCK_FUZZ_CHECK(body.ok() && *body == **r);
      consumed += whole;
      check_round_trip(**r, max_frame, at + kMsgpackHeaderBytes, announced);
    }
  }

  if (failed) {  // sticky: the stream lost its framing for good
    const size_t buffered = dec.buffered();
    std::optional<Result<Frame>> again = dec.next();
    AIRLOCK_FUZZ_CHECK(again && !again->ok() && same_error(again->error(), *failed));
    dec.feed("\x01\x00\x00\x00\x93", 5);
    AIRLOCK_FUZZ_CHECK(dec.buffered() == buffered);
    again = dec.next();
    AIRLOCK_FUZZ_CHECK(again && !again->ok() && same_error(again->error(), *failed));
  }
}

// decode_msgpack_body on its own, for transports that delimit frames themselves.
void fuzz_body(const char* data, size_t len, uint32_t max_frame) {
  Result<Frame> r = decode_msgpack_body(data, len, max_frame);
  if (r.ok()) {
    AIRLOCK_FUZZ_CHECK(len <= max_frame);
    check_round_trip(*r, max_frame, data, len);
  } else {
    AIRLOCK_FUZZ_CHECK(r.error().code == (len > max_frame ? Code::ResourceExhausted
                                                          : Code::InvalidArgument));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t ctl = data[0];
  const char* stream = reinterpret_cast<const char*>(data + 1);
  const size_t len = size - 1;
  fuzz_stream(ctl, stream, len);
  // The same bytes as bodies: the whole rest, and the rest minus a length prefix (a
  // single-frame stream), so valid seeds reach deep into the body decoder too.
  fuzz_body(stream, len, max_frame_for(ctl));
  if (len > kMsgpackHeaderBytes)
    fuzz_body(stream + kMsgpackHeaderBytes, len - kMsgpackHeaderBytes, max_frame_for(ctl));
  return 0;
}
