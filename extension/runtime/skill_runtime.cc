#include "runtime/skill_runtime.h"

#include <spdlog/spdlog.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <fstream>
#include <iterator>

#include "runtime/call_state.h"
#include "runtime/watchdog.h"

namespace airlock::runtime {

namespace {
constexpr size_t kPoolMax = 16;  // warm instances kept per skill (a 9-deep recursion needs 9)
// Past those, a burst's instances are kept as spares (Reset mode): their pages given
// back at once, restored onto zero when taken (~2 µs instead of a ~45 µs instantiation),
// and dropped once idle for kSpareIdle, or when the extension's instance cap needs room.
constexpr size_t kSparePoolMax = 1024;
constexpr auto kSpareIdle = std::chrono::seconds(30);
constexpr size_t kWindowPoolMax = 2;  // ... of its window variant (each reserves the window's pages)
const engine::FuncType kSkillFuncType{{engine::ValType::I32, engine::ValType::I32}, {engine::ValType::I32}};

Error skill_error(const std::string& skill, Code code, const std::string& msg, TrapKind trap = TrapKind::None) {
  return make_error(code, "skill '" + skill + "': " + msg, trap);
}
// malloc fails once the next chunk no longer fits, usually a little below the maximum.
constexpr uint32_t kNearMaxPages = 32;  // 2 MiB
constexpr size_t kReclaimBytes = 16u << 20;  // an instance with this much memory is not pooled
constexpr size_t kIdleReclaimBytes = 1u << 20;  // dropped since the last GC: one runs once no call is in flight
// ... and one runs at any time past this many dropped instances: with guard regions each
// holds 10 GiB of address space until collected (1,024: 10 TiB of the 128 TiB).
constexpr uint64_t kReclaimInstances = 1024;
}  // namespace

Binding& binding_of(engine::Caller& caller) { return *static_cast<Binding*>(caller.instance().user_data); }

SkillRuntime::SkillRuntime(uv_loop_t* loop, engine::EngineConfig config, RuntimeLimits limits)
    : loop_(loop), limits_(limits), usage_(std::make_unique<RuntimeUsage>()), engine_(engine::create_v8_engine(config)) {
  auto* eng = engine_.get();
  watchdog_ = std::make_unique<Watchdog>([eng] { eng->terminate(); });
  for (auto& f : abi_imports()) engine_->define(std::move(f));
  for (auto& f : wasi_imports()) engine_->define(std::move(f));
}

SkillRuntime::~SkillRuntime() {
  cancel_all(make_error(Code::Unavailable, "skill runtime shutting down"));
  skills_.clear();
  watchdog_.reset();
}

// A watchdog that fired just as the wasm returned leaves a termination pending for
// whatever runs next on the isolate: withdraw it.
void SkillRuntime::disarm_watchdog() {
  if (watchdog_->disarm()) engine_->cancel_termination();
}

// Idle instances are only a cache: the spares go first (the longest idle first), then the
// warm ones, until `enough()`.
void SkillRuntime::evict_idle(const std::function<bool()>& enough) {
  for (auto& [n, s] : skills_) {
    while (!s->spares.empty() && !enough()) s->spares.pop_front();
  }
  for (auto& [n, s] : skills_) {
    while (!s->pool.empty() && !enough()) s->pool.pop_back();
    while (!s->window_pool.empty() && !enough()) s->window_pool.pop_back();
  }
}

bool SkillRuntime::within_memory_limit() {
  const auto within = [this] { return usage_->memory_bytes <= limits_.max_memory_bytes; };
  if (!within()) evict_idle(within);
  return within();
}

Error SkillRuntime::over_memory(const std::string& skill) const {
  return skill_error(skill, Code::ResourceExhausted,
                     "the extension's skills would hold " + std::to_string(usage_->memory_bytes >> 20) +
                         " MiB of linear memory, above its limit of " + std::to_string(limits_.max_memory_bytes >> 20) +
                         " MiB (ExtensionOptions::max_memory_mb)");
}

void SkillRuntime::log(int level, std::string_view skill, std::string_view line) {
  if (log_sink_) {
    log_sink_(level, skill, line);
  } else {
    spdlog::log(static_cast<spdlog::level::level_enum>(level), "[skill {}] {}", skill, line);
  }
}

// ---- loading --------------------------------------------------------------------

namespace {
// The runtime's imports and their types, checked against the module before compiling
// (the engine itself only links by name).
const std::unordered_map<std::string, engine::FuncType>& provided_imports();
}  // namespace

Status SkillRuntime::load_file(const std::string& name, const std::string& path, const SkillLimits& limits) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return skill_error(name, Code::NotFound, "cannot read '" + path + "'");
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(f), {}};
  return load(name, bytes, limits);
}

