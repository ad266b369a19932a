// The logical frames and both wire encodings: round trips, stream decoding, size limits,
// and hostile input. Malformed msgpack is built by hand (class Mp) so these tests check
// the layout documented in msgpack_codec.h, not the encoder against itself.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "airlock/frame.h"
#include "airlock/msgpack_codec.h"
#include "airlock/proto_codec.h"

namespace airlock::proto {
namespace {

using namespace std::string_literals;

// Every frame type, with a non-default value in every field, binary data with zero bytes
// and text that is not UTF-8.
std::vector<Frame> sample_frames() {
  // clang-format off
  return {
      Request{0x0102030405060708ull, 42, 1'500'000, "echo", "run", "\0\x01\xff bin\0"s,
              {{1, 2, 3}, {UINT64_MAX, 4096, 1u << 20}}},
      Response{77, Code::Trap, TrapKind::MemoryOutOfBounds, "oob at 0x10\0!"s, "\0res\0"s,
               {{9, 8, 7}}},
      Cancel{UINT64_MAX},
      LoadSkill{5, "resize", "\0asm\x01\0\0\0"s, "/skills/resize.wasm", 256, 3000, {{12, 0, 107583}}},
      UnloadSkill{6, "resize"},
      Ready{3, -5, "ext-a", "applied: seccomp"},
      Health{99},
      Shutdown{2500},
      Log{5, "critical: \xff\xfe not utf-8", "a-skill"},
  };
  // clang-format on
}

Frame big_request(size_t bytes) {
  std::string payload(bytes, '\0');
  for (size_t k = 0; k < bytes; k += 4093) payload[k] = static_cast<char>(k * 7);
  return Request{1, 0, 0, "t", "m", std::move(payload), {}};
}

// A Response with enum values outside their range (the C++ types allow them).
Response bad_response(uint8_t code, uint8_t trap = 0) {
  Response r;
  r.code = static_cast<Code>(code);
  r.trap = static_cast<TrapKind>(trap);
  return r;
}

std::string encode(const Frame& f) {
  std::string out;
  Status s = encode_msgpack(f, out);
  EXPECT_TRUE(s.ok()) << s.error().to_string();
  return out;
}

// Feeds the whole stream in one go and returns the single result it yields.
Result<Frame> decode_one(const std::string& stream, uint32_t max_frame = kDefaultMaxFrameBytes) {
  MsgpackDecoder d(max_frame);
  d.feed(stream.data(), stream.size());
  std::optional<Result<Frame>> r = d.next();
  if (!r) return make_error(Code::Internal, "decoder wanted more bytes");
  return std::move(*r);
}

Result<Frame> proto_round_trip(const Frame& f) {
  v1::Frame msg;
  to_proto(f, &msg);
  std::string wire;
  EXPECT_TRUE(msg.SerializeToString(&wire));
  v1::Frame back;
  EXPECT_TRUE(back.ParseFromString(wire));
  return from_proto(back);
}

std::string le32(uint32_t n) {
  std::string s(4, '\0');
  for (int k = 0; k < 4; ++k) s[k] = static_cast<char>(n >> (8 * k));
  return s;
}

// Minimal hand-written msgpack writer.
struct Mp {
  std::string b;
  Mp& be(uint64_t v, int bytes) {
    for (int k = bytes - 1; k >= 0; --k) b += static_cast<char>(v >> (8 * k));
    return *this;
  }
  Mp& arr(uint32_t n) {
    if (n < 16) return raw(std::string(1, static_cast<char>(0x90 | n)));
    return raw("\xdd").be(n, 4);
  }
  Mp& u(uint64_t v) {
    if (v < 128) return raw(std::string(1, static_cast<char>(v)));
    return raw("\xcf").be(v, 8);
  }
  Mp& neg(int64_t v) { return raw("\xd3").be(static_cast<uint64_t>(v), 8); }
  Mp& str(std::string_view s) { return raw("\xdb").be(s.size(), 4).raw(s); }
  Mp& bin(std::string_view s) { return raw("\xc6").be(s.size(), 4).raw(s); }
  Mp& raw(std::string_view s) {
    b += s;
    return *this;
  }
  std::string frame() const { return le32(static_cast<uint32_t>(b.size())) + b; }
};

// ------------------------------------------------------------------ frames

TEST(Frame, NamesAndValidation) {
  const std::vector<std::string_view> names = {"Request",   "Response",    "Cancel",
                                               "LoadSkill", "UnloadSkill", "Ready",
                                               "Health",    "Shutdown",    "Log"};
  std::vector<Frame> frames = sample_frames();
  ASSERT_EQ(frames.size(), names.size());
  for (size_t k = 0; k < frames.size(); ++k) {
    EXPECT_EQ(frame_name(frames[k]), names[k]);
    EXPECT_TRUE(validate(frames[k]).ok()) << names[k];
  }
  EXPECT_EQ(validate(bad_response(11)).error().code, Code::InvalidArgument);
  EXPECT_EQ(validate(bad_response(3, 9)).error().code, Code::InvalidArgument);
  EXPECT_EQ(validate(Log{7, "x", ""}).error().code, Code::InvalidArgument);
  Request many;
  many.shm_refs.resize(kMaxShmRefs + 1);
  EXPECT_EQ(validate(many).error().code, Code::InvalidArgument);
}

// ------------------------------------------------------------------ msgpack

TEST(Msgpack, RoundTripEveryFrameType) {
  for (const Frame& f : sample_frames()) {
    Result<Frame> r = decode_one(encode(f));
    ASSERT_TRUE(r.ok()) << frame_name(f) << ": " << r.error().to_string();
    EXPECT_EQ(r.value(), f) << frame_name(f);
  }
  for (const Frame& f :
       std::vector<Frame>{Request{}, Response{}, Ready{}, Log{}}) {  // defaults too
    Result<Frame> r = decode_one(encode(f));
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r.value(), f);
  }
}

TEST(Msgpack, WireLayoutIsTheDocumentedOne) {
  EXPECT_EQ(encode(Cancel{7}), "\x03\0\0\0\x92\x03\x07"s);
  Result<Frame> r = decode_one(Mp{}.arr(5).u(6).u(1).neg(-5).str("ext-a").str("").frame());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r.value(), Frame(Ready{1, -5, "ext-a", ""}));
  r = decode_one(Mp{}.arr(8)
                     .u(1)
                     .u(1)
                     .u(2)
                     .u(3)
                     .str("t")
                     .str("m")
                     .bin("p")
                     .arr(1)
                     .arr(3)
                     .u(4)
                     .u(5)
                     .u(6)
                     .frame());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r.value(), Frame(Request{1, 2, 3, "t", "m", "p", {{4, 5, 6}}}));
}

