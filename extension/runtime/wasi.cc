// WASI preview 1 (module wasi_snapshot_preview1) as docs/SKILL_ABI.md describes it:
// every function of the preview is provided, so whatever wasi-libc's stdio or libc++'s
// iostreams pull in links; only what a skill may have works (clocks, random, stdout and
// stderr as log lines, stdin at EOF). Everything that would reach a file system, a
// socket or another process returns a WASI errno (no preopened directory exists, so
// wasi-libc's open() fails with ENOTCAPABLE before it even asks), never a load failure.
//
// A skill is hostile: every function here does bounded work (fd_write: 64 iovecs and
// 64 KiB per call; poll_oneoff: 64 subscriptions and never blocks), reads guest memory
// only through guest_span (a bad pointer traps the call with InvalidArgument) and
// allocates nothing proportional to its arguments beyond those bounds.
#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "runtime/call_state.h"

namespace airlock::runtime {

using engine::Caller;
using engine::HostTrap;
using engine::Value;
using VT = engine::ValType;

namespace {
// WASI errno values (wasi/api.h __WASI_ERRNO_*).
constexpr int32_t kSuccess = 0, kEbadf = 8, kEinval = 28, kEnosys = 52, kEnotdir = 54, kEnotsock = 57,
                  kEnotsup = 58, kEspipe = 70;
constexpr int32_t kMaxPollSubscriptions = 64;  // per poll_oneoff
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
// For an operation that stdio does not support: `on_stdio` for fds 0-2, EBADF otherwise
// (no other descriptor exists: nothing can be opened).
int32_t stdio_or_badf(int32_t fd, int32_t on_stdio) { return is_stdio(fd) ? on_stdio : kEbadf; }

uint64_t now_ns(int32_t id) {
  timespec ts{};
  clock_gettime(id == 0 ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// poll_oneoff without blocking: a host function cannot be interrupted by the call's
// deadline, so nothing here waits. Events that are ready now are reported (stdout and
// stderr are always writable, stdin always readable at EOF, a clock whose timeout has
// passed); if none is, the answer is ENOTSUP: a skill that wants to sleep calls
// airlock_wait(), which suspends without holding the thread.
int32_t poll_now(engine::Instance& inst, int32_t in, int32_t out, int32_t nsubs, int32_t nevents_ptr) {
  if (nsubs <= 0 || nsubs > kMaxPollSubscriptions) return kEinval;
  guest_span(inst, in, nsubs * 48);   // both arrays must be in bounds before anything is written
  guest_span(inst, out, nsubs * 32);
  guest_span(inst, nevents_ptr, 4);
  uint32_t n = 0;
  for (int32_t i = 0; i < nsubs; ++i) {
    auto sub = guest_span(inst, in + i * 48, 48);
    uint64_t userdata;
    std::memcpy(&userdata, sub.data(), 8);
    const uint8_t tag = sub[8];
    uint16_t error = kSuccess;
    uint64_t nbytes = 0;
    uint16_t rwflags = 0;
    bool ready = false;
    if (tag == 0) {  // clock
      uint32_t id;
      uint64_t timeout;
      uint16_t flags;
      std::memcpy(&id, sub.data() + 16, 4);
      std::memcpy(&timeout, sub.data() + 24, 8);
      std::memcpy(&flags, sub.data() + 40, 2);
      if (id > 3) {
        error = kEinval;
        ready = true;
      } else {
        ready = (flags & 1) ? timeout <= now_ns(static_cast<int32_t>(id)) : timeout == 0;
      }
    } else if (tag == 1 || tag == 2) {  // fd_read, fd_write
      uint32_t fd;
      std::memcpy(&fd, sub.data() + 16, 4);
      ready = true;
      if (tag == 1 && fd == 0) {
        rwflags = 1;  // hangup: stdin is at EOF
      } else if (tag == 2 && (fd == 1 || fd == 2)) {
        nbytes = kMaxWriteBytes;
      } else {
        error = kEbadf;
      }
    } else {
      return kEinval;
    }
    if (!ready) continue;
    auto ev = guest_span(inst, out + static_cast<int32_t>(n) * 32, 32);
    std::memset(ev.data(), 0, 32);
    std::memcpy(ev.data(), &userdata, 8);
    std::memcpy(ev.data() + 8, &error, 2);
    ev[10] = tag;
    std::memcpy(ev.data() + 16, &nbytes, 8);
    std::memcpy(ev.data() + 24, &rwflags, 2);
    ++n;
  }
  if (n == 0) return kEnotsup;  // only clocks in the future: would block
  put_u32(inst, nevents_ptr, n);
  return kSuccess;
}
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
    // 0 realtime, 1 monotonic, 2 process and 3 thread CPU time (both: monotonic).
    int id = a[0].i32;
    if (id < 0 || id > 3) {
      r[0] = Value::from_i32(kEinval);
      return;
    }
    put_u64(c.instance(), a[2].i32, now_ns(id));
    r[0] = Value::from_i32(kSuccess);
  });
  add("clock_res_get", ii_i, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    if (a[0].i32 < 0 || a[0].i32 > 3) {
      r[0] = Value::from_i32(kEinval);
      return;
    }
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
    // Through a buffer of ours: the kernel writing into a read-only mapped input would
    // fail with EFAULT where a write from here makes it the skill's copy (input_window.h).
    size_t done = 0;
    uint8_t chunk[256];
    while (done < buf.size()) {
      ssize_t n = getrandom(chunk, std::min(sizeof chunk, buf.size() - done), 0);
      if (n <= 0) break;
      std::memcpy(buf.data() + done, chunk, static_cast<size_t>(n));
      done += static_cast<size_t>(n);
    }
    r[0] = Value::from_i32(done == buf.size() ? kSuccess : kEinval);
  });
  add("sched_yield", {{}, {VT::I32}}, nothing);

