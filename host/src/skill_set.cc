// SkillSet (airlock/skill_set.h): placement, load on first call, and a size-bounded cache
// of loaded skills. Everything here runs on the callers' threads; the lock is never held
// across a blocking Extension method (a load takes 0.2 ms to 100+ ms).
#include "airlock/skill_set.h"

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>

namespace airlock {

namespace {

enum class Phase : uint8_t { Unloaded, Loading, Loaded, Unloading };

struct Entry {
  std::string name;
  std::shared_ptr<const std::vector<uint8_t>> wasm;
  std::optional<SkillLimits> limits;
  size_t ext = 0;
  Phase phase = Phase::Unloaded;
  uint32_t in_flight = 0;
  uint64_t last_used = 0;
  uint64_t load_attempts = 0;     // so that callers who waited for a failed load get its error
  std::optional<Error> load_error;  // of the last attempt
  bool removed = false;
  uint64_t bytes() const { return wasm->size(); }
};

}  // namespace

struct SkillSet::State {
  SkillSetOptions o;
  mutable std::mutex mu;
  std::condition_variable cv;  // an entry left Loading or Unloading
  std::map<std::string, std::shared_ptr<Entry>, std::less<>> by_name;
  std::vector<std::string> order;
  std::vector<uint64_t> placed_bytes;  // per extension
  uint64_t loaded_bytes = 0;           // Loading and Loaded entries
  uint64_t tick = 0;

  // Loading, unloading and waiting for either need a thread that may block: never the
  // host's I/O thread (the extension's answer arrives there).
  bool on_io_thread() const { return !o.extensions.empty() && o.extensions.front().on_io_thread(); }
  static Error io_thread(std::string_view name) {
    return make_error(Code::InvalidArgument, "skill '" + std::string(name) +
                                                 "' is not loaded, and a SkillSet cannot load from a call callback or "
                                                 "service handler (load() it first, from another thread)");
  }

  Error unknown(std::string_view name) const {
    return make_error(Code::NotFound, "the skill set has no skill '" + std::string(name) + "'");
  }

  // Least recently called loaded skills without calls in flight, until the cache fits
  // (under mu). They are marked Unloading; the caller unloads them without the lock.
  std::vector<std::shared_ptr<Entry>> evict_for(const Entry& keep) {
    std::vector<std::shared_ptr<Entry>> out;
    while (loaded_bytes > o.cache_bytes) {
      std::shared_ptr<Entry> lru;
      for (auto& [n, e] : by_name) {
        if (e.get() == &keep || e->phase != Phase::Loaded || e->in_flight) continue;
        if (!lru || e->last_used < lru->last_used) lru = e;
      }
      if (!lru) break;  // everything else is busy: over budget until calls end
      lru->phase = Phase::Unloading;
      loaded_bytes -= lru->bytes();
      out.push_back(lru);
    }
    return out;
  }

  void unload_all(std::vector<std::shared_ptr<Entry>>& victims) {  // without mu
    // An unload fails only when the extension is down, and then its skills are gone anyway
    // (a restart reloads only what it still has).
    for (auto& v : victims) (void)o.extensions[v->ext].unload_skill(v->name);
    std::lock_guard lk(mu);
    for (auto& v : victims) v->phase = Phase::Unloaded;
    cv.notify_all();
  }

  // The entry, loaded, with one more call in flight (so that it cannot be evicted before
  // the call is sent). `count` false: load only.
  Result<std::shared_ptr<Entry>> acquire(std::string_view name, bool count) {
    std::unique_lock lk(mu);
    for (;;) {
      auto it = by_name.find(name);
      if (it == by_name.end()) return unknown(name);
      auto e = it->second;
      if (e->phase == Phase::Loaded) {
        if (count) e->in_flight++;
        e->last_used = ++tick;
        return e;
      }
      if (on_io_thread()) return io_thread(name);
      if (e->phase != Phase::Unloaded) {
        const auto seen = e->load_attempts;
        cv.wait(lk);
        if (e->load_attempts != seen && e->phase == Phase::Unloaded && e->load_error) return *e->load_error;
        continue;
      }
      e->phase = Phase::Loading;
      e->load_attempts++;
      loaded_bytes += e->bytes();
      auto victims = evict_for(*e);
      lk.unlock();
      unload_all(victims);
      // The skill set's copy of the module is the host's only one (Extension::load keeps a
      // reference for restarts instead of a copy: 33 KB less per loaded sample skill).
      const std::string_view bytes(reinterpret_cast<const char*>(e->wasm->data()), e->wasm->size());
      Status st = o.extensions[e->ext].load(e->name, e->wasm, bytes, "", e->limits);
      lk.lock();
      cv.notify_all();
      if (!st.ok()) {
        e->phase = Phase::Unloaded;
        loaded_bytes -= e->bytes();
        e->load_error = st.error();
        return st.error();
      }
      e->load_error.reset();
      e->phase = Phase::Loaded;
      if (e->removed) {  // removed while loading: undo
        e->phase = Phase::Unloading;
        loaded_bytes -= e->bytes();
        std::vector<std::shared_ptr<Entry>> v{e};
        lk.unlock();
        unload_all(v);
        return unknown(name);
      }
      if (count) e->in_flight++;
      e->last_used = ++tick;
      return e;
    }
  }

