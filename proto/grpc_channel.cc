// TEMPORARY placeholder until the gRPC channel lands.
#include "channel_internal.h"
namespace airlock::proto {
std::unique_ptr<Channel> make_grpc_channel(Role, uv_loop_t* loop, int fd, uint32_t max_frame) {
  return make_msgpack_channel(loop, fd, max_frame);
}
}  // namespace airlock::proto