Status SkillRuntime::load(const std::string& name, std::span<const uint8_t> wasm, const SkillLimits& limits,
                          std::span<const uint8_t> compiled, bool* used_cache) {
  auto p = prepare(name, wasm, limits);
  if (!p.ok()) return p.take_error();
  auto& [skill, bytes] = *p;
  bool used = false;
  auto module = engine_->compile(bytes, compiled, &used);
  if (used_cache) *used_cache = used;
  if (!module.ok()) return skill_error(name, Code::InvalidArgument, module.error().message);
  skill->module = std::move(module.value());

  // Instantiate once now: proves linking and _initialize, and warms the pool.
  if (auto st = add_instance(*skill); !st.ok()) return st;
  if (auto old = skills_.find(name); old != skills_.end()) drop_idle(*old->second);
  skills_[name] = std::move(skill);  // replaces a previous version; its calls keep the old one
  return ok_status();
}

Result<std::vector<uint8_t>> SkillRuntime::compile_for_cache(std::span<const uint8_t> wasm, const SkillLimits& limits) {
  auto p = prepare("module", wasm, limits);
  if (!p.ok()) return p.take_error();
  return engine_->compile_for_cache(p->second);
}

// Everything a load checks and rewrites before the engine compiles: the ABI, the
// imports, the limits patched into the bytes. The same for a compile-cache entry, so
// that its code is for exactly the bytes a load compiles.
Result<std::pair<std::shared_ptr<SkillRuntime::Skill>, std::vector<uint8_t>>> SkillRuntime::prepare(
    const std::string& name, std::span<const uint8_t> wasm, const SkillLimits& limits) {
  if (name.empty()) return make_error(Code::InvalidArgument, "skill name is empty");
  auto parsed = parse_wasm(wasm);
  if (!parsed.ok()) return skill_error(name, Code::InvalidArgument, "invalid wasm: " + parsed.error().message);
  auto skill = std::make_shared<Skill>();
  skill->name = name;
  skill->limits = limits;
  skill->info = std::move(parsed.value());
  const WasmInfo& info = skill->info;

  auto need_export = [&](const char* exp, WasmImport::Kind kind, const engine::FuncType* type) -> Status {
    const WasmExport* e = info.find_export(exp);
    if (!e || e->kind != kind) {
      return skill_error(name, Code::InvalidArgument,
                         std::string("not an Airlock skill: missing export '") + exp + "' (see docs/SKILL_ABI.md)");
    }
    if (type && !(e->type == *type)) {
      return skill_error(name, Code::InvalidArgument,
                         std::string("export '") + exp + "' has type " + e->type.to_string() + ", expected " +
                             type->to_string());
    }
    return ok_status();
  };
  using VT = engine::ValType;
  const engine::FuncType abi_t{{}, {VT::I32}}, alloc_t{{VT::I32}, {VT::I32}};
  for (auto st : {need_export("memory", WasmImport::Kind::Memory, nullptr),
                  need_export("airlock_abi_version", WasmImport::Kind::Func, &abi_t),
                  need_export("airlock_alloc", WasmImport::Kind::Func, &alloc_t)}) {
    if (!st.ok()) return st.take_error();
  }

  bool suspends = false;
  for (const auto& imp : info.imports) {
    std::string full = imp.module + "." + imp.name;
    auto it = provided_imports().find(full);
    if (imp.kind != WasmImport::Kind::Func || it == provided_imports().end()) {
      return skill_error(name, Code::InvalidArgument,
                         "import " + full + " is not provided by the runtime (no filesystem, network or "
                         "other host access beyond docs/SKILL_ABI.md)");
    }
    if (!(imp.type == it->second)) {
      return skill_error(name, Code::InvalidArgument,
                         "import " + full + " has type " + imp.type.to_string() + ", expected " +
                             it->second.to_string());
    }
    if (full == "airlock.wait" || full == "airlock.call") suspends = true;
  }
  skill->asyncified = info.find_export("asyncify_start_unwind") && info.find_export("asyncify_stop_unwind") &&
                      info.find_export("asyncify_start_rewind") && info.find_export("asyncify_stop_rewind") &&
                      info.find_export("airlock_async_buffer");
  if (skill->asyncified) {
    // The names alone prove nothing (a module can export stubs); the runtime also checks
    // at every suspension that the skill really unwound (abi_imports.cc). Types first.
    const engine::FuncType ptr_t{{VT::I32}, {}}, none_t{{}, {}}, buf_t{{}, {VT::I32}};
    for (auto st : {need_export("asyncify_start_unwind", WasmImport::Kind::Func, &ptr_t),
                    need_export("asyncify_stop_unwind", WasmImport::Kind::Func, &none_t),
                    need_export("asyncify_start_rewind", WasmImport::Kind::Func, &ptr_t),
                    need_export("asyncify_stop_rewind", WasmImport::Kind::Func, &none_t),
                    need_export("airlock_async_buffer", WasmImport::Kind::Func, &buf_t)}) {
      if (!st.ok()) return st.take_error();
    }
  }
  if (suspends && !skill->asyncified) {
    return skill_error(name, Code::InvalidArgument,
                       "imports airlock.wait/airlock.call but was not built with asyncify "
                       "(build it with airlock_add_skill(), or run wasm-opt --asyncify "
                       "--pass-arg=asyncify-imports@airlock.wait,airlock.call)");
  }
  skill->has_initialize = info.find_export("_initialize") != nullptr;

  if (limits.max_memory_mb == 0 || limits.max_memory_mb > 4096) {
    return skill_error(name, Code::InvalidArgument, "max_memory_mb must be 1..4096");
  }
  skill->max_pages = limits.max_memory_mb * 16;  // 64 KiB pages
  auto limited = limit_memory(wasm, skill->max_pages);
  if (!limited.ok()) return skill_error(name, limited.error().code, limited.error().message);
  limited = limit_tables(limited.value(), limits.max_table_entries);
  if (!limited.ok()) return skill_error(name, limited.error().code, limited.error().message);
  return std::pair{std::move(skill), std::move(limited.value())};
}

