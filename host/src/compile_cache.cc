#include "compile_cache.h"

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

namespace airlock::detail {

namespace {

constexpr size_t kMaxQueued = 4096;
constexpr uint64_t kMaxEntryBytes = 256ull << 20;  // the code of a module; larger is refused
constexpr auto kBuildTimeout = std::chrono::minutes(2);
constexpr char kMagic[] = "AIRLOCK-CODE-1\n";  // file format; 15 bytes
constexpr size_t kMagicLen = sizeof kMagic - 1;
constexpr size_t kHeaderLen = kMagicLen + 64 + 8 + 32;  // magic, key (hex), code length, SHA-256 of the code

std::string sha256(std::string_view a, std::string_view b = {}) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_MD_CTX* c = EVP_MD_CTX_new();
  EVP_DigestInit_ex(c, EVP_sha256(), nullptr);
  EVP_DigestUpdate(c, a.data(), a.size());
  EVP_DigestUpdate(c, b.data(), b.size());
  EVP_DigestFinal_ex(c, md, &n);
  EVP_MD_CTX_free(c);
  return std::string(reinterpret_cast<char*>(md), n);
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

CompileCache::CompileCache(std::string dir, std::string extension_binary, bool sandbox)
    : dir_(std::move(dir)), binary_(std::move(extension_binary)), binary_identity_(identity_of(binary_)), sandbox_(sandbox) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  thread_ = std::thread([this] { worker(); });
}

CompileCache::~CompileCache() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    queue_.clear();
    if (running_pid_ > 0) kill(running_pid_, SIGKILL);  // our child, not yet reaped
  }
  cv_.notify_all();
  thread_.join();
}

std::string CompileCache::key(std::string_view wasm, uint32_t max_memory_mb, const EngineOptions& e) const {
  const std::string shape = "airlock-code-1|" + binary_identity_ + "|mem=" + std::to_string(max_memory_mb) +
                            "|lazy=" + std::to_string(e.lazy_compilation) + "|guards=" + std::string(to_string(e.guard_regions)) +
                            "|sandbox=" + std::to_string(sandbox_) + "|";
  return hex(sha256(shape, wasm));
}

std::optional<std::string> CompileCache::lookup(const std::string& key) {
  const std::string path = dir_ + "/" + key + ".code";
  std::error_code size_ec;
  const auto size = std::filesystem::file_size(path, size_ec);
  std::ifstream f(path, std::ios::binary);
  if (!f || size_ec) {
    std::lock_guard lk(mu_);
    stats_.misses++;
    return std::nullopt;
  }
  std::string file;
  if (size <= kHeaderLen + kMaxEntryBytes) {  // else: damaged
    file.resize(size);
    if (!f.read(file.data(), static_cast<std::streamsize>(size))) file.clear();
  }
  bool good = file.size() >= kHeaderLen && file.compare(0, kMagicLen, kMagic) == 0 &&
              file.compare(kMagicLen, 64, key) == 0;
  uint64_t len = 0;
  if (good) {
    std::memcpy(&len, file.data() + kMagicLen + 64, 8);
    good = len == file.size() - kHeaderLen &&
           sha256(std::string_view(file).substr(kHeaderLen)) == std::string_view(file).substr(kMagicLen + 72, 32);
  }
  std::lock_guard lk(mu_);
  if (!good) {
    stats_.corrupt++;
    stats_.misses++;
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return std::nullopt;
  }
  file.erase(0, kHeaderLen);
  return file;
}

void CompileCache::build(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine) {
  {
    std::lock_guard lk(mu_);
    if (stop_ || pending_.count(key) || queue_.size() >= kMaxQueued) return;
    pending_.insert(key);
    queue_.push_back({key, std::move(wasm), max_memory_mb, engine});
  }
  cv_.notify_all();
}

void CompileCache::rejected(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine) {
  {
    std::lock_guard lk(mu_);
    stats_.rejected++;
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
    }
    cv_.notify_all();
  }
}

Status CompileCache::produce(const Job& job) {
  // The module goes in through a socket (send() with MSG_NOSIGNAL: a producer that died
  // early must not SIGPIPE the application), the code comes out through a pipe.
  int in[2], out[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0) {
    return make_error(Code::Internal, std::string("socketpair: ") + strerror(errno));
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    return make_error(Code::Internal, std::string("pipe: ") + strerror(errno));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  const std::string mem = std::to_string(job.max_memory_mb);
  std::vector<std::string> args = {binary_, "--log-level", "error", "compile", "--max-memory-mb", mem,
                                   "--lazy-compilation", job.engine.lazy_compilation ? "on" : "off",
                                   "--guard-regions", std::string(to_string(job.engine.guard_regions)),
                                   "--sandbox", sandbox_ ? "on" : "off"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  char* envp[] = {nullptr};  // nothing inherited, as for extensions
  pid_t pid = 0;
  const int err = posix_spawn(&pid, binary_.c_str(), &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (err != 0) {
    close(in[1]);
    close(out[0]);
    return make_error(Code::Internal, "cannot start " + binary_ + ": " + strerror(err));
  }
  {
    std::lock_guard lk(mu_);
    running_pid_ = pid;
  }
  // It reads all of its input before it writes: no deadlock writing first.
  const bool sent = send_all(in[1], job.wasm.data(), job.wasm.size());
  close(in[1]);
  std::string code;
  bool too_big = false, timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + kBuildTimeout;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    code.append(buf, static_cast<size_t>(n));
    if (code.size() > kMaxEntryBytes) {
      too_big = true;
      break;
    }
  }
  close(out[0]);
  {
    std::lock_guard lk(mu_);
    if (timed_out || too_big) kill(pid, SIGKILL);  // our child, not yet reaped
    running_pid_ = 0;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return make_error(Code::Timeout, "compiling took over 2 minutes");
  if (too_big) return make_error(Code::ResourceExhausted, "the code is over 256 MiB");
  if (!sent || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || code.empty()) {
    return make_error(Code::Internal, "airlock-extension compile failed (status " + std::to_string(status) + ")");
  }
  // Written whole under a temporary name, then renamed: a reader sees all or nothing.
  std::string file = kMagic + job.key;
  const uint64_t len = code.size();
  file.append(reinterpret_cast<const char*>(&len), 8);
  file += sha256(code);
  file += code;
  const std::string path = dir_ + "/" + job.key + ".code", tmp = path + ".tmp" + std::to_string(pid);
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