TEST(Msgpack, LargePayload) {
  const Frame f = big_request(10u << 20);
  std::string wire = encode(f);
  Result<Frame> r = decode_one(wire);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r.value() == f);
}

TEST(Msgpack, BackToBackFrames) {
  std::string stream;
  for (const Frame& f : sample_frames()) ASSERT_TRUE(encode_msgpack(f, stream).ok());
  MsgpackDecoder d;
  d.feed(stream.data(), stream.size());
  for (const Frame& f : sample_frames()) {
    std::optional<Result<Frame>> r = d.next();
    ASSERT_TRUE(r && r->ok());
    EXPECT_EQ(r->value(), f);
  }
  EXPECT_FALSE(d.next());
  EXPECT_EQ(d.buffered(), 0u);
}

// Feeds stream in chunks of random size (1..max_chunk), alternating between feed() and
// prepare()/commit(), taking frames after each chunk.
std::vector<Frame> decode_chunked(const std::string& stream, size_t max_chunk, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> len(1, max_chunk);
  MsgpackDecoder d;
  std::vector<Frame> out;
  for (size_t at = 0; at < stream.size();) {
    size_t n = std::min(len(rng), stream.size() - at);
    if (rng() % 2) {
      d.feed(stream.data() + at, n);
    } else {
      std::span<char> space = d.prepare(n);
      EXPECT_GE(space.size(), n);
      n = std::min(space.size(), n);
      std::memcpy(space.data(), stream.data() + at, n);
      d.commit(n);
    }
    at += n;
    while (std::optional<Result<Frame>> r = d.next()) {
      EXPECT_TRUE(r->ok()) << r->error().to_string();
      if (!r->ok()) return out;
      out.push_back(std::move(r->value()));
    }
  }
  EXPECT_EQ(d.buffered(), 0u);
  return out;
}

