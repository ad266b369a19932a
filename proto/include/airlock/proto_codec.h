// protobuf form of airlock::proto::Frame (airlock.proto), for the gRPC transport.
#pragma once

#include <cstdint>

#include "airlock.pb.h"
#include "airlock/frame.h"
#include "airlock/status.h"

namespace airlock::proto {

// Fills msg (cleared first). Does not validate: use encode_proto on the sending path.
void to_proto(const Frame& f, airlock::v1::Frame* msg);
// Same, moving strings instead of copying them (payloads can be large).
void to_proto(Frame&& f, airlock::v1::Frame* msg);

// validate(f), then to_proto, then check_frame_size: what a gRPC sender should call, so
// it refuses what the peer would refuse instead of breaking the stream. If only the exact
// size check fails, the rvalue overload has already moved f's strings into msg.
Status encode_proto(Frame&& f, airlock::v1::Frame* msg, uint32_t max_frame = kDefaultMaxFrameBytes);
Status encode_proto(const Frame& f, airlock::v1::Frame* msg,
                    uint32_t max_frame = kDefaultMaxFrameBytes);

// ResourceExhausted (naming both sizes) if msg serializes to more than max_frame bytes.
// Exact; caches the size in msg so serializing afterwards does not compute it again.
Status check_frame_size(const airlock::v1::Frame& msg, uint32_t max_frame = kDefaultMaxFrameBytes);

// InvalidArgument if no frame is set, an enum is out of range, or validate() fails.
Result<Frame> from_proto(const airlock::v1::Frame& msg);
// Same, moving strings out of msg.
Result<Frame> from_proto(airlock::v1::Frame&& msg);

}  // namespace airlock::proto
