// The V8 10.2 implementation of the engine interface (Debian libnode108).
//
// Modules are compiled with WasmModuleObject::Compile and instantiated through the JS
// `WebAssembly.Instance` constructor with an import object built once per module from
// the engine's host functions. Each Engine owns one isolate and one context, entered
// for the lifetime of the Engine on its thread.
#include <malloc.h>
#include <libplatform/libplatform.h>
#include <v8-wasm.h>
#include <v8.h>

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "engine/engine.h"
#include "engine/import_shim.h"

static_assert(V8_MAJOR_VERSION == 10 && V8_MINOR_VERSION == 2,
              "Airlock needs V8 10.2 (Debian libnode108), not the nodejs headers in /usr/include/node");

namespace airlock::engine {
namespace {

std::unique_ptr<v8::Platform> g_platform;

void init_v8_once(const EngineConfig& config) {
  static std::once_flag once;
  std::call_once(once, [&] {
    // Flags are process-wide and must precede V8::Initialize (they key code caches too).
    if (config.lazy_compilation) v8::V8::SetFlagsFromString("--wasm-lazy-compilation");
    if (!config.tier_up) v8::V8::SetFlagsFromString("--no-wasm-tier-up --no-wasm-dynamic-tiering");
    if (config.cacheable_code) v8::V8::SetFlagsFromString("--no-wasm-dynamic-tiering");
    if (config.trap_handler) v8::V8::EnableWebAssemblyTrapHandler(/*use_v8_signal_handler=*/true);
    g_platform = v8::platform::NewDefaultPlatform(/*thread_pool_size=*/1);
    v8::V8::InitializePlatform(g_platform.get());
    v8::V8::Initialize();
  });
}

std::string to_utf8(v8::Isolate* iso, v8::Local<v8::Value> v) {
  if (v.IsEmpty()) return "";
  v8::String::Utf8Value s(iso, v);
  return *s ? std::string(*s, s.length()) : std::string("<unprintable>");
}

v8::Local<v8::String> str(v8::Isolate* iso, std::string_view s) {
  return v8::String::NewFromUtf8(iso, s.data(), v8::NewStringType::kNormal, static_cast<int>(s.size()))
      .ToLocalChecked();
}

// V8 reports wasm traps as WebAssembly.RuntimeError with fixed messages.
TrapKind classify_trap(std::string_view msg) {
  auto has = [&](std::string_view n) { return msg.find(n) != std::string_view::npos; };
  if (has("unreachable")) return TrapKind::Unreachable;
  if (has("memory access out of bounds") || has("data segment") || has("out of bounds memory"))
    return TrapKind::MemoryOutOfBounds;
  if (has("Maximum call stack size")) return TrapKind::StackOverflow;
  if (has("divide by zero") || has("remainder by zero")) return TrapKind::DivideByZero;
  if (has("divide result unrepresentable")) return TrapKind::IntegerOverflow;
  if (has("float unrepresentable")) return TrapKind::InvalidConversion;
  if (has("function signature mismatch") || has("table index is out of bounds") ||
      has("null function"))
    return TrapKind::IndirectCall;
  return TrapKind::Other;
}

class V8Engine;

class V8Module final : public Module {
 public:
  V8Module(V8Engine* engine, v8::Isolate* iso, v8::Local<v8::WasmModuleObject> m)
      : engine_(engine), module_(iso, m) {}
  Result<std::unique_ptr<Instance>> instantiate() override;
  std::span<const uint8_t> wire_bytes() override;

 private:
  V8Engine* engine_;
  v8::Global<v8::WasmModuleObject> module_;
  v8::Global<v8::Object> imports_;  // built on first instantiate, reused after
};

class V8Instance final : public Instance {
 public:
  V8Instance(V8Engine* engine, v8::Isolate* iso, v8::Local<v8::Object> exports);
  Result<std::vector<Value>> call(std::string_view export_name, std::span<const Value> args) override;
  std::span<uint8_t> memory() override;
  uint32_t memory_pages() override { return static_cast<uint32_t>(memory().size() / 65536); }
  Result<uint32_t> grow_memory(uint32_t pages) override;