Status SkillRuntime::unload(const std::string& name) {
  auto it = skills_.find(name);
  if (it == skills_.end()) return make_error(Code::NotFound, "skill '" + name + "' is not loaded");
  drop_idle(*it->second);
  skills_.erase(it);
  return ok_status();
}

// A skill that is gone from skills_ may live on in its parked calls; its idle instances
// (and any input they keep mapped) must not.
void SkillRuntime::drop_idle(Skill& s) {
  s.pool.clear();
  s.spares.clear();
  s.window_pool.clear();
}

std::vector<std::string> SkillRuntime::skills() const {
  std::vector<std::string> out;
  for (const auto& [n, s] : skills_) out.push_back(n);
  std::sort(out.begin(), out.end());
  return out;
}

bool SkillRuntime::has_skill(std::string_view name) const { return skills_.count(std::string(name)) > 0; }

RuntimeStats SkillRuntime::stats() const {
  RuntimeStats s = stats_;
  s.memory_bytes = usage_->memory_bytes;
  s.instances = usage_->instances;
  s.in_flight = calls_.size();
  s.suspended = 0;
  for (const auto& [id, c] : calls_) s.suspended += c->state == Call::State::Suspended;
  return s;
}

// ---- instances --------------------------------------------------------------------

// Adds a fresh instance to the skill's pool: instantiate, check the ABI version, run
// _initialize, and snapshot the memory for FreshState::Reset.
Status SkillRuntime::add_instance(Skill& s) {
  auto p = new_instance(s, *s.module);
  if (!p.ok()) return p.take_error();
  if (s.limits.fresh == FreshState::Reset) {
    auto mem = p->inst->memory();
    if (!s.snapshot) s.snapshot = std::make_shared<const MemorySnapshot>(mem);
    p->snapshot = s.snapshot;
  }
  pool(s, std::move(p.value()));
  return ok_status();
}

void SkillRuntime::pool(Skill& s, PooledInstance p) {
  p.idle_since = Clock::now();
  p.account();
  s.pool.push_back(std::move(p));
}

size_t SkillRuntime::trim_idle(std::chrono::steady_clock::duration idle_for) {
  const auto before = Clock::now() - idle_for;
  size_t n = 0;
  for (auto& [name, s] : skills_) {
    // Spares a burst left, idle long enough: gone (taken from the back: the front is
    // the longest idle).
    while (!s->spares.empty() && s->spares.front().idle_since <= Clock::now() - kSpareIdle) s->spares.pop_front();
    for (auto& p : s->pool) {
      if (p.trimmed || !p.snapshot || !p.inst || p.idle_since > before) continue;
      auto mem = p.inst->memory();
      if (madvise(mem.data(), mem.size(), MADV_DONTNEED) != 0) continue;
      p.trimmed = true;
      ++n;
    }
  }
  return n;
}

// Instantiates `module` (the skill's, or its variant with room for an input window),
// checks the ABI version and runs _initialize, all under the watchdog.
Result<PooledInstance> SkillRuntime::new_instance(Skill& s, engine::Module& module) {
  // Idle instances make room for a call's before it is refused.
  const auto room = [this] { return usage_->instances < limits_.max_instances; };
  if (!room()) evict_idle(room);
  if (!room()) {
    return skill_error(s.name, Code::ResourceExhausted,
                       std::to_string(usage_->instances) + " live instances already (the extension's limit)");
  }
  PooledInstance p;
  // The module's start function runs inside instantiate(): the watchdog covers it too
  // (a start function that loops used to wedge the extension's loop for good).
  const auto deadline = Clock::now() + std::chrono::milliseconds(s.limits.timeout_ms);
  watchdog_->arm(deadline);
  auto inst = module.instantiate();
  disarm_watchdog();
  if (!inst.ok()) {
    const bool timed_out = inst.error().code == Code::Timeout;
    return skill_error(s.name, inst.error().code,
                       timed_out ? "its start function exceeded the time limit of " + std::to_string(s.limits.timeout_ms) + " ms"
                                 : inst.error().message);
  }
  p.inst = std::move(inst.value());
  p.share = MemoryShare(usage_.get());
  p.account();
  if (!within_memory_limit()) {
    p.drop();
    return over_memory(s.name);
  }
  p.binding = std::make_unique<Binding>(Binding{this, &s, nullptr});
  p.inst->user_data = p.binding.get();
  stats_.instantiations++;
  watchdog_->arm(deadline);
  auto ver = p.inst->call("airlock_abi_version", {});
  Status init = ok_status();
  if (ver.ok() && s.has_initialize) {
    auto r = p.inst->call("_initialize", {});
    if (!r.ok()) init = r.take_error();
  }
  disarm_watchdog();
  if (!ver.ok()) return skill_error(s.name, ver.error().code, "airlock_abi_version: " + ver.error().message);
  if (ver->empty() || (*ver)[0].i32 != 1) {
    return skill_error(s.name, Code::InvalidArgument,
                       "unsupported skill ABI version " + std::to_string(ver->empty() ? 0 : (*ver)[0].i32) +
                           " (this runtime speaks version 1)");
  }
  if (!init.ok()) return skill_error(s.name, init.error().code, "_initialize failed: " + init.error().message);
  return p;
}

