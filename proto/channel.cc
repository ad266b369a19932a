#include "airlock/channel.h"

#include "channel_internal.h"

namespace airlock::proto {

std::string_view to_string(Encoding e) { return e == Encoding::Grpc ? "grpc" : "msgpack"; }

Result<Encoding> parse_encoding(std::string_view s) {
  if (s == "msgpack") return Encoding::Msgpack;
  if (s == "grpc") return Encoding::Grpc;
  return make_error(Code::InvalidArgument, "unknown transport '" + std::string(s) + "' (msgpack or grpc)");
}

void send_response(Channel& channel, const Response& response) {
  Status st = channel.send(response);
  if (st.ok() || st.error().code == Code::Unavailable) return;  // closed: nobody to tell
  (void)channel.send(make_response(response.id, make_error(st.error().code, "answer not sent: " + st.error().message)));
}

std::unique_ptr<Channel> make_channel(Encoding enc, Role role, uv_loop_t* loop, int fd, uint32_t max_frame,
                                      size_t max_queued, uint32_t spin_us, std::shared_ptr<RingLink> ring) {
  if (enc == Encoding::Grpc) return make_grpc_channel(role, loop, fd, max_frame, max_queued);  // ring: msgpack only
  return make_msgpack_channel(loop, fd, max_frame, max_queued, spin_us, std::move(ring));
}

Error queue_full_error(size_t queued, size_t max_queued) {
  return make_error(Code::ResourceExhausted, std::to_string(queued) + " bytes already wait for the peer to read them (limit " +
                                                 std::to_string(max_queued) + "): it is not keeping up");
}

}  // namespace airlock::proto