 private:
  V8Engine* engine_;
  v8::Isolate* iso_;
  v8::Global<v8::Object> exports_;
  v8::Global<v8::WasmMemoryObject> memory_;
  std::unordered_map<std::string, v8::Global<v8::Function>> funcs_;
};

class V8Engine final : public Engine, public Caller {
 public:
  explicit V8Engine(const EngineConfig& config) {
    init_v8_once(config);
    allocator_.reset(v8::ArrayBuffer::Allocator::NewDefaultAllocator());
    v8::Isolate::CreateParams params;
    params.array_buffer_allocator = allocator_.get();
    iso_ = v8::Isolate::New(params);
    iso_->Enter();
    // Near the heap limit V8 aborts the whole process ("Fatal javascript OOM"). The
    // runtime's own limits (tables, instances, memory) keep the heap far from it; should
    // a skill still get there, its call is terminated instead (ResourceExhausted) and the
    // limit raised enough for the termination to unwind.
    iso_->AddNearHeapLimitCallback(
        [](void* data, size_t current, size_t) -> size_t {
          auto* self = static_cast<V8Engine*>(data);
          self->heap_exhausted_.store(true, std::memory_order_relaxed);
          self->terminate();
          return current + (64u << 20);
        },
        this);
    v8::HandleScope hs(iso_);
    // Before the context: V8 defines WebAssembly.compileStreaming only in contexts made
    // after a streaming callback is set (the one way it takes cached code back).
    iso_->SetWasmStreamingCallback(&V8Engine::on_streaming);
    auto ctx = v8::Context::New(iso_);
    ctx->Enter();
    context_.Reset(iso_, ctx);
    auto wasm = ctx->Global()->Get(ctx, str(iso_, "WebAssembly")).ToLocalChecked().As<v8::Object>();
    instance_ctor_.Reset(iso_, wasm->Get(ctx, str(iso_, "Instance")).ToLocalChecked().As<v8::Function>());
    auto module_ctor = wasm->Get(ctx, str(iso_, "Module")).ToLocalChecked().As<v8::Object>();
    module_imports_.Reset(iso_, module_ctor->Get(ctx, str(iso_, "imports")).ToLocalChecked().As<v8::Function>());
  }

  ~V8Engine() override {
    {
      v8::HandleScope hs(iso_);
      host_fn_templates_.clear();
      shim_exports_.Reset();
      stream_fn_.Reset();
      instance_ctor_.Reset();
      module_imports_.Reset();
      context_.Get(iso_)->Exit();
      context_.Reset();
    }
    iso_->Exit();
    iso_->Dispose();
  }

  void define(HostFunction fn) override {
    std::string key = fn.module + "." + fn.name;
    host_fns_[key] = std::make_unique<HostFunction>(std::move(fn));
    shim_exports_.Reset();  // rebuilt with the new function on the next instantiation
  }

  Result<std::shared_ptr<Module>> compile(std::span<const uint8_t> wasm, std::span<const uint8_t> cached,
                                          bool* used_cache) override {
    *used_cache = false;
    if (cached.empty()) return compile(wasm);
    v8::HandleScope hs(iso_);
    StreamJob job{wasm, cached};
    auto promise = start_streaming(job);
    if (!promise.ok()) return promise.take_error();
    if (job.rejected || (*promise)->State() != v8::Promise::kFulfilled) {
      // Not accepted (another V8, other flags): compiled from the bytes as usual. A
      // pending promise (not seen: deserialization completes within Finish()) would
      // finish on its own; its result is simply not used.
      return compile(wasm);
    }
    *used_cache = true;
    auto m = (*promise)->Result().As<v8::WasmModuleObject>();
    return std::shared_ptr<Module>(std::make_shared<V8Module>(this, iso_, m));
  }