// ---- calls ------------------------------------------------------------------------

uint64_t SkillRuntime::call(std::string_view skill, InputView input, const CallOptions& opts, CallDone done) {
  return start_call(skill, std::string(), std::move(input), opts, std::move(done));
}

uint64_t SkillRuntime::call(std::string_view skill, std::string input, const CallOptions& opts, CallDone done) {
  return start_call(skill, std::move(input), InputView{}, opts, std::move(done));
}

uint64_t SkillRuntime::start_call(std::string_view skill_name, std::string input, InputView view,
                                  const CallOptions& opts, CallDone done) {
  uint64_t id = next_call_id_++;
  stats_.calls++;
  auto it = skills_.find(std::string(skill_name));
  if (it == skills_.end()) {
    done(make_error(Code::NotFound, "skill '" + std::string(skill_name) + "' is not loaded"));
    return id;
  }
  auto& skill = it->second;
  const WasmExport* e = skill->info.find_export(opts.func);
  if (!e || e->kind != WasmImport::Kind::Func) {
    done(skill_error(skill->name, Code::NotFound, "no function '" + opts.func + "'"));
    return id;
  }
  if (!(e->type == kSkillFuncType)) {
    done(skill_error(skill->name, Code::InvalidArgument,
                     "function '" + opts.func + "' has type " + e->type.to_string() + ", expected " +
                         kSkillFuncType.to_string()));
    return id;
  }
  if (calls_.size() >= limits_.max_calls_in_flight) {
    done(skill_error(skill->name, Code::ResourceExhausted,
                     std::to_string(calls_.size()) + " calls in flight in this extension already (its limit)"));
    return id;
  }
  auto c = std::make_unique<Call>();
  c->id = id;
  c->parent_id = opts.parent_id;
  c->skill = skill;
  c->func = opts.func;
  c->input = std::move(input);
  c->input_view = std::move(view);
  c->written_output = opts.written_output;
  c->done = std::move(done);
  c->timeout_ms = skill->limits.timeout_ms;
  if (opts.timeout_ms && opts.timeout_ms < c->timeout_ms) c->timeout_ms = opts.timeout_ms;
  c->deadline = Clock::now() + std::chrono::milliseconds(c->timeout_ms);
  Call& ref = *c;
  calls_.emplace(id, std::move(c));
  start(ref);
  return id;
}

void SkillRuntime::start(Call& c) {
  Skill& s = *c.skill;
  if (c.input_view.fd >= 0 && c.input_view.bytes.size() >= limits_.map_inputs_from_bytes) return start_mapped(c);
  if (s.pool.empty() && !s.spares.empty()) {
    s.pool.push_back(std::move(s.spares.back()));  // trimmed: restored onto zero below
    s.spares.pop_back();
  }
  if (s.pool.empty()) {
    if (auto st = add_instance(s); !st.ok()) return finish(c, st.take_error());
  }
  c.inst = std::move(s.pool.back());
  s.pool.pop_back();
  if (c.inst.trimmed) {
    c.inst.snapshot->restore_onto_zero(c.inst.inst->memory().first(c.inst.snapshot->size()));
    c.inst.trimmed = false;
  }
  c.inst.binding->call = &c;

  const std::span<const uint8_t> in =
      c.input_view.keep || !c.input_view.bytes.empty()
          ? c.input_view.bytes
          : std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.input.data()), c.input.size());
  if (in.size() > 0x7fffffffu) return finish(c, make_error(Code::ResourceExhausted, "input too large"));
  const auto len = static_cast<int32_t>(in.size());
  c.in_len = len;
  watchdog_->arm(c.deadline);
  auto p = c.inst.inst->call("airlock_alloc", std::array{engine::Value::from_i32(len)});
  disarm_watchdog();
  if (!p.ok() || p->empty() || (len > 0 && (*p)[0].i32 == 0)) {
    Error e = p.ok() ? make_error(Code::ResourceExhausted,
                                  "cannot allocate " + std::to_string(len) + " bytes of input in the skill (limit " +
                                      std::to_string(s.limits.max_memory_mb) + " MiB)")
                     : p.take_error();
    c.inst.drop();
    return finish(c, skill_error(s.name, e.code, e.message));
  }
  c.in_ptr = (*p)[0].i32;
  c.inst.account();  // the input may have grown it
  if (!within_memory_limit()) {
    c.inst.drop();
    return finish(c, over_memory(s.name));
  }
  auto mem = c.inst.inst->memory();
  if (static_cast<uint64_t>(static_cast<uint32_t>(c.in_ptr)) + in.size() > mem.size()) {
    c.inst.drop();
    return finish(c, skill_error(s.name, Code::Internal, "airlock_alloc returned an out-of-bounds pointer"));
  }
  if (!in.empty()) std::memcpy(mem.data() + static_cast<uint32_t>(c.in_ptr), in.data(), in.size());
  std::string().swap(c.input);  // the bytes live in the instance now
  c.input_view = {};
  run(c);
}

