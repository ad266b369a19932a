// The host's on-disk compile cache (HostOptions::compile_cache_dir): a skill's code,
// compiled by V8 to its top tier and serialized, kept in a file named by a SHA-256 of
// everything that shapes that code (the module bytes, the memory limit, the engine
// options, the extension binary). A load finds its entry and sends it along
// (LoadSkill::compiled); the extension's engine takes it instead of compiling when it
// accepts it (V8 checks its own version, flags and CPU features).
//
// Trust: V8 does not check the code itself (a flipped byte in a deserialized module
// runs), so every entry carries a SHA-256 of its code, checked before it is sent: a
// corrupt or foreign file is deleted and rebuilt, never used. Entries are built by
// `airlock-extension compile`, one fresh sandboxed process per module that runs no wasm
// (compile_command.cc), never by a serving extension: a compromised extension could
// otherwise plant code that other extensions would run.
//
// Building runs on one background thread, one producer at a time (bounded CPU: a 32 KB
// skill takes ~70 ms of TurboFan), queued at most kMaxQueued deep; a producer past
// HostOptions::compile_cache_build_timeout is killed and its module given up on.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "airlock/host.h"
#include "airlock/shm/buffer.h"

namespace airlock::detail {

class CompileCache {
 public:
  CompileCache(std::string dir, std::string extension_binary, SandboxOptions sandbox, std::chrono::milliseconds build_timeout);
  ~CompileCache();  // a producer still running is killed

  // The entry's name for these bytes loaded with this memory limit under these options.
  std::string key(std::string_view wasm, uint32_t max_memory_mb, const EngineOptions& engine) const;
  // Its code in a sealed, immutable memfd (to be shared with the extension as it is), if
  // the file is there and intact: the checksum is checked over the memfd's bytes. A
  // damaged file is deleted.
  std::optional<shm::Buffer> lookup(const std::string& key);
  // Builds the entry in the background (once per key: further requests are dropped).
  void build(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine);
  // The extension's engine refused the entry (built for another V8 or other flags):
  // it goes, and is built again.
  void rejected(const std::string& key, std::string wasm, uint32_t max_memory_mb, const EngineOptions& engine);
  void hit();  // an entry sent with a load was used
  void wait_idle();
  CompileCacheStats stats() const;

 private:
  struct Job {
    std::string key, wasm;
    uint32_t max_memory_mb;
    EngineOptions engine;
  };
  void worker();
  Status produce(const Job& job);  // runs airlock-extension compile, writes the entry

  const std::string dir_, binary_, binary_identity_;
  const SandboxOptions sandbox_;
  const std::chrono::milliseconds build_timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::set<std::string> pending_;  // keys queued or being built
  std::set<std::string> given_up_;  // keys whose build failed, or that were refused twice
  std::set<std::string> rebuilt_after_rejection_;
  size_t queue_bytes_ = 0;
  bool busy_ = false, stop_ = false;
  int running_pidfd_ = -1;  // the producer now running
  CompileCacheStats stats_;
  std::thread thread_;
};

}  // namespace airlock::detail