TEST(Msgpack, ByteByByte) {
  std::string stream;
  for (const Frame& f : sample_frames()) ASSERT_TRUE(encode_msgpack(f, stream).ok());
  EXPECT_EQ(decode_chunked(stream, 1, 0), sample_frames());
}

TEST(Msgpack, RandomChunks) {
  std::vector<Frame> frames;
  for (int round = 0; round < 3; ++round) {
    for (const Frame& f : sample_frames()) frames.push_back(f);
    frames.push_back(big_request(3u << 20));
  }
  std::string stream;
  for (const Frame& f : frames) ASSERT_TRUE(encode_msgpack(f, stream).ok());
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    for (size_t max_chunk : {7u, 1000u, 70'000u, 5'000'000u}) {
      EXPECT_TRUE(decode_chunked(stream, max_chunk, seed) == frames)
          << "seed " << seed << " chunk " << max_chunk;
    }
  }
}

TEST(Msgpack, PrepareReservesTheWholeFrame) {
  const std::string wire = encode(big_request(1u << 20));
  MsgpackDecoder d;
  d.feed(wire.data(), 100);
  EXPECT_FALSE(d.next());
  std::span<char> space = d.prepare(1);  // room for the rest of the frame in one read
  ASSERT_GE(space.size(), wire.size() - 100);
  std::memcpy(space.data(), wire.data() + 100, wire.size() - 100);
  d.commit(wire.size() - 100);
  std::optional<Result<Frame>> r = d.next();
  ASSERT_TRUE(r && r->ok());
  EXPECT_TRUE(r->value() == big_request(1u << 20));
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(Msgpack, EncoderRefusesOversizedFrames) {
  std::string out = "keep";
  // Refused from the string sizes alone, before encoding.
  Status s = encode_msgpack(big_request(1000), out, 999);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::ResourceExhausted);
  EXPECT_NE(s.error().message.find("999"), std::string::npos) << s.error().message;
  // Refused after encoding: the strings fit, the framing overhead does not.
  s = encode_msgpack(big_request(1000), out, 1001);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::ResourceExhausted);
  EXPECT_NE(s.error().message.find("1001"), std::string::npos) << s.error().message;
  EXPECT_EQ(out, "keep");
  // Exactly at the limit is fine, on both sides.
  const uint32_t exact =
      static_cast<uint32_t>(encode(big_request(1000)).size() - kMsgpackHeaderBytes);
  ASSERT_TRUE(encode_msgpack(big_request(1000), out, exact).ok());
  EXPECT_TRUE(decode_one(out.substr(4), exact).ok());
}

TEST(Msgpack, EncoderRefusesInvalidFrames) {
  std::string out;
  Status s = encode_msgpack(bad_response(200), out);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::InvalidArgument);
  EXPECT_TRUE(out.empty());
}

