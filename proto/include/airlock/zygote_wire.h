// The zygote's messages, one per SOCK_SEQPACKET datagram (so the kernel keeps the
// boundaries). The host reads a zygote's messages as untrusted input: every parse
// checks magic, version, exact length and field ranges, and the host acts on nothing
// else (least of all a pid number: the child comes back as a pidfd, and the host
// proves it is its own child before using it; see host/src/process.h).
//
//   hello    zygote -> host, once at start   "ALZYGOTE" u32 version  u32 0                      (16 B)
//   request  host -> zygote                  "ALZYGOTE" u32 version  u32 0  u64 seq  argv  env  (>= 26 B)
//            argv, env: NUL-terminated strings, each list ended by an empty string;
//            SCM_RIGHTS: the child's channel socket (its fd 3) and side channel (fd 4)
//   reply    zygote -> host                  "ALZYGOTE" u32 version  u32 0  u64 seq  i32 status  u32 0 (32 B)
//            status 0: SCM_RIGHTS carries exactly one fd, the child's pidfd
//            (clone CLONE_PARENT | CLONE_PIDFD); otherwise -errno and no fd.
//   go       host -> child, on the child's channel: one byte 'G', once the host has
//            proven the pidfd names its own child holding that channel at fd 3. The
//            child reads it before anything else (so fd 3 is still in place for the proof).
// Integers are little endian.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/status.h"

namespace airlock::proto::zygote {

constexpr uint32_t kVersion = 1;
constexpr size_t kHelloBytes = 16;
constexpr size_t kReplyBytes = 32;
constexpr size_t kMaxRequestBytes = 64 * 1024;  // argv + environment of one extension

struct Request {
  uint64_t seq = 0;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  bool operator==(const Request&) const = default;
};

struct Reply {
  uint64_t seq = 0;
  int32_t status = 0;  // 0 or -errno
  bool operator==(const Reply&) const = default;
};

std::string encode_hello();
Status parse_hello(std::string_view bytes);  // InvalidArgument says what is wrong

// InvalidArgument for an empty argv, an empty or NUL-containing string, or more than
// kMaxRequestBytes in all.
Result<std::string> encode_request(const Request& r);
Result<Request> parse_request(std::string_view bytes);

std::string encode_reply(const Reply& r);
Result<Reply> parse_reply(std::string_view bytes);

}  // namespace airlock::proto::zygote
