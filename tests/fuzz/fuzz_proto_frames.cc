// Fuzzes the protobuf decoding path of the gRPC transport: the bytes of one
// airlock.v1.Frame message, parsed into the generated class, then what grpc_channel.cc
// does with every received message: check_frame_size, then from_proto (the moving
// overload).
//
// Input: the serialized message, exactly as gRPC hands it over.
//
// Checked, beyond "no sanitizer report": check_frame_size agrees with ByteSizeLong at the
// boundary; both from_proto overloads agree; a decoded frame is valid(), encodes again
// (encode_proto, both overloads, to the same bytes) and decodes back equal; and the
// msgpack transport carries the same frame unchanged (both encodings accept the same
// frames).
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "airlock.pb.h"
#include "airlock/frame.h"
#include "airlock/msgpack_codec.h"
#include "airlock/proto_codec.h"
#include "airlock/status.h"
#include "fuzz_check.h"

namespace {

using namespace airlock;
using namespace airlock::proto;

bool same_error(const Error& a, const Error& b) {
  return a.code == b.code && a.message == b.message && a.trap == b.trap;
}

void check_round_trip(const Frame& f) {
  AIRLOCK_FUZZ_CHECK(validate(f).ok());

  v1::Frame out;
  AIRLOCK_FUZZ_CHECK(encode_proto(f, &out).ok());
  std::string wire;
  AIRLOCK_FUZZ_CHECK(out.SerializeToString(&wire));

  Frame copy = f;
  v1::Frame moved_out;
  AIRLOCK_FUZZ_CHECK(encode_proto(std::move(copy), &moved_out).ok());
  AIRLOCK_FUZZ_CHECK(moved_out.SerializeAsString() == wire);

  v1::Frame back;
  AIRLOCK_FUZZ_CHECK(back.ParseFromString(wire));
  Result<Frame> again = from_proto(std::move(back));
  AIRLOCK_FUZZ_CHECK(again.ok());
  AIRLOCK_FUZZ_CHECK(*again == f);

  // The other encoding: what one transport accepts, the other carries unchanged.
  std::string mp;
  AIRLOCK_FUZZ_CHECK(encode_msgpack(f, mp).ok());
  Result<Frame> via_msgpack =
      decode_msgpack_body(mp.data() + kMsgpackHeaderBytes, mp.size() - kMsgpackHeaderBytes);
  AIRLOCK_FUZZ_CHECK(via_msgpack.ok());
  AIRLOCK_FUZZ_CHECK(*via_msgpack == f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::Frame msg;
  if (!msg.ParseFromArray(data, static_cast<int>(size))) return 0;

  // The exact size check, at its boundary.
  const size_t bytes = msg.ByteSizeLong();
  AIRLOCK_FUZZ_CHECK(check_frame_size(msg, static_cast<uint32_t>(bytes)).ok());
  if (bytes > 0) {
    Status small = check_frame_size(msg, static_cast<uint32_t>(bytes - 1));
    AIRLOCK_FUZZ_CHECK(!small.ok() && small.error().code == Code::ResourceExhausted);
  }

  // The receive path (grpc_channel.cc decode()).
  v1::Frame received = msg;
  AIRLOCK_FUZZ_CHECK(check_frame_size(received, kDefaultMaxFrameBytes).ok());  // inputs are small
  Result<Frame> moved = from_proto(std::move(received));
  Result<Frame> copied = from_proto(msg);
  AIRLOCK_FUZZ_CHECK(moved.ok() == copied.ok());
  if (!copied.ok()) {
    AIRLOCK_FUZZ_CHECK(copied.error().code == Code::InvalidArgument);
    AIRLOCK_FUZZ_CHECK(same_error(moved.error(), copied.error()));
    return 0;
  }
  AIRLOCK_FUZZ_CHECK(*moved == *copied);
  check_round_trip(*copied);
  return 0;
}