// A large shared input, mapped instead of copied (input_window.h): an instance of the
// skill's variant whose memory maximum has room for the window on top of the skill's
// own limit; its memory grows by the window's pages (once: a reset instance keeps them,
// zero, in window_pool), and the memfd's pages go over them. The skill gets (ptr, len)
// as always. O(1) in the input's size: no copy, no fault.
void SkillRuntime::start_mapped(Call& c) {
  Skill& s = *c.skill;
  constexpr uint64_t kOsPage = 4096, kWasmPage = 65536;
  const InputView& v = c.input_view;
  const uint64_t lead = v.file_offset % kOsPage;  // mmap maps whole OS pages
  const uint64_t span = lead + v.bytes.size();
  const uint64_t need = (span + kWasmPage - 1) / kWasmPage;
  if (v.bytes.size() > 0x7fffffffu || s.max_pages + need > 65536) {
    return finish(c, skill_error(s.name, Code::ResourceExhausted,
                                 "a shared input of " + std::to_string(v.bytes.size() >> 20) +
                                     " MiB does not fit in a 4 GiB wasm32 memory beside the skill's limit of " +
                                     std::to_string(s.limits.max_memory_mb) + " MiB"));
  }
  // Windows come in powers of two of pages (one variant, one pool, for inputs of 33 to
  // 64 MiB, say), unless that would not fit: the pages past the input stay zero.
  const uint64_t pages = std::min<uint64_t>(std::bit_ceil(need), 65536 - s.max_pages);
  if (!s.window_module || s.window_module_pages != pages) {
    auto bytes = limit_memory(s.module->wire_bytes(), s.max_pages, static_cast<uint32_t>(pages));
    if (!bytes.ok()) return finish(c, skill_error(s.name, bytes.error().code, bytes.error().message));
    auto m = engine_->compile(bytes.value());
    if (!m.ok()) return finish(c, skill_error(s.name, Code::Internal, "input window variant: " + m.error().message));
    s.window_module = std::move(m.value());
    s.window_module_pages = static_cast<uint32_t>(pages);
    s.window_pool.clear();
    s.window_snapshot.reset();
  }
  if (!s.window_pool.empty()) {
    c.inst = std::move(s.window_pool.back());
    s.window_pool.pop_back();
  } else {
    auto fresh = new_instance(s, *s.window_module);
    if (!fresh.ok()) return finish(c, fresh.take_error());
    c.inst = std::move(fresh.value());
    if (s.limits.fresh == FreshState::Reset && !s.window_snapshot) {
      auto mem = c.inst.inst->memory();
      s.window_snapshot = std::make_shared<const MemorySnapshot>(mem.first(mem.size()));
    }
    auto before = c.inst.inst->grow_memory(static_cast<uint32_t>(pages));
    if (!before.ok()) {
      c.inst.drop();
      return finish(c, skill_error(s.name, Code::ResourceExhausted, "input window: " + before.error().message));
    }
    c.inst.window_offset = uint64_t(before.value()) * kWasmPage;
    c.inst.window_bytes = pages * kWasmPage;
    c.inst.variant = s.window_module.get();
    c.inst.window_base = c.inst.inst->memory().data();
  }
  c.inst.binding->call = &c;
  const uint64_t at = c.inst.window_offset;
  auto mem = c.inst.inst->memory();
  if (at + c.inst.window_bytes > mem.size() || mem.data() != c.inst.window_base) {
    c.inst.drop();
    return finish(c, skill_error(s.name, Code::Internal, "input window: the memory did not grow in place"));
  }
  const uint64_t file_offset = v.file_offset - lead, length = (span + kOsPage - 1) / kOsPage * kOsPage;
  if (c.inst.window_bytes < length || c.inst.variant != s.window_module.get()) {
    c.inst.drop();
    return finish(c, skill_error(s.name, Code::Internal, "input window: the instance's window is not this input's"));
  }
  if (c.inst.window.holds(v.keep, file_offset, length)) {
    stats_.kept_inputs++;  // the last call's mapping of this range, unwritten: nothing to do
  } else {
    c.inst.unmap_window();  // a kept window of another buffer or range
    auto w = InputWindow::map(mem.data() + at, v.fd, file_offset, length, c.inst.window_bytes, v.keep);
    if (!w.ok()) {
      c.inst.drop();
      return finish(c, skill_error(s.name, w.error().code, w.error().message));
    }
    c.inst.window = std::move(w.value());
    if (!c.inst.window.active()) {
      c.inst.drop();
      return finish(c, skill_error(s.name, Code::Internal, "input window: nothing was mapped"));
    }
  }
  c.inst.account();
  if (!within_memory_limit()) {
    c.inst.drop();
    return finish(c, over_memory(s.name));
  }
  c.in_ptr = static_cast<int32_t>(at + lead);
  c.in_len = static_cast<int32_t>(v.bytes.size());
  stats_.mapped_inputs++;
  run(c);  // c.input_view stays until finish(): whether others hold the buffer decides if the window is kept
}

