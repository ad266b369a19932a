#include "airlock/zygote_wire.h"

#include <cstring>

namespace airlock::proto::zygote {
namespace {

constexpr char kMagic[8] = {'A', 'L', 'Z', 'Y', 'G', 'O', 'T', 'E'};
constexpr size_t kHeaderBytes = 16;  // magic, version, reserved

void put32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get(std::string_view b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<uint8_t>(b[at + i])) << (8 * i);
  return v;
}

std::string header() {
  std::string out(kMagic, sizeof kMagic);
  put32(out, kVersion);
  put32(out, 0);
  return out;
}

Status check_header(std::string_view b, const char* what) {
  auto bad = [&](const std::string& why) { return make_error(Code::InvalidArgument, std::string("zygote ") + what + ": " + why); };
  if (b.size() < kHeaderBytes) return bad(std::to_string(b.size()) + " bytes is too short");
  if (std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) return bad("bad magic");
  if (get(b, 8, 4) != kVersion) return bad("protocol version " + std::to_string(get(b, 8, 4)) + ", expected " + std::to_string(kVersion));
  if (get(b, 12, 4) != 0) return bad("reserved field is not zero");
  return ok_status();
}

Result<std::vector<std::string>> take_list(std::string_view b, size_t& at, const char* what) {
  std::vector<std::string> out;
  for (;;) {
    const void* nul = at < b.size() ? std::memchr(b.data() + at, '\0', b.size() - at) : nullptr;
    if (!nul) return make_error(Code::InvalidArgument, std::string("zygote request: ") + what + " is not terminated");
    size_t len = static_cast<const char*>(nul) - (b.data() + at);
    if (len == 0) {
      ++at;
      return out;
    }
    out.emplace_back(b.substr(at, len));
    at += len + 1;
  }
}

}  // namespace

std::string encode_hello() { return header(); }

Status parse_hello(std::string_view b) {
  if (auto st = check_header(b, "hello"); !st.ok()) return st;
  if (b.size() != kHelloBytes) return make_error(Code::InvalidArgument, "zygote hello: " + std::to_string(b.size()) + " bytes, expected 16");
  return ok_status();
}

Result<std::string> encode_request(const Request& r) {
  if (r.argv.empty()) return make_error(Code::InvalidArgument, "zygote request: empty argv");
  std::string out = header();
  put64(out, r.seq);
  for (const auto* list : {&r.argv, &r.env}) {
    for (const auto& s : *list) {
      if (s.empty() || s.find('\0') != std::string::npos) {
        return make_error(Code::InvalidArgument, "zygote request: empty string or NUL inside '" + s.substr(0, 40) + "'");
      }
      out.append(s).push_back('\0');
    }
    out.push_back('\0');
  }
  if (out.size() > kMaxRequestBytes) {
    return make_error(Code::InvalidArgument, "zygote request: " + std::to_string(out.size()) + " bytes of argv and environment (limit " +
                                                 std::to_string(kMaxRequestBytes) + ")");
  }
  return out;
}

Result<Request> parse_request(std::string_view b) {
  if (auto st = check_header(b, "request"); !st.ok()) return st.take_error();
  if (b.size() > kMaxRequestBytes) return make_error(Code::InvalidArgument, "zygote request: too large");
  if (b.size() < kHeaderBytes + 8 + 2) return make_error(Code::InvalidArgument, "zygote request: too short");
  Request r;
  r.seq = get(b, kHeaderBytes, 8);
  size_t at = kHeaderBytes + 8;
  auto argv = take_list(b, at, "argv");
  if (!argv.ok()) return argv.take_error();
  auto env = take_list(b, at, "environment");
  if (!env.ok()) return env.take_error();
  if (at != b.size()) return make_error(Code::InvalidArgument, "zygote request: bytes after the environment");
  if (argv->empty()) return make_error(Code::InvalidArgument, "zygote request: empty argv");
  r.argv = std::move(argv.value());
  r.env = std::move(env.value());
  return r;
}

std::string encode_reply(const Reply& r) {
  std::string out = header();
  put64(out, r.seq);
  put32(out, static_cast<uint32_t>(r.status));
  put32(out, 0);
  return out;
}

Result<Reply> parse_reply(std::string_view b) {
  if (auto st = check_header(b, "reply"); !st.ok()) return st.take_error();
  if (b.size() != kReplyBytes) {
    return make_error(Code::InvalidArgument, "zygote reply: " + std::to_string(b.size()) + " bytes, expected " + std::to_string(kReplyBytes));
  }
  if (get(b, 28, 4) != 0) return make_error(Code::InvalidArgument, "zygote reply: reserved field is not zero");
  Reply r;
  r.seq = get(b, kHeaderBytes, 8);
  r.status = static_cast<int32_t>(static_cast<uint32_t>(get(b, 24, 4)));
  if (r.status > 0) return make_error(Code::InvalidArgument, "zygote reply: positive status " + std::to_string(r.status));
  return r;
}

}  // namespace airlock::proto::zygote
