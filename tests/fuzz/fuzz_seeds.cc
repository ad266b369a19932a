// Writes seed inputs for every fuzzer, made by the real encoders so they follow the codecs:
//   fuzz_seeds DIR   ->  DIR/<fuzzer>/seed-<name>
// tools/fuzz.sh runs it into build-fuzz/corpus before each run; tests/fuzz/corpus holds a
// committed copy (regenerate: build-fuzz/tests/fuzz/fuzz_seeds tests/fuzz/corpus).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "airlock.pb.h"
#include "airlock/frame.h"
#include "airlock/msgpack_codec.h"
#include "airlock/proto_codec.h"
#include "airlock/zygote_wire.h"

namespace {

using namespace airlock;
using namespace airlock::proto;
namespace fs = std::filesystem;

// Fields are assigned by name, so a field added to a frame keeps this compiling.
std::vector<std::pair<std::string, Frame>> sample_frames() {
  std::vector<std::pair<std::string, Frame>> out;
  Request req;
  req.id = 7;
  req.parent_id = 3;
  req.timeout_us = 250000;
  req.target = "greet";
  req.method = "run";
  req.payload = "Ada,512,20";
  out.emplace_back("request", req);
  req.payload.clear();
  req.shm_refs = {{1, 0, 4096}, {2, 65536, 1u << 20}};
  out.emplace_back("request_shm", req);

  Response ok;
  ok.id = 7;
  ok.payload = "Hello, Ada!";
  out.emplace_back("response", ok);
  Response trap;
  trap.id = 8;
  trap.code = Code::Trap;
  trap.trap = TrapKind::MemoryOutOfBounds;
  trap.error = "skill 'greet': memory access out of bounds";
  trap.shm_refs = {{9, 128, 4096}};
  out.emplace_back("response_trap", trap);

  Cancel cancel;
  cancel.id = 7;
  out.emplace_back("cancel", cancel);

  LoadSkill load;
  load.id = 11;
  load.name = "greet";
  load.wasm = std::string("\0asm\x01\0\0\0", 8);
  load.max_memory_pages = 256;
  load.timeout_ms = 1000;
  out.emplace_back("load_skill", load);
  LoadSkill load_path;
  load_path.id = 12;
  load_path.name = "echo";
  load_path.path = "/opt/skills/echo.wasm";
  out.emplace_back("load_skill_path", load_path);

  UnloadSkill unload;
  unload.id = 13;
  unload.name = "greet";
  out.emplace_back("unload_skill", unload);

  Ready ready;
  ready.pid = 4242;
  ready.name = "skills";
  out.emplace_back("ready", ready);
  ready.pid = -1;
  out.emplace_back("ready_negative_pid", ready);

  Health health;
  health.id = 99;
  out.emplace_back("health", health);

  Shutdown shutdown;
  shutdown.grace_ms = 500;
  out.emplace_back("shutdown", shutdown);

  Log log;
  log.level = 4;
  log.message = "[skill greet] hello from the skill";
  out.emplace_back("log", log);
  return out;
}

void write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream f(dir / ("seed-" + name), std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) {
    std::fprintf(stderr, "fuzz_seeds: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

std::string msgpack_of(const Frame& f) {
  std::string wire;
  if (!encode_msgpack(f, wire).ok()) std::exit(1);
  return wire;
}

void msgpack_seeds(const fs::path& dir) {
  // Byte 0 of an input selects max_frame, feed vs prepare/commit and the chunking.
  std::string all;
  for (const auto& [name, f] : sample_frames()) {
    write(dir, name, std::string(1, '\0') + msgpack_of(f));
    all += msgpack_of(f);
  }
  write(dir, "stream_whole", std::string(1, '\x00') + all);
  write(dir, "stream_chunked", std::string(1, '\x28') + all);
  write(dir, "stream_zero_copy_chunked", std::string(1, '\x5c') + all);
  write(dir, "stream_small_max", std::string(1, '\x12') + all);
}

void proto_seeds(const fs::path& dir) {
  for (const auto& [name, f] : sample_frames()) {
    v1::Frame msg;
    if (!encode_proto(f, &msg).ok()) std::exit(1);
    write(dir, name, msg.SerializeAsString());
  }
}

std::string side_message(uint8_t kind, uint64_t id, uint64_t size) {
  std::string m(24, '\0');
  m[0] = static_cast<char>(kind);
  for (int i = 0; i < 8; ++i) {
    m[8 + i] = static_cast<char>(id >> (8 * i));
    m[16 + i] = static_cast<char>(size >> (8 * i));
  }
  return m;
}

void side_channel_seeds(const fs::path& dir) {
  // Byte 0: the number of fds sent with the message.
  write(dir, "announce", "\x01" + side_message(1, 42, 65536));
  write(dir, "drop", std::string(1, '\0') + side_message(2, 42, 0));
  write(dir, "return", std::string(1, '\0') + side_message(3, 42, 0));
  write(dir, "announce_two_fds", "\x02" + side_message(1, 43, 1u << 20));
  write(dir, "ring", "\x01" + side_message(5, 0, 256 * 1024));
}

// fuzz_ring: operations of one byte plus an 8-byte little-endian argument each.
std::string ring_op(uint8_t op, uint64_t arg) {
  std::string s(1, static_cast<char>(op));
  for (int i = 0; i < 8; i++) s.push_back(static_cast<char>(arg >> (8 * i)));
  return s;
}

void ring_seeds(const fs::path& dir) {
  // An honest peer: publishes 100 bytes, we read 60 then the rest; we write, it frees.
  write(dir, "honest", ring_op(1, 0x41) + ring_op(0, 100) + ring_op(2, 60) + ring_op(2, 100) + ring_op(4, 5000) +
                           ring_op(3, 4096) + ring_op(4, 300) + ring_op(5, 0));
  // Wrapping: the head runs past the capacity in steps the reader follows.
  write(dir, "wrap", ring_op(0, 4000) + ring_op(2, 4000) + ring_op(0, 8000) + ring_op(2, 8192) + ring_op(5, 0));
  // Lies: a head beyond the capacity, a tail ahead of our head.
  write(dir, "bad_head", ring_op(0, 4097) + ring_op(2, 10) + ring_op(5, 0));
  write(dir, "bad_tail", ring_op(4, 10) + ring_op(3, 11) + ring_op(4, 1) + ring_op(5, 0));
}

void zygote_seeds(const fs::path& dir) {
  namespace zw = airlock::proto::zygote;
  write(dir, "hello", zw::encode_hello());
  zw::Reply reply;
  reply.seq = 5;
  write(dir, "reply", zw::encode_reply(reply));
  reply.status = -2;  // -ENOENT
  write(dir, "reply_error", zw::encode_reply(reply));
  zw::Request request;
  request.seq = 5;
  request.argv = {"airlock-extension", "serve", "--fd", "3", "--name", "skills"};
  request.env = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8"};
  Result<std::string> wire = zw::encode_request(request);
  if (!wire.ok()) std::exit(1);
  write(dir, "request", *wire);
}

// ---- hand-assembled WebAssembly modules

using Bytes = std::string;

Bytes leb(uint64_t v) {
  Bytes out;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out.push_back(static_cast<char>(v ? b | 0x80 : b));
  } while (v);
  return out;
}
Bytes name(const std::string& s) { return leb(s.size()) + s; }
Bytes vec(std::initializer_list<Bytes> items) {
  Bytes out = leb(items.size());
  for (const Bytes& i : items) out += i;
  return out;
}
Bytes section(uint8_t id, const Bytes& payload) {
  return Bytes(1, static_cast<char>(id)) + leb(payload.size()) + payload;
}
Bytes b(std::initializer_list<int> bytes) {
  Bytes out;
  for (int x : bytes) out.push_back(static_cast<char>(x));
  return out;
}
const Bytes kHeader("\0asm\x01\0\0\0", 8);

// Types: 0 () -> i32, 1 (i32) -> i32, 2 (i32, i32) -> (), 3 (v128) -> (), 4 (i64 f32 f64) -> f64
Bytes type_section() {
  return section(1, vec({b({0x60, 0, 1, 0x7f}), b({0x60, 1, 0x7f, 1, 0x7f}),
                         b({0x60, 2, 0x7f, 0x7f, 0}), b({0x60, 1, 0x7b, 0}),
                         b({0x60, 3, 0x7e, 0x7d, 0x7c, 1, 0x7c})}));
}
Bytes memory_section(std::initializer_list<Bytes> limits) { return section(5, vec(limits)); }

std::vector<std::pair<std::string, Bytes>> wasm_modules() {
  std::vector<std::pair<std::string, Bytes>> out;
  out.emplace_back("empty_module", kHeader);

  // Shaped like a skill: ABI imports and exports, every known section, a custom section.
  Bytes skill = kHeader;
  skill += section(0, name("name") + b({1, 2, 0, 0}));  // custom sections may go anywhere
  skill += type_section();
  skill += section(2, vec({name("airlock") + name("log") + b({0, 2}),
                           name("wasi_snapshot_preview1") + name("fd_write") + b({0, 1}),
                           name("env") + name("table") + b({1, 0x70, 0, 1}),
                           name("env") + name("g") + b({3, 0x7f, 0})}));
  skill += section(3, vec({b({0}), b({1}), b({1}), b({4})}));
  skill += section(4, vec({b({0x70, 1, 2, 4})}));
  skill += memory_section({b({1, 2, 16})});
  skill += section(13, vec({b({0, 2})}));                      // tag
  skill += section(6, vec({b({0x7f, 1, 0x41, 0, 0x0b})}));     // global (mut i32) = 0
  skill += section(7, vec({name("memory") + b({2, 0}), name("airlock_abi_version") + b({0, 2}),
                           name("airlock_alloc") + b({0, 3}), name("run") + b({0, 4}),
                           name("__stack_pointer") + b({3, 1}), name("table") + b({1, 1}),
                           name("tag") + b({4, 0}), name("f") + b({0, 5})}));
  skill += section(8, leb(3));                                 // start: function 3
  skill += section(9, vec({b({0, 0x41, 0, 0x0b, 1, 2})}));     // elem
  skill += section(12, leb(1));                                // data count
  skill += section(10, vec({b({4, 0, 0x41, 1, 0x0b}), b({4, 0, 0x20, 0, 0x0b}),
                            b({4, 0, 0x20, 0, 0x0b}), b({2, 0, 0x0b})}));
  skill += section(11, vec({b({0, 0x41, 0, 0x0b}) + name("hi")}));
  skill += section(0, name("producers") + b({0}));
  out.emplace_back("skill_like", skill);

  Bytes types = kHeader + type_section();
  out.emplace_back("memory_no_max", types + memory_section({b({0, 1})}));
  out.emplace_back("memory_max", types + memory_section({b({1, 0, 0x80, 0x80, 4})}));
  out.emplace_back("memory64", types + memory_section({b({5, 3, 0x80, 0x80, 4})}));
  out.emplace_back("memory_shared", types + memory_section({b({3, 1, 8})}));
  out.emplace_back("multi_memory", types + memory_section({b({0, 1}), b({1, 2, 4})}));
  out.emplace_back("imported_memory",
                   types + section(2, vec({name("env") + name("memory") + b({2, 0, 1})})));
  // Padded (5-byte) LEBs, as linkers write them.
  out.emplace_back("padded_leb", kHeader + b({5, 0x84, 0x80, 0x80, 0x80, 0x00, 1, 1, 2, 3}));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR   (writes DIR/<fuzzer>/seed-*)\n", argv[0]);
    return 2;
  }
  const fs::path dir = argv[1];
  msgpack_seeds(dir / "fuzz_msgpack_frames");
  proto_seeds(dir / "fuzz_proto_frames");
  side_channel_seeds(dir / "fuzz_side_channel");
  ring_seeds(dir / "fuzz_ring");
  zygote_seeds(dir / "fuzz_zygote_wire");
  for (const auto& [n, module] : wasm_modules()) write(dir / "fuzz_wasm_parser", n, module);
  return 0;
}