void SkillRuntime::run(Call& c) {
  Skill& s = *c.skill;
  if (c.state != Call::State::Rewinding) c.state = Call::State::Running;
  // The skill function gets (ptr, len) on the first run and again on every rewind.
  const std::array argv{engine::Value::from_i32(c.in_ptr), engine::Value::from_i32(c.in_len)};
  watchdog_->arm(c.deadline);
  auto r = c.inst.inst->call(c.func, argv);
  disarm_watchdog();
  if (r.ok() && c.state == Call::State::Unwinding) {
    auto st = c.inst.inst->call("asyncify_stop_unwind", {});
    if (!st.ok()) {
      c.inst.drop();
      return finish(c, skill_error(s.name, Code::Internal, "asyncify_stop_unwind: " + st.error().message));
    }
    // A parked call keeps its memory: it must fit beside everything else that lives.
    c.inst.account();
    if (!within_memory_limit()) {
      c.inst.drop();
      return finish(c, over_memory(s.name));
    }
    return suspend(c);
  }
  if (!r.ok()) {
    Error e = r.take_error();
    std::string where = "function '" + c.func + "'";
    if (e.code == Code::Timeout) {
      e.message = where + " exceeded its time limit of " + std::to_string(c.timeout_ms) + " ms";
    } else if (c.inst.inst->memory_pages() + kNearMaxPages >= s.max_pages &&
               (e.code == Code::Trap || e.code == Code::ResourceExhausted)) {
      e = make_error(Code::ResourceExhausted, where + " exhausted the memory limit of " +
                                                  std::to_string(s.limits.max_memory_mb) + " MiB (" + e.message + ")");
    } else {
      e.message = where + (e.code == Code::Trap ? " trapped: " : " failed: ") + e.message;
    }
    c.inst.drop();  // a trapped or terminated instance may be half-updated: never reuse it
    return finish(c, skill_error(s.name, e.code, e.message, e.trap));
  }
  int32_t rc = r->empty() ? 0 : (*r)[0].i32;
  if (rc == 0) return finish(c, std::move(c.output));
  // A skill may fail with a status code of its own (e.g. InvalidArgument, or the code of
  // a nested call it passes on); other values are Internal.
  Code code = rc > 0 && rc <= kMaxCode ? static_cast<Code>(rc) : Code::Internal;
  std::string msg = c.error_msg ? *c.error_msg : "skill returned " + std::to_string(rc);
  finish(c, skill_error(s.name, code, "function '" + c.func + "' failed: " + msg));
}

void SkillRuntime::suspend(Call& c) {
  c.state = Call::State::Suspended;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c.deadline - Clock::now()).count();
  uint64_t id = c.id;
  c.deadline_timer = Timer::start(loop_, left > 0 ? static_cast<uint64_t>(left) : 0, [this, id] {
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    Call& call = *it->second;
    Timer::stop(call.deadline_timer);
    call.inst.drop();
    finish(call, skill_error(call.skill->name, Code::Timeout,
                             "function '" + call.func + "' exceeded its time limit of " +
                                 std::to_string(call.timeout_ms) + " ms while waiting"));
  });
}

// Called when the awaited event completes: rewind the skill into the import.
void SkillRuntime::resume(Call& c) {
  Timer::stop(c.deadline_timer);
  Timer::stop(c.wait_timer);
  c.wait_token++;
  auto buf = c.inst.inst->call("airlock_async_buffer", {});
  if (buf.ok() && !buf->empty()) {
    auto st = c.inst.inst->call("asyncify_start_rewind", std::array{(*buf)[0]});
    if (st.ok()) {
      c.state = Call::State::Rewinding;
      return run(c);
    }
  }
  c.inst.drop();
  finish(c, skill_error(c.skill->name, Code::Internal, "could not resume after a wait (asyncify rewind failed)"));
}