  void release(Entry& e) {
    std::lock_guard lk(mu);
    if (e.in_flight) e.in_flight--;
  }

  // Unloads the entry once no load or unload of it is under way.
  Status unload(std::string_view name, bool forget) {
    std::unique_lock lk(mu);
    auto it = by_name.find(name);
    if (it == by_name.end()) return unknown(name);
    auto e = it->second;
    if (on_io_thread()) {
      return make_error(Code::InvalidArgument, "skill '" + e->name + "': a SkillSet cannot unload from a call callback or service handler");
    }
    if (forget) {
      e->removed = true;
      by_name.erase(it);
      order.erase(std::find(order.begin(), order.end(), e->name));
      placed_bytes[e->ext] -= e->bytes();
    }
    cv.wait(lk, [&] { return e->phase == Phase::Unloaded || e->phase == Phase::Loaded; });
    if (e->phase == Phase::Unloaded) return ok_status();
    e->phase = Phase::Unloading;
    loaded_bytes -= e->bytes();
    lk.unlock();
    Status st = o.extensions[e->ext].unload_skill(e->name);
    lk.lock();
    e->phase = Phase::Unloaded;
    cv.notify_all();
    return st;
  }
};

SkillSet::SkillSet(SkillSetOptions options) : s_(std::make_shared<State>()) {
  s_->o = std::move(options);
  s_->placed_bytes.assign(s_->o.extensions.size(), 0);
}

Status SkillSet::add(const std::string& name, std::shared_ptr<const std::vector<uint8_t>> wasm,
                     std::optional<SkillLimits> limits) {
  if (s_->o.extensions.empty()) return make_error(Code::InvalidArgument, "the skill set has no extensions");
  if (name.empty()) return make_error(Code::InvalidArgument, "a skill needs a name");
  if (!wasm || wasm->empty()) return make_error(Code::InvalidArgument, "skill '" + name + "': empty module");
  std::lock_guard lk(s_->mu);
  if (s_->by_name.count(name)) return make_error(Code::InvalidArgument, "the skill set already has a skill '" + name + "'");
  auto e = std::make_shared<Entry>();
  e->name = name;
  e->wasm = std::move(wasm);
  e->limits = limits;
  e->ext = static_cast<size_t>(std::min_element(s_->placed_bytes.begin(), s_->placed_bytes.end()) - s_->placed_bytes.begin());
  s_->placed_bytes[e->ext] += e->bytes();
  s_->by_name.emplace(name, e);
  s_->order.push_back(name);
  return ok_status();
}

Status SkillSet::add_file(const std::string& name, const std::string& wasm_path, std::optional<SkillLimits> limits) {
  std::ifstream f(wasm_path, std::ios::binary);
  if (!f) return make_error(Code::NotFound, "skill '" + name + "': cannot read '" + wasm_path + "'");
  auto bytes = std::make_shared<std::vector<uint8_t>>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return add(name, std::move(bytes), limits);
}

CallResult SkillSet::call(std::string_view skill, const Payload& input, const CallOptions& opts) {
  return call_async(skill, input, opts).get();
}

std::future<CallResult> SkillSet::call_async(std::string_view skill, const Payload& input, const CallOptions& opts) {
  auto p = std::make_shared<std::promise<CallResult>>();
  auto f = p->get_future();
  auto e = s_->acquire(skill, true);
  if (!e.ok()) {
    p->set_value(e.error());
    return f;
  }
  auto entry = *e;
  auto s = s_;
  s_->o.extensions[entry->ext].call_async(skill, input, opts, [s, entry, p](CallResult r) {
    s->release(*entry);
    p->set_value(std::move(r));
  });
  return f;
}

Status SkillSet::load(std::string_view skill) {
  auto e = s_->acquire(skill, false);
  if (!e.ok()) return e.error();
  return ok_status();
}

Status SkillSet::drop(std::string_view skill) { return s_->unload(skill, false); }
Status SkillSet::remove(std::string_view skill) { return s_->unload(skill, true); }

std::vector<std::string> SkillSet::skills() const {
  std::lock_guard lk(s_->mu);
  return s_->order;
}

std::vector<std::string> SkillSet::cached() const {
  std::lock_guard lk(s_->mu);
  std::vector<std::pair<uint64_t, std::string>> v;
  for (const auto& [n, e] : s_->by_name) {
    if (e->phase == Phase::Loaded) v.emplace_back(e->last_used, n);
  }
  std::sort(v.rbegin(), v.rend());
  std::vector<std::string> out;
  for (auto& [t, n] : v) out.push_back(std::move(n));
  return out;
}

uint64_t SkillSet::cached_bytes() const {
  std::lock_guard lk(s_->mu);
  return s_->loaded_bytes;
}

std::optional<Extension> SkillSet::placement(std::string_view skill) const {
  std::lock_guard lk(s_->mu);
  auto it = s_->by_name.find(skill);
  if (it == s_->by_name.end()) return std::nullopt;
  return s_->o.extensions[it->second->ext];
}

}  // namespace airlock
