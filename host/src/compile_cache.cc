#include "compile_cache.h"

#include "process.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>

namespace airlock::detail {

namespace {

constexpr size_t kMaxQueued = 4096;
constexpr size_t kMaxQueuedBytes = 256u << 20;  // module bytes waiting to be built
constexpr uint64_t kMaxEntryBytes = 256ull << 20;  // the code of a module; larger is refused
constexpr char kMagic[] = "AIRLOCK-CODE-1\n";  // file format; 15 bytes
constexpr size_t kMagicLen = sizeof kMagic - 1;
constexpr size_t kHeaderLen = kMagicLen + 64 + 8 + 32;  // magic, key (hex), code length, SHA-256 of the code

std::string sha256(std::string_view a, std::string_view b = {}) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  // Fetched once: an implicit fetch per digest was a third of its cost for a 100 KB entry.
  static EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD_CTX* c = EVP_MD_CTX_new();
  EVP_DigestInit_ex(c, kSha256, nullptr);
  EVP_DigestUpdate(c, a.data(), a.size());
  EVP_DigestUpdate(c, b.data(), b.size());
  EVP_DigestFinal_ex(c, md, &n);
  EVP_MD_CTX_free(c);
  return std::string(reinterpret_cast<char*>(md), n);
}

// All `len` bytes at `offset`, or false (a short file is a damaged one).
bool read_at(int fd, void* to, size_t len, uint64_t offset) {
  auto* p = static_cast<char*>(to);
  for (size_t got = 0; got < len;) {
    const ssize_t n = pread(fd, p + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

std::string hex(std::string_view bytes) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (unsigned char c : bytes) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

// Which extension binary: a rebuilt one may hold another V8 (which V8 would refuse
// anyway) or other code generation (which it would not notice).
std::string identity_of(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return path;
  return path + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ino);
}

bool send_all(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

CompileCache::CompileCache(std::string dir, std::string extension_binary, SandboxOptions sandbox,
                           std::chrono::milliseconds build_timeout)
    : dir_(std::move(dir)),
      binary_(std::move(extension_binary)),
      binary_identity_(identity_of(binary_)),
      sandbox_(sandbox),
      build_timeout_(build_timeout) {
  // Entries are native code extensions will run: the folder is the host's alone (a
  // checksum finds damage, not a hand that writes there on purpose).
  std::error_code ec;
  if (std::filesystem::create_directories(dir_, ec)) chmod(dir_.c_str(), 0700);
  thread_ = std::thread([this] { worker(); });
}

CompileCache::~CompileCache() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    queue_.clear();
    if (running_pidfd_ >= 0) signal_child(running_pidfd_, SIGKILL);
  }
  cv_.notify_all();
  thread_.join();
}

std::string CompileCache::key(std::string_view wasm, uint32_t max_memory_mb, const EngineOptions& e) const {
  const std::string shape = "airlock-code-1|" + binary_identity_ + "|mem=" + std::to_string(max_memory_mb) +
                            "|lazy=" + std::to_string(e.lazy_compilation) + "|guards=" + std::string(to_string(e.guard_regions)) +
                            "|sandbox=" + std::to_string(sandbox_.enabled) + "|";
  return hex(sha256(shape, wasm));
}

std::optional<shm::Buffer> CompileCache::lookup(const std::string& key) {
  const std::string path = dir_ + "/" + key + ".code";
  auto miss = [&](bool damaged) -> std::optional<shm::Buffer> {
    std::lock_guard lk(mu_);
    stats_.misses++;
    if (damaged) {
      stats_.corrupt++;
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
    return std::nullopt;
  };
  // A regular file of ours only: no symlink followed, no FIFO waited on.
  const int raw = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (raw < 0) return miss(false);
  const shm::UniqueFd fd(raw);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return miss(false);
  const auto size = static_cast<uint64_t>(st.st_size);
  char header[kHeaderLen];
  if (size <= kHeaderLen || size > kHeaderLen + kMaxEntryBytes || !read_at(fd.get(), header, kHeaderLen, 0)) {
    return miss(true);
  }
  const std::string_view h(header, kHeaderLen);
  uint64_t len = 0;
  std::memcpy(&len, header + kMagicLen + 64, 8);
  if (h.substr(0, kMagicLen) != kMagic || h.substr(kMagicLen, 64) != key || len != size - kHeaderLen) return miss(true);
  // Read and checked here, then written into a sealed memfd that the extension maps:
  // no copy in a frame, and no mapping on this side (~0.1 ms of faults and shootdowns).
  // Entries are written whole and renamed into place, so the file does not change under
  // this read.
  // A thread's buffer is kept for the next entry (a fresh 100 KB one cost its page
  // faults at every load), unless it grew past 1 MiB.
  thread_local std::string code;
  code.resize(len);
  struct Shrink {
    ~Shrink() {
      if (code.capacity() > (1u << 20)) std::string().swap(code);
    }
  } shrink;
  if (!read_at(fd.get(), code.data(), len, kHeaderLen) || sha256(code) != h.substr(kMagicLen + 72, 32)) return miss(true);
  auto b = shm::Buffer::copy_of(std::as_bytes(std::span(code)), "airlock-code");
  if (!b.ok()) return miss(false);
  return std::move(b.value());
}

void CompileCache::build(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine) {
  {
    std::lock_guard lk(mu_);
    // A module whose build failed (or timed out) is not tried again by this host: a
    // hostile one must not keep the builder busy.
    if (stop_ || pending_.count(key) || given_up_.count(key) || queue_bytes_ + wasm.size() > kMaxQueuedBytes ||
        queue_.size() >= kMaxQueued) {
      return;
    }
    queue_bytes_ += wasm.size();
    pending_.insert(key);
    queue_.push_back({key, std::move(wasm), max_memory_mb, engine});
  }
  cv_.notify_all();
}

void CompileCache::rejected(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine) {
  {
    std::lock_guard lk(mu_);
    stats_.rejected++;
    // Rebuilt once: the key names the extension binary, so an honest engine refuses an
    // entry only if it came from elsewhere. An extension that keeps saying so (it may
    // lie) costs one rebuild per module, then the module is no longer cached.
    if (!rebuilt_after_rejection_.insert(key).second) {
      given_up_.insert(key);
      return;
    }
    std::error_code ec;
    std::filesystem::remove(dir_ + "/" + key + ".code", ec);
  }
  build(key, std::move(wasm), max_memory_mb, engine);
}

void CompileCache::hit() {
  std::lock_guard lk(mu_);
  stats_.hits++;
}

void CompileCache::wait_idle() {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return stop_ || (queue_.empty() && !busy_); });
}

CompileCacheStats CompileCache::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void CompileCache::worker() {
  std::unique_lock lk(mu_);
  while (!stop_) {
    if (queue_.empty()) {
      cv_.wait(lk);
      continue;
    }
    Job job = std::move(queue_.front());
    queue_.pop_front();
    queue_bytes_ -= job.wasm.size();
    busy_ = true;
    lk.unlock();
    Status st = produce(job);
    lk.lock();
    busy_ = false;
    pending_.erase(job.key);
    if (st.ok()) {
      stats_.built++;
    } else {
      stats_.build_failures++;
      stats_.last_failure = st.error().message;
      given_up_.insert(job.key);
    }
    cv_.notify_all();
  }
}

Status CompileCache::produce(const Job& job) {
  // The module goes in through a socket (send() with MSG_NOSIGNAL: a producer that died
  // early must not SIGPIPE the application), the code comes out through a pipe. The
  // producer is started like an extension: a pidfd from the start, no descriptor of ours
  // but these two, signals at their defaults.
  int in[2], out[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0) {
    return make_error(Code::Internal, std::string("socketpair: ") + strerror(errno));
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    return make_error(Code::Internal, std::string("pipe: ") + strerror(errno));
  }
  SpawnSpec spec;
  spec.argv = {binary_, "--log-level", "off", "compile", "--max-memory-mb", std::to_string(job.max_memory_mb),
               "--lazy-compilation", job.engine.lazy_compilation ? "on" : "off",
               "--guard-regions", std::string(to_string(job.engine.guard_regions)),
               "--sandbox", sandbox_.enabled ? "on" : "off"};
  if (sandbox_.uid >= 0 && sandbox_.gid >= 0) {
    spec.argv.insert(spec.argv.end(), {"--sandbox-user", std::to_string(sandbox_.uid) + ":" + std::to_string(sandbox_.gid)});
  }
  // Its stderr: a pipe of ours, read for the error message (an fd 2 left closed would be
  // taken by the first file it opens).
  int err[2];
  if (pipe2(err, O_CLOEXEC) != 0) {
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    return make_error(Code::Internal, std::string("pipe: ") + strerror(errno));
  }
  spec.fds = {{in[0], 0}, {out[1], 1}, {err[1], 2}};
  auto child = spawn_process(spec);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  fcntl(err[0], F_SETFL, fcntl(err[0], F_GETFL) | O_NONBLOCK);
  // What it said on stderr, at most 4 KiB, read once it has exited.
  auto stderr_text = [fd = err[0]] {
    std::string t;
    char b[4096];
    ssize_t n = read(fd, b, sizeof b);
    if (n > 0) t.assign(b, static_cast<size_t>(n));
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
    close(fd);
    return t;
  };
  if (!child.ok()) {
    close(in[1]);
    close(out[0]);
    close(err[0]);
    return make_error(Code::Internal, "cannot start " + binary_ + ": " + child.error().message);
  }
  {
    std::lock_guard lk(mu_);
    running_pidfd_ = child->pidfd;
    if (stop_) signal_child(child->pidfd, SIGKILL);  // destroyed while it started
  }
  // It reads all of its input before it writes: no deadlock writing first.
  const bool sent = send_all(in[1], job.wasm.data(), job.wasm.size());
  close(in[1]);
  fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK);
  std::string code;
  bool too_big = false, timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + build_timeout_;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;  // back to the deadline
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;  // end of its output (or an error: the status below decides)
    code.append(buf, static_cast<size_t>(n));
    if (code.size() > kMaxEntryBytes + 8) {
      too_big = true;
      break;
    }
  }
  close(out[0]);
  // Its exit, by the same deadline: one that closed its output and lingers would
  // otherwise hold this thread (and every build after it) in waitid.
  for (pollfd pp{child->pidfd, POLLIN, 0}; !timed_out && !too_big;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    const int r = poll(&pp, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r > 0 || (r < 0 && errno != EINTR)) break;
  }
  if (timed_out || too_big) signal_child(child->pidfd, SIGKILL);
  siginfo_t info{};
  const int w = waitid(static_cast<idtype_t>(3 /* P_PIDFD */), static_cast<id_t>(child->pidfd), &info, WEXITED);
  {
    std::lock_guard lk(mu_);
    running_pidfd_ = -1;
  }
  close(child->pidfd);
  const std::string said = stderr_text();
  if (timed_out) {
    return make_error(Code::Timeout, "compiling took over " + std::to_string(build_timeout_.count()) + " ms (killed)");
  }
  if (too_big) return make_error(Code::ResourceExhausted, "the code is over 256 MiB");
  // Only a clean exit counts (no status, as when someone else reaped it, is a failure),
  // and only output whose length prefix matches: a producer that died half-way through
  // writing leaves no entry.
  if (w != 0 || info.si_code != CLD_EXITED || info.si_status != 0 || !sent) {
    return make_error(Code::Internal, "airlock-extension compile failed (" +
                                          (w != 0 ? std::string("no exit status") :
                                           info.si_code == CLD_EXITED ? "exit status " + std::to_string(info.si_status)
                                                                      : "killed by signal " + std::to_string(info.si_status)) +
                                          ")" + (said.empty() ? "" : ": " + said));
  }
  uint64_t declared = 0;
  if (code.size() < 8 || (std::memcpy(&declared, code.data(), 8), declared != code.size() - 8) || declared == 0) {
    return make_error(Code::Internal, "airlock-extension compile wrote " + std::to_string(code.size()) +
                                          " bytes, not a length and that much code");
  }
  code.erase(0, 8);
  // Written whole under a temporary name, then renamed: a reader sees all or nothing.
  std::string file = kMagic + job.key;
  const uint64_t len = code.size();
  file.append(reinterpret_cast<const char*>(&len), 8);
  file += sha256(code);
  file += code;
  const std::string path = dir_ + "/" + job.key + ".code", tmp = path + ".tmp" + std::to_string(child->pid);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(file.data(), static_cast<std::streamsize>(file.size()));
    if (!f) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return make_error(Code::Internal, "cannot write " + tmp);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error(Code::Internal, "cannot write " + path + ": " + ec.message());
  return ok_status();
}

}  // namespace airlock::detail