void SkillRuntime::finish(Call& c, Result<std::string> r) {
  Timer::stop(c.deadline_timer);
  Timer::stop(c.wait_timer);
  Skill& s = *c.skill;
  if (!c.stdout_line.empty()) log(2, s.name, c.stdout_line);
  if (!c.stderr_line.empty()) log(3, s.name, c.stderr_line);
  if (c.log_dropped) {
    log(3, s.name, std::to_string(c.log_dropped) + " log lines dropped (more than " +
                       std::to_string(limits_.max_log_lines_per_call) + " in one call)");
  }
  if (c.inst.output.active()) {
    if (r.ok() && c.inst.inst && c.state != Call::State::Suspended) {
      r = take_output_buffer(c);
    } else {
      c.inst.unmap_output();
    }
    if (c.inst.output.poisoned()) c.inst.drop();
  }
  if (c.inst.inst && c.state != Call::State::Suspended) {
    c.inst.binding->call = nullptr;
    bool keep = false;
    if (c.inst.window_bytes) {
      // The rest of the memory is reset as below, if it did not grow; the input stays
      // mapped for a next call on the same range if the skill wrote none of it and
      // someone else still holds the buffer (input_window.h), or goes (its pages zero
      // again, private copies of any the skill wrote included).
      auto mem = c.inst.inst->memory();
      const auto& snap = s.window_snapshot;
      const bool reusable = s.limits.fresh == FreshState::Reset && r.ok() && snap && snap->size() == c.inst.window_offset &&
                            c.inst.variant == s.window_module.get() &&
                            mem.data() == c.inst.window_base &&
                            mem.size() == c.inst.window_offset + c.inst.window_bytes && s.window_pool.size() < kWindowPoolMax;
      if (!reusable || c.input_view.keep.use_count() <= 1 || !c.inst.window.settle()) c.inst.unmap_window();
      if (reusable) {
        snap->restore(mem.first(snap->size()));
        stats_.resets++;
        c.inst.account();
        s.window_pool.push_back(std::move(c.inst));
      } else {
        c.inst.drop();
      }
    } else if (s.limits.fresh == FreshState::Reuse) {
      keep = true;
    } else if (s.limits.fresh == FreshState::Reset && r.ok() && s.pool.size() < kPoolMax) {
      // A normal return restored the shadow stack; restoring memory restores the rest.
      // Grown memory cannot shrink, so such an instance is dropped instead; so is one
      // the pool has no room for, unrestored (the end of a 1,000-call burst restored
      // 984 memories only to drop them).
      auto mem = c.inst.inst->memory();
      auto& p = c.inst;
      if (p.snapshot && mem.size() == p.snapshot->size()) {
        p.snapshot->restore(mem);
        stats_.resets++;
        keep = true;
      } else if (p.snapshot && p.output_region_bytes && p.output_region_offset == p.snapshot->size() &&
                 mem.size() == p.output_region_offset + p.output_region_bytes && mem.data() == p.output_base) {
        // Grown only by the pages of an output buffer (output_buffer.h), which are zero
        // again, or made so: the rest is reset, and they wait for the next output.
        p.snapshot->restore(mem.first(p.snapshot->size()));
        madvise(mem.data() + p.output_region_offset, p.output_region_bytes, MADV_DONTNEED);
        stats_.resets++;
        keep = true;
      }
    }
    if (keep && s.pool.size() < kPoolMax) pool(s, std::move(c.inst));
    if (!keep && s.limits.fresh == FreshState::Reset && r.ok() && c.inst.inst && !c.inst.window_bytes &&
        s.spares.size() < kSparePoolMax && c.inst.snapshot && c.inst.inst->memory().size() == c.inst.snapshot->size() &&
        c.inst.inst->memory().size() < kReclaimBytes) {
      auto mem = c.inst.inst->memory();
      if (madvise(mem.data(), mem.size(), MADV_DONTNEED) == 0) {
        c.inst.trimmed = true;
        c.inst.idle_since = Clock::now();
        c.inst.account();
        s.spares.push_back(std::move(c.inst));
      }
    }
    if (c.inst.inst && c.inst.inst->memory().size() - c.inst.window_bytes - c.inst.output_region_bytes >= kReclaimBytes) {
      c.inst.drop();
    }
  }
  // Dropped instances (grown, trapped, timed out, evicted, past the pool) gave their
  // pages back at once (PooledInstance::discard_memory); their V8 objects and address
  // space wait for a GC. One runs past kReclaimInstances of them, and once a burst is
  // over: after the last call in flight has its answer, not before it (a full GC of
  // 1,000 instances is milliseconds). (150 calls growing 1 MiB each: +17 MB RSS stayed
  // without it.)
  const bool idle = calls_.size() == 1;  // this call, removed below
  const bool collect = usage_->uncollected_instances >= kReclaimInstances ||
                       (idle && usage_->unreclaimed_bytes >= kIdleReclaimBytes);
  // If this call held the last reference to a shared input another instance keeps
  // mapped (a call on the same buffer finished while this one was parked, and the host
  // dropped the buffer meanwhile), that window goes now, not at the next side-channel
  // message.
  if (c.input_view.keep) {
    c.input_view = {};
    release_orphaned_inputs();
  }
  CallDone done = std::move(c.done);
  {
    auto keep_alive = calls_.extract(c.id);  // c is destroyed at the end of this scope
    done(std::move(r));
  }
  if (collect) {
    usage_->unreclaimed_bytes = 0;
    usage_->uncollected_instances = 0;
    engine_->reclaim();
  }
}

