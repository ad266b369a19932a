// A misbehaving extension for host tests. Speaks just enough msgpack to look real,
// then does what $AIRLOCK_FAKE says:
//   garbage       Ready, then bytes that are no frame at all
//   oversized     Ready, then a frame header announcing 1 GiB
//   crash         exit(7) before Ready
//   silent        never sends Ready
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "airlock/msgpack_codec.h"

int main() {
  const char* mode = getenv("AIRLOCK_FAKE");
  std::string m = mode ? mode : "";
  if (m == "crash") return 7;
  if (m == "silent") {
    sleep(60);
    return 0;
  }
  std::string out;
  (void)airlock::proto::encode_msgpack(airlock::proto::Ready{1, getpid(), "fake"}, out);
  if (m == "garbage") {
    out += std::string("\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1", 9);
  } else if (m == "oversized") {
    out += std::string("\x00\x00\x00\x40", 4);
  }
  if (write(3, out.data(), out.size()) < 0) return 1;
  sleep(60);
  return 0;
}
