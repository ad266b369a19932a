// Fuzzes the zygote's datagram parsers (proto/zygote_wire.cc): parse_hello and
// parse_reply, which the host runs on what a zygote sends, and parse_request, which the
// zygote runs on what its host sends.
//
// Input: one datagram; all three parsers read it.
//
// Checked, beyond "no sanitizer report": the format has one encoding per message, so
// whatever parses encodes back (encode_hello / encode_request / encode_reply) to exactly
// the input bytes; refusals are InvalidArgument; a reply's status is 0 or negative and a
// request's argv is non-empty, with no empty or NUL-containing string.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "airlock/status.h"
#include "airlock/zygote_wire.h"
#include "fuzz_check.h"

namespace {

using namespace airlock;
namespace zw = airlock::proto::zygote;

bool plain(const std::string& s) { return !s.empty() && s.find('\0') == std::string::npos; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  Status hello = zw::parse_hello(bytes);
  if (hello.ok()) {
    AIRLOCK_FUZZ_CHECK(bytes == zw::encode_hello());
  } else {
    AIRLOCK_FUZZ_CHECK(hello.error().code == Code::InvalidArgument);
  }

  Result<zw::Reply> reply = zw::parse_reply(bytes);
  if (reply.ok()) {
    AIRLOCK_FUZZ_CHECK(reply->status <= 0);
    AIRLOCK_FUZZ_CHECK(bytes == zw::encode_reply(*reply));
  } else {
    AIRLOCK_FUZZ_CHECK(reply.error().code == Code::InvalidArgument);
  }

  Result<zw::Request> request = zw::parse_request(bytes);
  if (request.ok()) {
    AIRLOCK_FUZZ_CHECK(!request->argv.empty());
    for (const std::string& s : request->argv) AIRLOCK_FUZZ_CHECK(plain(s));
    for (const std::string& s : request->env) AIRLOCK_FUZZ_CHECK(plain(s));
    Result<std::string> again = zw::encode_request(*request);
    AIRLOCK_FUZZ_CHECK(again.ok());
    AIRLOCK_FUZZ_CHECK(*again == bytes);
    Result<zw::Request> twice = zw::parse_request(*again);
    AIRLOCK_FUZZ_CHECK(twice.ok() && *twice == *request);
  } else {
    AIRLOCK_FUZZ_CHECK(request.error().code == Code::InvalidArgument);
  }
  return 0;
}