int32_t SkillRuntime::open_output_buffer(Call& c, uint32_t len) {
  constexpr uint64_t kWasmPage = 65536, kOsPage = 4096;
  if (len == 0 || len > 0x7fff0000u || !c.inst.inst) return 0;
  c.inst.unmap_output();  // a second buffer replaces the first
  std::optional<OutputSlot> slot;
  if (output_source_) {
    auto got = output_source_->acquire(len);
    if (got.ok() && got->data && got->size >= len && reinterpret_cast<uintptr_t>(got->data) % kOsPage == 0 &&
        got->size % kOsPage == 0) {
      slot = got.value();
    } else if (got.ok()) {
      output_source_->release(got->token);
    }
  }
  const uint64_t bytes = slot ? slot->size : len;
  const uint32_t pages = static_cast<uint32_t>((bytes + kWasmPage - 1) / kWasmPage);
  auto give_back = [&] {
    if (slot) output_source_->release(slot->token);
    return 0;
  };
  PooledInstance& p = c.inst;
  uint64_t at = 0;
  bool grown = false;  // fresh pages are zero already; reused ones may hold a plain output
  if (p.output_region_bytes >= uint64_t{pages} * kWasmPage && p.inst->memory().data() == p.output_base &&
      p.output_region_offset + p.output_region_bytes <= p.inst->memory().size()) {
    // The pages an earlier call grew for its output: used again, not grown again (a
    // slot's pages went back to anonymous memory; plain bytes are zeroed by plain()).
    at = p.output_region_offset;
  } else {
    auto before = p.inst->grow_memory(pages);
    if (!before.ok()) return give_back();  // past the skill's memory limit: the skill sees 0, as from malloc
    p.account();
    if (!within_memory_limit()) return give_back();
    at = uint64_t{before.value()} * kWasmPage;
    grown = true;
    p.output_region_offset = at;
    p.output_region_bytes = uint64_t{pages} * kWasmPage;
  }
  auto mem = p.inst->memory();
  if (at + uint64_t{pages} * kWasmPage > mem.size()) return give_back();
  auto plain = [&] {
    if (!grown) std::memset(mem.data() + at, 0, len);
    c.inst.output = OutputBuffer::plain(mem.data() + at, len);
  };
  if (slot) {
    bool broken = false;
    auto b = OutputBuffer::map(mem.data() + at, *slot, len, output_source_, &broken);
    if (b.ok()) {
      c.inst.output = std::move(b.value());
    } else {
      give_back();
      if (broken) throw engine::HostTrap{b.take_error()};  // the instance is dropped with the trap
      // mremap refused (MREMAP_DONTUNMAP of a shared mapping needs Linux 5.13): the
      // skill's own pages instead, copied once on the way out.
      plain();
    }
  } else {
    plain();
  }
  c.inst.output_offset = at;
  c.inst.output_base = mem.data();
  c.output.clear();
  return static_cast<int32_t>(at);
}

// The call returned with its output in an output buffer: named to the caller, who sends
// the slot itself (the server), or copied once into the result.
Result<std::string> SkillRuntime::take_output_buffer(Call& c) {
  PooledInstance& p = c.inst;
  const size_t len = p.output.length();
  auto mem = p.inst->memory();
  stats_.written_outputs++;
  if (mem.data() != p.output_base) {
    // V8 moved the memory (a grow without the trap handler's reservation): the bytes
    // the skill wrote since are in the moved copy.
    p.output.forget();
    if (p.output_offset + len > mem.size()) return skill_error(c.skill->name, Code::Internal, "output buffer lost");
    return std::string(reinterpret_cast<const char*>(mem.data() + p.output_offset), len);
  }
  std::string copy;
  WrittenOutput w = p.output.take(c.written_output != nullptr, &copy);
  if (w.token) *c.written_output = w;
  return copy;
}

void SkillRuntime::release_orphaned_inputs() {
  for (auto& [n, s] : skills_) {
    for (auto& p : s->window_pool) p.window.release_if_orphaned();
  }
}

void SkillRuntime::cancel(uint64_t call_id) {
  auto it = calls_.find(call_id);
  if (it == calls_.end() || it->second->state != Call::State::Suspended) return;
  Call& c = *it->second;
  c.inst.drop();
  finish(c, skill_error(c.skill->name, Code::Cancelled, "function '" + c.func + "' was cancelled"));
}

void SkillRuntime::cancel_all(const Error& error) {
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : calls_) ids.push_back(id);
  for (auto id : ids) {
    auto it = calls_.find(id);
    if (it == calls_.end()) continue;
    it->second->inst.drop();
    finish(*it->second, error);
  }
}

namespace {
const std::unordered_map<std::string, engine::FuncType>& provided_imports() {
  static const auto table = [] {
    std::unordered_map<std::string, engine::FuncType> t;
    for (auto& f : abi_imports()) t[f.module + "." + f.name] = f.type;
    for (auto& f : wasi_imports()) t[f.module + "." + f.name] = f.type;
    return t;
  }();
  return table;
}
}  // namespace

std::optional<engine::FuncType> provided_import_type(std::string_view module, std::string_view name) {
  auto it = provided_imports().find(std::string(module) + "." + std::string(name));
  if (it == provided_imports().end()) return std::nullopt;
  return it->second;
}

}  // namespace airlock::runtime
