// The WASI subset of docs/SKILL_ABI.md: enough for ordinary C (malloc, printf, time,
// rand) and nothing that reaches the filesystem or network. stdout/stderr become log
// lines tagged with the skill's name.
#include <sys/random.h>

#include <algorithm>
#include <ctime>

#include "runtime/call_state.h"

namespace airlock::runtime {

using engine::Caller;
using engine::HostTrap;
using engine::Value;
using VT = engine::ValType;

namespace {
constexpr int32_t kSuccess = 0, kEbadf = 8, kEinval = 28, kEspipe = 70;
constexpr int32_t kMaxIovecs = 64;                 // per fd_write
constexpr uint32_t kMaxWriteBytes = 64 * 1024;     // per fd_write
constexpr int32_t kMaxRandomBytes = 1 << 20;       // per random_get

void put_u32(engine::Instance& inst, int32_t ptr, uint32_t v) { std::memcpy(guest_span(inst, ptr, 4).data(), &v, 4); }
void put_u64(engine::Instance& inst, int32_t ptr, uint64_t v) { std::memcpy(guest_span(inst, ptr, 8).data(), &v, 8); }
uint32_t get_u32(engine::Instance& inst, int32_t ptr) {
  uint32_t v;
  std::memcpy(&v, guest_span(inst, ptr, 4).data(), 4);
  return v;
}
bool is_stdio(int32_t fd) { return fd >= 0 && fd <= 2; }
}  // namespace

void write_output_lines(Binding& b, int fd, std::string_view text) {
  std::string& buf = b.call ? (fd == 1 ? b.call->stdout_line : b.call->stderr_line)
                            : (fd == 1 ? b.skill->stdout_line : b.skill->stderr_line);
  const int level = fd == 1 ? 2 : 3;  // info / warn
  buf.append(text);
  size_t pos;
  while ((pos = buf.find('\n')) != std::string::npos) {
    log_line(b, level, std::string_view(buf).substr(0, pos));
    buf.erase(0, pos + 1);
  }
  if (buf.size() > kMaxLogLineBytes) {  // a line without end: do not buffer forever
    log_line(b, level, buf);
    buf.clear();
  }
}

std::vector<engine::HostFunction> wasi_imports() {
  std::vector<engine::HostFunction> f;
  auto add = [&](const char* name, engine::FuncType t, engine::HostFn fn) {
    f.push_back({"wasi_snapshot_preview1", name, std::move(t), std::move(fn)});
  };
  const engine::FuncType ii_i{{VT::I32, VT::I32}, {VT::I32}};
  auto zero_sizes = [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    put_u32(c.instance(), a[0].i32, 0);
    put_u32(c.instance(), a[1].i32, 0);
    r[0] = Value::from_i32(kSuccess);
  };
  auto nothing = [](Caller&, std::span<const Value>, std::span<Value> r) { r[0] = Value::from_i32(kSuccess); };
  add("args_sizes_get", ii_i, zero_sizes);
  add("args_get", ii_i, nothing);
  add("environ_sizes_get", ii_i, zero_sizes);
  add("environ_get", ii_i, nothing);
  add("clock_time_get", {{VT::I32, VT::I64, VT::I32}, {VT::I32}}, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    timespec ts{};
    int id = a[0].i32;
    if (id < 0 || id > 3) {
      r[0] = Value::from_i32(kEinval);
      return;
    }
    clock_gettime(id == 0 ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts);
    put_u64(c.instance(), a[2].i32, static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec);
    r[0] = Value::from_i32(kSuccess);
  });
  add("clock_res_get", ii_i, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    put_u64(c.instance(), a[1].i32, 1000);
    r[0] = Value::from_i32(kSuccess);
  });
  add("fd_write", {{VT::I32, VT::I32, VT::I32, VT::I32}, {VT::I32}}, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    int fd = a[0].i32;
    if (fd != 1 && fd != 2) {
      r[0] = Value::from_i32(kEbadf);
      return;
    }
    // Bounded work per call: at most kMaxIovecs buffers and kMaxWriteBytes bytes, the
    // rest is a short write (libc writes the remainder with another call, which the
    // deadline can stop; one call with 4,000 iovecs of 16 MiB used to run 10 s).
    auto& inst = c.instance();
    uint32_t total = 0;
    const int32_t n = std::clamp(a[2].i32, 0, kMaxIovecs);
    for (int32_t i = 0; i < n && total < kMaxWriteBytes; ++i) {
      int32_t iov = a[1].i32 + i * 8;
      auto base = static_cast<int32_t>(get_u32(inst, iov));
      auto len = std::min<uint32_t>(get_u32(inst, iov + 4), kMaxWriteBytes - total);
      write_output_lines(binding_of(c), fd, guest_string(inst, base, static_cast<int32_t>(len)));
      total += len;
    }
    put_u32(inst, a[3].i32, total);
    r[0] = Value::from_i32(kSuccess);
  });
  add("fd_read", {{VT::I32, VT::I32, VT::I32, VT::I32}, {VT::I32}}, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    if (a[0].i32 != 0) {
      r[0] = Value::from_i32(kEbadf);
      return;
    }
    put_u32(c.instance(), a[3].i32, 0);  // stdin is always at EOF
    r[0] = Value::from_i32(kSuccess);
  });
  add("fd_close", {{VT::I32}, {VT::I32}}, [](Caller&, std::span<const Value> a, std::span<Value> r) {
    r[0] = Value::from_i32(is_stdio(a[0].i32) ? kSuccess : kEbadf);
  });
  add("fd_seek", {{VT::I32, VT::I64, VT::I32, VT::I32}, {VT::I32}}, [](Caller&, std::span<const Value> a, std::span<Value> r) {
    r[0] = Value::from_i32(is_stdio(a[0].i32) ? kEspipe : kEbadf);
  });
  add("fd_fdstat_get", ii_i, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    if (!is_stdio(a[0].i32)) {
      r[0] = Value::from_i32(kEbadf);
      return;
    }
    auto st = guest_span(c.instance(), a[1].i32, 24);
    std::memset(st.data(), 0, st.size());
    st[0] = 2;  // filetype: character device (so libc line-buffers stdout)
    r[0] = Value::from_i32(kSuccess);
  });
  add("fd_prestat_get", ii_i, [](Caller&, std::span<const Value>, std::span<Value> r) {
    r[0] = Value::from_i32(kEbadf);  // no preopened directories: no filesystem
  });
  add("fd_prestat_dir_name", {{VT::I32, VT::I32, VT::I32}, {VT::I32}}, [](Caller&, std::span<const Value>, std::span<Value> r) {
    r[0] = Value::from_i32(kEbadf);
  });
  add("proc_exit", {{VT::I32}, {}}, [](Caller&, std::span<const Value> a, std::span<Value>) {
    throw HostTrap{make_error(Code::Internal, "skill called exit(" + std::to_string(a[0].i32) + ")")};
  });
  add("random_get", ii_i, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    if (static_cast<uint32_t>(a[1].i32) > static_cast<uint32_t>(kMaxRandomBytes)) {
      r[0] = Value::from_i32(kEinval);
      return;
    }
    auto buf = guest_span(c.instance(), a[0].i32, a[1].i32);
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = getrandom(buf.data() + done, buf.size() - done, 0);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    r[0] = Value::from_i32(done == buf.size() ? kSuccess : kEinval);
  });
  add("sched_yield", {{}, {VT::I32}}, nothing);
  return f;
}

}  // namespace airlock::runtime