  Result<std::vector<uint8_t>> compile_for_cache(std::span<const uint8_t> wasm) override {
    v8::HandleScope hs(iso_);
    StreamJob job{wasm, {}};
    job.client = std::make_shared<TopTierClient>();
    auto promise = start_streaming(job);
    if (!promise.ok()) return promise.take_error();
    // V8 finishes the compile through foreground tasks and microtasks: run them until
    // the promise settles and the top tier has been reached (68 ms for the 32 KB sample).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (!job.client->done.load() && (*promise)->State() != v8::Promise::kRejected) {
      if (std::chrono::steady_clock::now() > deadline) {
        return make_error(Code::Timeout, "compiling for the cache took over 2 minutes");
      }
      while (v8::platform::PumpMessageLoop(g_platform.get(), iso_, v8::platform::MessageLoopBehavior::kDoNotWait)) {
      }
      iso_->PerformMicrotaskCheckpoint();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if ((*promise)->State() == v8::Promise::kRejected) {
      return make_error(Code::InvalidArgument, "compile failed: " + to_utf8(iso_, (*promise)->Result()));
    }
    std::lock_guard lk(job.client->mu);
    if (job.client->code.empty()) {
      return make_error(Code::Internal, "the engine serialized no code (V8 keeps only TurboFan code: is "
                                        "cacheable_code on?)");
    }
    return std::move(job.client->code);
  }

  // One streaming compilation (WebAssembly.compileStreaming), the only public way V8
  // 10.2 takes serialized code back: the callback below feeds it the job's bytes.
  struct TopTierClient final : v8::WasmStreaming::Client {
    void OnModuleCompiled(v8::CompiledWasmModule m) override {
      auto buf = m.Serialize();
      std::lock_guard lk(mu);
      code.assign(buf.buffer.get(), buf.buffer.get() + buf.size);
      done.store(true);
    }
    std::mutex mu;
    std::vector<uint8_t> code;
    std::atomic<bool> done{false};
  };
  struct StreamJob {
    std::span<const uint8_t> wasm, cached;
    std::shared_ptr<TopTierClient> client;
    bool rejected = false;  // V8 refused `cached`
  };
  Result<v8::Local<v8::Promise>> start_streaming(StreamJob& job) {
    auto ctx = context();
    if (stream_fn_.IsEmpty()) {
      auto src = str(iso_, "(function () { return WebAssembly.compileStreaming(0); })");
      auto fn = v8::Script::Compile(ctx, src).ToLocalChecked()->Run(ctx).ToLocalChecked().As<v8::Function>();
      stream_fn_.Reset(iso_, fn);
    }
    v8::TryCatch tc(iso_);
    stream_job_ = &job;
    auto r = stream_fn_.Get(iso_)->Call(ctx, v8::Undefined(iso_), 0, nullptr);
    stream_job_ = nullptr;
    v8::Local<v8::Value> v;
    if (!r.ToLocal(&v) || !v->IsPromise()) {
      return make_error(Code::Internal, "WebAssembly.compileStreaming failed: " + to_utf8(iso_, tc.Exception()));
    }
    iso_->PerformMicrotaskCheckpoint();
    return v.As<v8::Promise>();
  }
  static void on_streaming(const v8::FunctionCallbackInfo<v8::Value>& info) {
    auto* iso = info.GetIsolate();
    auto* self = static_cast<V8Engine*>(iso->GetData(0));
    StreamJob* job = self->stream_job_;
    auto s = v8::WasmStreaming::Unpack(iso, info.Data());
    if (!job) return s->Abort(v8::MaybeLocal<v8::Value>());
    if (!job->cached.empty() && !s->SetCompiledModuleBytes(job->cached.data(), job->cached.size())) {
      job->rejected = true;
      return s->Abort(v8::MaybeLocal<v8::Value>());
    }
    if (job->client) s->SetClient(job->client);
    s->OnBytesReceived(job->wasm.data(), job->wasm.size());
    s->Finish();
  }

  Result<std::shared_ptr<Module>> compile(std::span<const uint8_t> wasm) override {
    v8::HandleScope hs(iso_);
    v8::TryCatch tc(iso_);
    auto m = v8::WasmModuleObject::Compile(iso_, v8::MemorySpan<const uint8_t>(wasm.data(), wasm.size()));
    if (m.IsEmpty()) {
      return make_error(Code::InvalidArgument, "compile failed: " + to_utf8(iso_, tc.Exception()));
    }
    return std::shared_ptr<Module>(std::make_shared<V8Module>(this, iso_, m.ToLocalChecked()));
  }

