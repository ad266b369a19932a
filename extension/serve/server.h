// The extension's serving loop: one libuv loop that owns the channel to the host and
// the skill runtime. Requests from the host become skill calls; skills' host-service
// calls become requests to the host; skill logs become Log frames.
#pragma once

#include <cstdint>
#include <string>

#include "airlock/channel.h"
#include "sandbox/sandbox.h"

namespace airlock::serve {

struct ServeOptions {
  int fd = 3;                       // the inherited socket
  int side_fd = -1;                 // shared-memory side channel (SOCK_SEQPACKET), -1: none
  std::string name = "extension";   // for logs
  proto::Encoding encoding = proto::Encoding::Msgpack;
  int parent_pid = 0;               // exit at once if our parent is not this process
  uint32_t max_frame_bytes = proto::kDefaultMaxFrameBytes;
  uint32_t default_max_memory_mb = 64;
  uint32_t default_timeout_ms = 10'000;
  uint32_t shm_output_min_bytes = 64 * 1024;  // larger outputs go back in shared memory
  uint32_t max_total_memory_mb = 2048;  // linear memory of all instances together (RuntimeLimits)
  uint32_t spin_us = 0;                 // proto::make_channel: poll this long after a frame before sleeping
  uint32_t ring_bytes = 0;              // >0: frames travel in the ring pair the host offers first on side_fd
  sandbox::Policy sandbox;
  bool lazy_compilation = false;  // engine::EngineConfig
  bool tier_up = true;
  std::string guard_regions = "auto";  // auto, on, off (airlock::GuardRegions)
  bool cacheable_code = false;         // engine::EngineConfig (the host keeps a compile cache)
};


// Serves until the host says Shutdown or goes away. Returns the process exit code.
int serve(const ServeOptions& options);

}  // namespace airlock::serve