TEST(Msgpack, DecoderRefusesAnnouncedLengthAboveMax) {
  MsgpackDecoder d(100);
  d.feed(le32(101).data(), 4);  // refused from the header alone, before any body arrives
  std::optional<Result<Frame>> r = d.next();
  ASSERT_TRUE(r && !r->ok());
  EXPECT_EQ(r->error().code, Code::ResourceExhausted);
  EXPECT_NE(r->error().message.find("101"), std::string::npos);
  EXPECT_NE(r->error().message.find("100"), std::string::npos);

  MsgpackDecoder big;
  big.feed("\xff\xff\xff\xff", 4);
  r = big.next();
  ASSERT_TRUE(r && !r->ok());
  EXPECT_EQ(r->error().code, Code::ResourceExhausted);
}

TEST(Msgpack, ErrorsAreSticky) {
  MsgpackDecoder d;
  const std::string bad = Mp{}.arr(2).u(99).u(1).frame();
  const std::string good = encode(Cancel{1});
  d.feed(bad.data(), bad.size());
  d.feed(good.data(), good.size());
  for (int k = 0; k < 3; ++k) {
    std::optional<Result<Frame>> r = d.next();
    ASSERT_TRUE(r && !r->ok());
    EXPECT_EQ(r->error().code, Code::InvalidArgument);
  }
}

struct BadCase {
  const char* name;
  std::string body;    // frame body, without the length prefix
  const char* expect;  // substring of the error message
};

TEST(Msgpack, MalformedInputIsAnError) {
  std::string nested;
  for (int k = 0; k < 10'000; ++k) nested += '\x91';
  nested += '\x01';
  // Frame prefixes up to (not including) the field under test.
  auto request = [] { return Mp{}.arr(8).u(1).u(1).u(2).u(3); };  // then target, ...
  auto response = [](uint64_t code, uint64_t trap) {              // then shm_refs
    return Mp{}.arr(7).u(2).u(1).u(code).u(trap).str("").bin("");
  };
  // clang-format off
  const std::vector<BadCase> cases = {
      {"empty frame", "", "empty frame"},
      {"not an array", Mp{}.u(1).b, "not an array"},
      {"map", Mp{}.raw("\x81").u(1).u(2).b, "map size overflow"},
      {"empty array", Mp{}.arr(0).b, "empty array"},
      {"tag is a string", Mp{}.arr(2).str("x").u(1).b, "frame tag is a str"},
      {"tag 0", Mp{}.arr(2).u(0).u(1).b, "unknown frame tag 0"},
      {"tag 10", Mp{}.arr(2).u(10).u(1).b, "unknown frame tag 10"},
      {"huge tag", Mp{}.arr(2).u(UINT64_MAX).u(1).b, "unknown frame tag"},
      {"too many fields", Mp{}.arr(3).u(3).u(1).u(2).b, "wants 2"},
      {"too few fields", Mp{}.arr(3).u(1).u(1).u(2).b, "wants 8"},
      {"id is a string", Mp{}.arr(2).u(3).str("1").b, "Cancel.id: expected unsigned int, got str"},
      {"negative id", Mp{}.arr(2).u(7).neg(-1).b, "Health.id"},
      {"float id", Mp{}.arr(2).u(7).raw("\xcb").be(0, 8).b, "got float"},
      {"nil field", Mp{}.arr(3).u(5).u(1).raw("\xc0").b, "UnloadSkill.name: expected str, got nil"},
      {"payload as str", request().str("t").str("m").str("p").arr(0).b, "payload: expected bin"},
      {"target as bin", request().bin("t").str("m").bin("p").arr(0).b, "target: expected str"},
      {"refs not an array", response(0, 0).u(5).b, "Response.shm_refs: expected array"},
      {"ref of 2", response(0, 0).arr(1).arr(2).u(1).u(2).b, "element 0"},
      {"ref field str", response(0, 0).arr(1).arr(3).u(1).str("x").u(2).b, "shm_refs.offset"},
      {"too many refs", response(0, 0).arr(kMaxShmRefs + 1).b, "array size overflow"},
      {"code out of range", response(11, 0).arr(0).b, "code out of range"},
      {"code > 255", response(256, 0).arr(0).b, "Response.code"},
      {"trap out of range", response(3, 9).arr(0).b, "trap out of range"},
      {"log level", Mp{}.arr(4).u(9).u(7).str("m").str("s").b, "level out of range"},
      {"uint32 overflow", Mp{}.arr(2).u(8).u(1ull << 32).b, "grace_ms: value 4294967296 out of"},
      {"pid overflow", Mp{}.arr(5).u(6).u(1).u(1ull << 31).str("n").str("").b, "Ready.pid"},
      {"pid underflow", Mp{}.arr(5).u(6).u(1).neg(-(1ll << 31) - 1).str("n").str("").b, "Ready.pid"},
      {"trailing garbage", Mp{}.arr(2).u(3).u(1).raw("\xc0").b, "1 trailing bytes"},
      {"truncated str", Mp{}.arr(3).u(5).u(1).raw("\xdb").be(10, 4).raw("ab").b, "insufficient"},
      {"truncated array", Mp{}.arr(8).u(1).u(1).b, "insufficient bytes"},
      {"never-used byte 0xc1", "\xc1", "parse error"},
      {"ext", Mp{}.arr(2).u(3).raw("\xd4\x01\x02").b, "ext size overflow"},
      {"deep nesting", nested, "depth size overflow"},
      {"huge array header", Mp{}.raw("\xdd\xff\xff\xff\xff").b, "array size overflow"},
      {"huge str header", Mp{}.arr(3).u(5).u(1).raw("\xdb\xff\xff\xff\xff").b, "insufficient"},
      {"huge bin header", Mp{}.arr(4).u(4).u(1).str("n").raw("\xc6\xff\xff\xff\xff").b,
       "insufficient bytes"},
  };
  // clang-format on
  for (const BadCase& c : cases) {
    Result<Frame> r = decode_one(le32(static_cast<uint32_t>(c.body.size())) + c.body);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.error().code, Code::InvalidArgument) << c.name << ": " << r.error().to_string();
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos)
        << c.name << ": " << r.error().message;
  }
}