  // TerminateExecution alone is not enough: V8 10.2 can lose it while a skill loops
  // through host imports under dynamic tiering (a 1 MiB-line log loop ran 30 s past a
  // 500 ms limit). The flag makes every host import refuse to run once the deadline has
  // passed, and the watchdog repeats the request until the call has returned.
  void terminate() override {
    terminating_.store(true, std::memory_order_relaxed);
    iso_->TerminateExecution();
  }
  // A full GC frees the dropped instances' memories (mmap'ed: back to the kernel at
  // once); malloc_trim then returns what their wrappers, asyncify buffers and call
  // state left in glibc's arenas (150 calls of 1 MiB: +17 MB RSS for good without it).
  void reclaim() override {
    iso_->LowMemoryNotification();
    malloc_trim(0);
  }
  void cancel_termination() override {
    terminating_.store(false, std::memory_order_relaxed);
    heap_exhausted_.store(false, std::memory_order_relaxed);
    iso_->CancelTerminateExecution();
  }
  std::string_view name() const override { return "v8-10.2"; }

  // Caller: the innermost instance running on this engine.
  Instance& instance() override { return *active_.back(); }

  v8::Isolate* isolate() { return iso_; }
  v8::Local<v8::Context> context() { return context_.Get(iso_); }

  // Builds the import object for a module; error names the first unknown import.
  Result<v8::Local<v8::Object>> build_imports(v8::Local<v8::WasmModuleObject> module) {
    auto ctx = context();
    v8::Local<v8::Value> argv[1] = {module};
    auto list = module_imports_.Get(iso_)->Call(ctx, v8::Undefined(iso_), 1, argv).ToLocalChecked().As<v8::Array>();
    auto imports = v8::Object::New(iso_);
    std::map<std::string, v8::Local<v8::Object>> namespaces;
    for (uint32_t i = 0; i < list->Length(); ++i) {
      auto desc = list->Get(ctx, i).ToLocalChecked().As<v8::Object>();
      std::string mod = to_utf8(iso_, desc->Get(ctx, str(iso_, "module")).ToLocalChecked());
      std::string nm = to_utf8(iso_, desc->Get(ctx, str(iso_, "name")).ToLocalChecked());
      std::string kind = to_utf8(iso_, desc->Get(ctx, str(iso_, "kind")).ToLocalChecked());
      auto it = host_fns_.find(mod + "." + nm);
      if (kind != "function" || it == host_fns_.end()) {
        return make_error(Code::InvalidArgument,
                          "unknown import " + mod + "." + nm + " (" + kind + "): the runtime does not provide it");
      }
      auto& ns = namespaces[mod];
      if (ns.IsEmpty()) {
        ns = v8::Object::New(iso_);
        imports->Set(ctx, str(iso_, mod), ns).Check();
      }
      auto f = shim_function(it->second.get());
      if (!f.ok()) return f.take_error();
      ns->Set(ctx, str(iso_, nm), *f).Check();
    }
    return imports;
  }

  // The shim's export forwarding to `fn` (import_shim.h), instantiating the shim with
  // every host function defined so far on first use.
  Result<v8::Local<v8::Function>> shim_function(HostFunction* fn) {
    auto ctx = context();
    if (shim_exports_.IsEmpty()) {
      std::vector<FuncType> types;
      shim_index_.clear();
      auto h = v8::Object::New(iso_);
      for (auto& [key, f] : host_fns_) {
        h->Set(ctx, str(iso_, std::to_string(types.size())), host_function(f.get())).Check();
        shim_index_[f.get()] = static_cast<uint32_t>(types.size());
        types.push_back(f->type);
      }
      const auto bytes = encode_import_shim(types);
      v8::TryCatch tc(iso_);
      auto m = v8::WasmModuleObject::Compile(iso_, v8::MemorySpan<const uint8_t>(bytes.data(), bytes.size()));
      auto imports = v8::Object::New(iso_);
      imports->Set(ctx, str(iso_, "h"), h).Check();
      v8::Local<v8::WasmModuleObject> module;
      v8::Local<v8::Object> inst;
      if (!m.ToLocal(&module) ||
          !instance_ctor_.Get(iso_)->NewInstance(ctx, 2, std::array<v8::Local<v8::Value>, 2>{module, imports}.data()).ToLocal(&inst)) {
        return make_error(Code::Internal, "the host-import shim did not build: " + to_utf8(iso_, tc.Exception()));
      }
      shim_exports_.Reset(iso_, inst->Get(ctx, str(iso_, "exports")).ToLocalChecked().As<v8::Object>());
    }
    auto v = shim_exports_.Get(iso_)->Get(ctx, str(iso_, std::to_string(shim_index_.at(fn)))).ToLocalChecked();
    return v.As<v8::Function>();
  }