  // --- the rest of WASI preview 1: provided so every libc links, refused cleanly ----
  // An errno that depends only on the fd: `on_stdio` for 0-2, EBADF for anything else.
  auto by_fd = [&](const char* name, engine::FuncType t, int32_t on_stdio) {
    add(name, std::move(t), [on_stdio](Caller&, std::span<const Value> a, std::span<Value> r) {
      r[0] = Value::from_i32(stdio_or_badf(a[0].i32, on_stdio));
    });
  };
  auto always = [&](const char* name, engine::FuncType t, int32_t errno_value) {
    add(name, std::move(t), [errno_value](Caller&, std::span<const Value>, std::span<Value> r) {
      r[0] = Value::from_i32(errno_value);
    });
  };
  const VT I = VT::I32, L = VT::I64;
  by_fd("fd_advise", {{I, L, L, I}, {I}}, kEspipe);
  by_fd("fd_allocate", {{I, L, L}, {I}}, kEnotsup);
  by_fd("fd_datasync", {{I}, {I}}, kEinval);
  by_fd("fd_sync", {{I}, {I}}, kEinval);
  by_fd("fd_fdstat_set_flags", {{I, I}, {I}}, kEnotsup);   // fcntl(F_SETFL): stdio flags are fixed
  by_fd("fd_fdstat_set_rights", {{I, L, L}, {I}}, kEnotsup);
  by_fd("fd_filestat_set_size", {{I, L}, {I}}, kEinval);
  by_fd("fd_filestat_set_times", {{I, L, L, I}, {I}}, kEnotsup);
  by_fd("fd_pread", {{I, I, I, L, I}, {I}}, kEspipe);
  by_fd("fd_pwrite", {{I, I, I, L, I}, {I}}, kEspipe);
  by_fd("fd_readdir", {{I, I, I, L, I}, {I}}, kEnotdir);
  by_fd("fd_renumber", {{I, I}, {I}}, kEnotsup);
  by_fd("fd_tell", {{I, I}, {I}}, kEspipe);
  add("fd_filestat_get", ii_i, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    if (!is_stdio(a[0].i32)) {
      r[0] = Value::from_i32(kEbadf);
      return;
    }
    auto st = guest_span(c.instance(), a[1].i32, 64);  // dev, ino, filetype, nlink, size, atim, mtim, ctim
    std::memset(st.data(), 0, st.size());
    st[16] = 2;  // character device
    r[0] = Value::from_i32(kSuccess);
  });
  // path_*: the first fd must be a preopened directory and there are none. The path is
  // never read.
  by_fd("path_create_directory", {{I, I, I}, {I}}, kEnotdir);
  by_fd("path_filestat_get", {{I, I, I, I, I}, {I}}, kEnotdir);
  by_fd("path_filestat_set_times", {{I, I, I, I, L, L, I}, {I}}, kEnotdir);
  by_fd("path_link", {{I, I, I, I, I, I, I}, {I}}, kEnotdir);
  by_fd("path_open", {{I, I, I, I, I, L, L, I, I}, {I}}, kEnotdir);
  by_fd("path_readlink", {{I, I, I, I, I, I}, {I}}, kEnotdir);
  by_fd("path_remove_directory", {{I, I, I}, {I}}, kEnotdir);
  by_fd("path_rename", {{I, I, I, I, I, I}, {I}}, kEnotdir);
  by_fd("path_unlink_file", {{I, I, I}, {I}}, kEnotdir);
  add("path_symlink", {{I, I, I, I, I}, {I}}, [](Caller&, std::span<const Value> a, std::span<Value> r) {
    r[0] = Value::from_i32(stdio_or_badf(a[2].i32, kEnotdir));  // (old_path, len, fd, new_path, len)
  });
  add("poll_oneoff", {{I, I, I, I}, {I}}, [](Caller& c, std::span<const Value> a, std::span<Value> r) {
    r[0] = Value::from_i32(poll_now(c.instance(), a[0].i32, a[1].i32, a[2].i32, a[3].i32));
  });
  always("proc_raise", {{I}, {I}}, kEnosys);  // no signals
  by_fd("sock_accept", {{I, I, I}, {I}}, kEnotsock);
  by_fd("sock_recv", {{I, I, I, I, I, I}, {I}}, kEnotsock);
  by_fd("sock_send", {{I, I, I, I, I}, {I}}, kEnotsock);
  by_fd("sock_shutdown", {{I, I}, {I}}, kEnotsock);
  return f;
}

}  // namespace airlock::runtime