TEST(Msgpack, TruncatedFramesWaitForMoreBytes) {
  const std::string wire = encode(sample_frames()[0]);
  for (size_t cut = 0; cut < wire.size(); ++cut) {
    MsgpackDecoder d;
    d.feed(wire.data(), cut);
    EXPECT_FALSE(d.next()) << cut;
  }
}

TEST(Msgpack, TruncatedBodyWithShortenedPrefixIsAnError) {
  const std::string wire = encode(sample_frames()[0]);
  for (size_t keep = 1; keep < wire.size() - 4; ++keep) {
    Result<Frame> r = decode_one(le32(static_cast<uint32_t>(keep)) + wire.substr(4, keep));
    EXPECT_FALSE(r.ok()) << keep;
  }
}

// Random bytes and random mutations of valid frames must decode to an error or to a valid
// frame, never crash (run under ASan/UBSan to mean something).
TEST(Msgpack, FuzzDoesNotCrash) {
  std::mt19937 rng(1234);
  auto byte = [&] { return static_cast<char>(rng() & 0xff); };
  for (int k = 0; k < 20'000; ++k) {
    std::string body(rng() % 64, '\0');
    for (char& c : body) c = byte();
    Result<Frame> r = decode_one(le32(static_cast<uint32_t>(body.size())) + body);
    if (r.ok()) {
      EXPECT_TRUE(validate(r.value()).ok());
    }
  }
  std::vector<std::string> valid;
  for (const Frame& f : sample_frames()) valid.push_back(encode(f));
  for (int k = 0; k < 50'000; ++k) {
    std::string wire = valid[rng() % valid.size()];
    for (int flips = 1 + rng() % 3; flips > 0; --flips)
      wire[4 + rng() % (wire.size() - 4)] = byte();
    Result<Frame> r = decode_one(wire);
    if (r.ok()) {
      EXPECT_TRUE(validate(r.value()).ok());
    }
  }
  MsgpackDecoder stream;  // one long random stream: must end in an error, not hang or crash
  for (int k = 0; k < 1000; ++k) {
    std::string chunk(rng() % 100, '\0');
    for (char& c : chunk) c = byte();
    stream.feed(chunk.data(), chunk.size());
    while (std::optional<Result<Frame>> r = stream.next()) {
      if (!r->ok()) break;
    }
  }
}