  v8::Local<v8::Function> host_function(HostFunction* fn) {
    auto& tmpl = host_fn_templates_[fn];
    if (tmpl.IsEmpty()) {
      // `length` = the wasm arity, so the wrapper V8 compiles for the shim's import is
      // the arity-matching one it already compiled with the module (not a second).
      tmpl.Reset(iso_, v8::FunctionTemplate::New(iso_, &V8Engine::trampoline, v8::External::New(iso_, fn), {},
                                                 static_cast<int>(fn->type.params.size())));
    }
    return tmpl.Get(iso_)->GetFunction(context()).ToLocalChecked();
  }

  // wasm -> host. C++ exceptions must not cross V8 frames: a HostTrap is parked in
  // pending_error_ and a JS exception unwinds the wasm stack instead.
  static void trampoline(const v8::FunctionCallbackInfo<v8::Value>& info) {
    auto* iso = info.GetIsolate();
    auto* self = static_cast<V8Engine*>(iso->GetData(0));
    auto* fn = static_cast<HostFunction*>(info.Data().As<v8::External>()->Value());
    auto ctx = iso->GetCurrentContext();
    Value args[8];
    Value results[1];
    size_t nargs = std::min<size_t>(fn->type.params.size(), 8);
    for (size_t i = 0; i < nargs; ++i) {
      auto v = info[static_cast<int>(i)];
      switch (fn->type.params[i]) {
        case ValType::I32: args[i] = Value::from_i32(v->Int32Value(ctx).FromMaybe(0)); break;
        case ValType::I64: {
          auto b = v->ToBigInt(ctx);
          args[i] = Value::from_i64(b.IsEmpty() ? 0 : b.ToLocalChecked()->Int64Value());
          break;
        }
        case ValType::F32: args[i].type = ValType::F32; args[i].f32 = static_cast<float>(v->NumberValue(ctx).FromMaybe(0)); break;
        case ValType::F64: args[i].type = ValType::F64; args[i].f64 = v->NumberValue(ctx).FromMaybe(0); break;
      }
    }
    try {
      // Past the deadline no import runs: a loop through imports ends at its next one.
      if (self->terminating_.load(std::memory_order_relaxed)) {
        throw HostTrap{make_error(Code::Timeout, "execution terminated (time limit)")};
      }
      fn->fn(*self, std::span<const Value>(args, nargs), std::span<Value>(results, fn->type.results.size()));
      if (self->terminating_.load(std::memory_order_relaxed)) {
        throw HostTrap{make_error(Code::Timeout, "execution terminated (time limit)")};
      }
    } catch (HostTrap& t) {
      self->pending_error_ = std::move(t.error);
      iso->ThrowException(v8::Exception::Error(str(iso, "host function " + fn->module + "." + fn->name + " failed")));
      return;
    } catch (std::exception& e) {
      self->pending_error_ = make_error(Code::Internal, "host function " + fn->name + ": " + e.what());
      iso->ThrowException(v8::Exception::Error(str(iso, "host function failed")));
      return;
    }
    if (!fn->type.results.empty()) {
      switch (fn->type.results[0]) {
        case ValType::I32: info.GetReturnValue().Set(results[0].i32); break;
        case ValType::I64: info.GetReturnValue().Set(v8::BigInt::New(iso, results[0].i64)); break;
        case ValType::F32: info.GetReturnValue().Set(static_cast<double>(results[0].f32)); break;
        case ValType::F64: info.GetReturnValue().Set(results[0].f64); break;
      }
    }
  }

