// SkillSet: many skills over a few extensions, loaded when first called, with a cache of
// loaded skills bounded by size. For a skill server with hundreds of skills:
//
//   airlock::SkillSet set({.extensions = {a, b, c}, .cache_bytes = 64 << 20});
//   set.add_file("resize", "resize.wasm");      // placed now, loaded on its first call
//   auto r = set.call("resize", input);          // loads it into its extension, then calls
//   set.drop("resize");                          // unloaded (memory goes back), still known
//   set.remove("resize");                        // unloaded and forgotten
//
// Placement: a skill goes to the extension with the fewest wasm bytes placed on it, and
// stays there (a restarted extension reloads what it had). The cache holds loaded skills
// while their wasm bytes sum to at most `cache_bytes`; loading one more unloads the least
// recently called ones first, never one with calls in flight. The weight is the module's
// size: a loaded skill's cost in the extension (compiled code, the memory snapshot of its
// instances) grows with it.
//
// Thread-safe and cheap to copy (copies share one set). call() and call_async() may load,
// which blocks the calling thread until the extension has compiled the skill: not from
// a call callback or a service handler (that returns InvalidArgument, never hangs).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/host.h"

namespace airlock {

struct SkillSetOptions {
  std::vector<Extension> extensions;  // where skills go; at least one
  uint64_t cache_bytes = 256ull << 20;  // loaded skills' wasm bytes, at most
};

class SkillSet {
 public:
  explicit SkillSet(SkillSetOptions options);

  // Registers a skill (placed, not loaded). AlreadyExists-like InvalidArgument if the
  // name is taken; InvalidArgument for an empty module or no extensions. The bytes are
  // shared, not copied: many names may share one module.
  Status add(const std::string& name, std::shared_ptr<const std::vector<uint8_t>> wasm,
             std::optional<SkillLimits> limits = {});
  Status add_file(const std::string& name, const std::string& wasm_path, std::optional<SkillLimits> limits = {});

  // Loads the skill if it is not loaded, then calls it. NotFound for an unknown name;
  // a load failure is the call's error.
  CallResult call(std::string_view skill, const Payload& input, const CallOptions& opts = {});
  std::future<CallResult> call_async(std::string_view skill, const Payload& input, const CallOptions& opts = {});

  Status load(std::string_view skill);    // now, not at the first call (a warm start)
  Status drop(std::string_view skill);    // unload; it loads again on its next call
  Status remove(std::string_view skill);  // unload and forget

  std::vector<std::string> skills() const;  // every name added, in order of adding
  std::vector<std::string> cached() const;  // loaded now, most recently called first
  uint64_t cached_bytes() const;
  std::optional<Extension> placement(std::string_view skill) const;

  struct State;

 private:
  std::shared_ptr<State> s_;
};

}  // namespace airlock