// ------------------------------------------------------------------ protobuf

TEST(Proto, RoundTripEveryFrameType) {
  for (const Frame& f : sample_frames()) {
    Result<Frame> r = proto_round_trip(f);
    ASSERT_TRUE(r.ok()) << frame_name(f) << ": " << r.error().to_string();
    EXPECT_EQ(r.value(), f) << frame_name(f);
  }
}

TEST(Proto, MovingOverloadsRoundTrip) {
  for (const Frame& f : sample_frames()) {
    Frame copy = f;
    v1::Frame msg;
    ASSERT_TRUE(encode_proto(std::move(copy), &msg).ok());
    Result<Frame> r = from_proto(std::move(msg));
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r.value(), f);
  }
}

TEST(Proto, LargePayload) {
  const Frame f = big_request(10u << 20);
  Result<Frame> r = proto_round_trip(f);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r.value() == f);
}

TEST(Proto, EmptyFrameIsAnError) {
  Result<Frame> r = from_proto(v1::Frame{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::InvalidArgument);
}

TEST(Proto, OutOfRangeValuesAreErrors) {
  v1::Frame msg;
  msg.mutable_response()->set_code(static_cast<v1::Code>(11));
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
  msg.mutable_response()->set_code(static_cast<v1::Code>(-1));
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
  msg.mutable_response()->set_code(v1::CODE_TRAP);
  msg.mutable_response()->set_trap(static_cast<v1::TrapKind>(9));
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
  msg.mutable_log()->set_level(7);
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
  msg.mutable_log()->set_level(256);  // would wrap to 0 if narrowed unchecked
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
  for (uint32_t k = 0; k <= kMaxShmRefs; ++k) msg.mutable_request()->add_shm_refs();
  EXPECT_EQ(from_proto(msg).error().code, Code::InvalidArgument);
}

TEST(Proto, GarbageBytesDoNotCrash) {
  std::mt19937 rng(99);
  for (int k = 0; k < 20'000; ++k) {
    std::string wire(rng() % 64, '\0');
    for (char& c : wire) c = static_cast<char>(rng() & 0xff);
    v1::Frame msg;
    if (!msg.ParseFromString(wire)) continue;
    Result<Frame> r = from_proto(msg);
    if (r.ok()) {
      EXPECT_TRUE(validate(r.value()).ok());
    }
  }
}

TEST(Proto, SizeLimit) {
  v1::Frame msg;
  to_proto(big_request(1000), &msg);
  const size_t size = msg.ByteSizeLong();
  EXPECT_TRUE(check_frame_size(msg, static_cast<uint32_t>(size)).ok());
  Status s = check_frame_size(msg, static_cast<uint32_t>(size - 1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::ResourceExhausted);
  EXPECT_NE(s.error().message.find(std::to_string(size)), std::string::npos) << s.error().message;

  s = encode_proto(big_request(1000), &msg, 999);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::ResourceExhausted);
  s = encode_proto(bad_response(99), &msg);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Code::InvalidArgument);
}

TEST(BothEncodings, AgreeOnEveryFrame) {
  for (const Frame& f : sample_frames()) {
    Result<Frame> a = decode_one(encode(f));
    Result<Frame> b = proto_round_trip(f);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a.value(), b.value());
  }
}

}  // namespace
}  // namespace airlock::proto