  std::vector<Instance*> active_;   // call stack of instances (re-entrant calls nest)
  std::optional<Error> pending_error_;
  std::atomic<bool> terminating_{false};  // terminate() was called and not yet withdrawn
  std::atomic<bool> heap_exhausted_{false};  // ... because the engine's heap is near its limit
  v8::Global<v8::Function> instance_ctor_;

 private:
  std::unique_ptr<v8::ArrayBuffer::Allocator> allocator_;
  v8::Isolate* iso_ = nullptr;
  v8::Global<v8::Context> context_;
  v8::Global<v8::Function> module_imports_;
  std::unordered_map<std::string, std::unique_ptr<HostFunction>> host_fns_;
  std::unordered_map<HostFunction*, v8::Global<v8::FunctionTemplate>> host_fn_templates_;
  v8::Global<v8::Object> shim_exports_;  // empty until first needed, and after define()
  v8::Global<v8::Function> stream_fn_;    // calls WebAssembly.compileStreaming
  StreamJob* stream_job_ = nullptr;       // the one being started
  std::unordered_map<HostFunction*, uint32_t> shim_index_;

 public:
  void bind_isolate_data() { iso_->SetData(0, this); }
};

Result<std::unique_ptr<Instance>> V8Module::instantiate() {
  auto* iso = engine_->isolate();
  v8::HandleScope hs(iso);
  auto ctx = engine_->context();
  v8::TryCatch tc(iso);
  auto module = module_.Get(iso);
  if (imports_.IsEmpty()) {
    auto imports = engine_->build_imports(module);
    if (!imports.ok()) return imports.take_error();
    imports_.Reset(iso, imports.value());
  }
  v8::Local<v8::Value> argv[2] = {module, imports_.Get(iso)};
  auto inst = engine_->instance_ctor_.Get(iso)->NewInstance(ctx, 2, argv);
  if (inst.IsEmpty()) {
    std::string msg = to_utf8(iso, tc.Exception());
    if (tc.HasTerminated()) {
      iso->CancelTerminateExecution();
      return make_error(Code::Timeout, "instantiation interrupted");
    }
    // Start-function traps and memory allocation failures land here too.
    bool oom = msg.find("Out of memory") != std::string::npos;
    return make_error(oom ? Code::ResourceExhausted : Code::InvalidArgument, "instantiate failed: " + msg);
  }
  auto exports = inst.ToLocalChecked()->Get(ctx, str(iso, "exports")).ToLocalChecked().As<v8::Object>();
  return std::unique_ptr<Instance>(std::make_unique<V8Instance>(engine_, iso, exports));
}

std::span<const uint8_t> V8Module::wire_bytes() {
  auto* iso = engine_->isolate();
  v8::HandleScope hs(iso);
  // The span points into the NativeModule, which this module object keeps alive.
  auto bytes = module_.Get(iso)->GetCompiledModule().GetWireBytesRef();
  return {bytes.data(), bytes.size()};
}

V8Instance::V8Instance(V8Engine* engine, v8::Isolate* iso, v8::Local<v8::Object> exports)
    : engine_(engine), iso_(iso), exports_(iso, exports) {
  auto ctx = engine_->context();
  auto mem = exports->Get(ctx, str(iso, "memory"));
  v8::Local<v8::Value> m;
  if (mem.ToLocal(&m) && m->IsWasmMemoryObject()) memory_.Reset(iso, m.As<v8::WasmMemoryObject>());
}

std::span<uint8_t> V8Instance::memory() {
  if (memory_.IsEmpty()) return {};
  v8::HandleScope hs(iso_);
  auto buf = memory_.Get(iso_)->Buffer();
  return {static_cast<uint8_t*>(buf->Data()), buf->ByteLength()};
}

// Through the JS API (WebAssembly.Memory.prototype.grow): V8 10.2 has no C++ call for it.
Result<uint32_t> V8Instance::grow_memory(uint32_t pages) {
  if (memory_.IsEmpty()) return make_error(Code::NotFound, "the module exports no memory");
  v8::HandleScope hs(iso_);
  auto ctx = engine_->context();
  auto mem = memory_.Get(iso_);
  v8::Local<v8::Value> grow;
  if (!mem->Get(ctx, str(iso_, "grow")).ToLocal(&grow) || !grow->IsFunction()) {
    return make_error(Code::Internal, "WebAssembly.Memory has no grow()");
  }
  v8::TryCatch tc(iso_);
  v8::Local<v8::Value> argv[1] = {v8::Integer::NewFromUnsigned(iso_, pages)};
  v8::Local<v8::Value> before;
  if (!grow.As<v8::Function>()->Call(ctx, mem, 1, argv).ToLocal(&before) || !before->IsUint32()) {
    return make_error(Code::ResourceExhausted, "cannot grow the memory by " + std::to_string(pages) + " pages");
  }
  return before.As<v8::Uint32>()->Value();
}

Result<std::vector<Value>> V8Instance::call(std::string_view export_name, std::span<const Value> args) {
  v8::HandleScope hs(iso_);
  auto ctx = engine_->context();
  auto it = funcs_.find(std::string(export_name));
  if (it == funcs_.end()) {
    auto v = exports_.Get(iso_)->Get(ctx, str(iso_, export_name));
    v8::Local<v8::Value> f;
    if (!v.ToLocal(&f) || !f->IsFunction()) {
      return make_error(Code::NotFound, "no exported function '" + std::string(export_name) + "'");
    }
    it = funcs_.emplace(std::string(export_name), v8::Global<v8::Function>(iso_, f.As<v8::Function>())).first;
  }
  v8::Local<v8::Value> argv[8];
  size_t n = std::min<size_t>(args.size(), 8);
  for (size_t i = 0; i < n; ++i) {
    switch (args[i].type) {
      case ValType::I32: argv[i] = v8::Integer::New(iso_, args[i].i32); break;
      case ValType::I64: argv[i] = v8::BigInt::New(iso_, args[i].i64); break;
      case ValType::F32: argv[i] = v8::Number::New(iso_, args[i].f32); break;
      case ValType::F64: argv[i] = v8::Number::New(iso_, args[i].f64); break;
    }
  }
  v8::TryCatch tc(iso_);
  engine_->active_.push_back(this);
  auto r = it->second.Get(iso_)->Call(ctx, v8::Undefined(iso_), static_cast<int>(n), argv);
  engine_->active_.pop_back();
  if (r.IsEmpty()) {
    const bool terminated = tc.HasTerminated() || iso_->IsExecutionTerminating() ||
                            engine_->terminating_.load(std::memory_order_relaxed);
    if (terminated) {
      // Only the outermost call clears termination (the flags too), so nested frames
      // all unwind. A watchdog that fires again before the runtime disarms it is
      // withdrawn by the runtime (Watchdog::disarm, Engine::cancel_termination).
      const bool heap = engine_->heap_exhausted_.load(std::memory_order_relaxed);
      engine_->pending_error_.reset();
      if (engine_->active_.empty()) engine_->cancel_termination();
      if (heap) return make_error(Code::ResourceExhausted, "the engine's heap is near its limit");
      return make_error(Code::Timeout, "execution terminated (time limit)");
    }
    if (engine_->pending_error_) {
      // A host function trapped; pass its error through the outer frames unchanged.
      if (engine_->active_.empty()) {
        Error e = std::move(*engine_->pending_error_);
        engine_->pending_error_.reset();
        return e;
      }
      return *engine_->pending_error_;
    }
    std::string msg = to_utf8(iso_, tc.Exception());
    return make_error(Code::Trap, msg, classify_trap(msg));
  }
  std::vector<Value> out;
  auto v = r.ToLocalChecked();
  if (v->IsInt32() || v->IsNumber()) {
    out.push_back(Value::from_i32(v->Int32Value(ctx).FromMaybe(0)));
  } else if (v->IsBigInt()) {
    out.push_back(Value::from_i64(v.As<v8::BigInt>()->Int64Value()));
  }
  return out;
}

}  // namespace

std::unique_ptr<Engine> create_v8_engine(const EngineConfig& config) {
  auto e = std::make_unique<V8Engine>(config);
  e->bind_isolate_data();
  return e;
}

std::string engine_version() { return std::string("V8 ") + v8::V8::GetVersion(); }

}  // namespace airlock::engine
