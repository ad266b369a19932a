// The channel implementations behind make_channel().
#pragma once

#include "airlock/channel.h"

namespace airlock::proto {
std::unique_ptr<Channel> make_msgpack_channel(uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued,
                                              uint32_t spin_us = 0, std::shared_ptr<RingLink> ring = nullptr);
std::unique_ptr<Channel> make_grpc_channel(Role role, uv_loop_t* loop, int fd, uint32_t max_frame, size_t max_queued);
}  // namespace airlock::proto
