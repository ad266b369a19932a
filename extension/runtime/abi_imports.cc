// The "airlock" imports of docs/SKILL_ABI.md. wait and call suspend the skill with
// asyncify: the first entry starts an unwind and parks the call; when the awaited event
// completes the runtime rewinds, and the second entry (state Rewinding) ends the rewind
// and returns the event's result to the skill as if it had never left.
#include <algorithm>

#include "runtime/call_state.h"

namespace airlock::runtime {

using engine::Caller;
using engine::HostTrap;
using engine::Value;
using VT = engine::ValType;

constexpr uint32_t kMaxServiceName = 256;
constexpr uint32_t kMaxErrorBytes = 4096;

void log_line(Binding& b, int level, std::string_view line) {
  uint32_t& lines = b.call ? b.call->log_lines : b.skill->init_log_lines;
  if (lines >= b.rt->limits().max_log_lines_per_call) {
    if (b.call) b.call->log_dropped++;
    return;
  }
  lines++;
  b.rt->log(level, b.skill->name, line.substr(0, kMaxLogLineBytes));
}

struct AbiImports {
  static SkillRuntime::Call& call_of(Caller& caller, const char* what) {
    Binding& b = binding_of(caller);
    if (!b.call) {
      throw HostTrap{make_error(Code::InvalidArgument,
                                std::string("airlock.") + what + " is not allowed during _initialize")};
    }
    return *b.call;
  }

  static void output_buffer(Caller& caller, std::span<const Value> a, std::span<Value> r) {
    auto& c = call_of(caller, "output_buffer");
    r[0] = Value::from_i32(binding_of(caller).rt->open_output_buffer(c, static_cast<uint32_t>(a[0].i32)));
  }

  // Second entry of a suspending import: finish the rewind, hand back the result.
  static bool finish_rewind(Caller& caller, SkillRuntime::Call& c, std::span<Value> results) {
    if (c.state != SkillRuntime::Call::State::Rewinding) return false;
    auto r = caller.instance().call("asyncify_stop_rewind", {});
    if (!r.ok()) throw HostTrap{r.take_error()};
    c.state = SkillRuntime::Call::State::Running;
    results[0] = Value::from_i32(c.resume_value);
    return true;
  }

  static void start_unwind(Caller& caller, SkillRuntime::Call& c) {
    auto& inst = caller.instance();
    auto buf = inst.call("airlock_async_buffer", {});
    if (!buf.ok() || buf->empty()) throw HostTrap{make_error(Code::Internal, "airlock_async_buffer failed")};
    int32_t addr = (*buf)[0].i32;
    auto hdr = guest_span(inst, addr, 8);
    int32_t start = addr + 8;  // asyncify data: {i32 next, i32 end}; reset next for this unwind
    std::memcpy(hdr.data(), &start, 4);
    auto r = inst.call("asyncify_start_unwind", std::array{Value::from_i32(addr)});
    if (!r.ok()) throw HostTrap{r.take_error()};
    c.state = SkillRuntime::Call::State::Unwinding;
  }

  // Completion of the event a suspended call waits for (timer or service reply).
  static void complete(SkillRuntime* rt, uint64_t call_id, uint64_t token, int32_t value,
                       std::string reply) {
    auto it = rt->calls_.find(call_id);
    if (it == rt->calls_.end()) return;  // cancelled or timed out meanwhile
    auto& c = *it->second;
    if (c.wait_token != token) return;
    c.resume_value = value;
    c.reply = std::move(reply);
    if (c.state == SkillRuntime::Call::State::Suspended) {
      rt->resume(c);
    } else {
      c.sync_reply = true;  // replied inside the handler: the import returns it without suspending
    }
  }

  // A suspending import entered again before the skill unwound: its asyncify exports are
  // not binaryen's instrumentation (stubs return, and the skill goes on calling). Each
  // such call would start another timer or host request: trap instead.
  static void check_not_unwinding(SkillRuntime::Call& c, const char* what) {
    if (c.state == SkillRuntime::Call::State::Unwinding) {
      throw HostTrap{make_error(Code::Trap,
                                std::string("airlock.") + what + " was called while the skill was suspending: its asyncify "
                                "exports do not unwind (build it with airlock_add_skill(); docs/SKILL_ABI.md)",
                                TrapKind::Other)};
    }
  }

  static void wait(Caller& caller, std::span<const Value> args, std::span<Value> results) {
    auto& c = call_of(caller, "wait");
    if (finish_rewind(caller, c, results)) return;
    check_not_unwinding(c, "wait");
    Binding& b = binding_of(caller);
    int32_t ms = std::max<int32_t>(args[0].i32, 0);
    uint64_t token = ++c.wait_token;
    SkillRuntime* rt = b.rt;
    uint64_t id = c.id;
    c.wait_timer = Timer::start(rt->loop_, static_cast<uint64_t>(ms), [rt, id, token] {
      complete(rt, id, token, 0, {});
    });
    start_unwind(caller, c);
  }

  static void call(Caller& caller, std::span<const Value> args, std::span<Value> results) {
    auto& c = call_of(caller, "call");
    if (finish_rewind(caller, c, results)) return;
    check_not_unwinding(c, "call");
    if (static_cast<uint32_t>(args[1].i32) > kMaxServiceName) {
      throw HostTrap{make_error(Code::InvalidArgument, "airlock.call: service name of " +
                                                          std::to_string(static_cast<uint32_t>(args[1].i32)) +
                                                          " bytes (limit " + std::to_string(kMaxServiceName) + ")")};
    }
    Binding& b = binding_of(caller);
    std::string service(guest_string(caller.instance(), args[0].i32, args[1].i32));
    std::string input(guest_string(caller.instance(), args[2].i32, args[3].i32));
    SkillRuntime* rt = b.rt;
    if (!rt->service_handler_) {
      c.reply = "no host service '" + service + "' (no service handler is set)";
      results[0] = Value::from_i32(static_cast<int32_t>(Code::NotFound));
      return;
    }
    uint64_t token = ++c.wait_token;
    uint64_t id = c.id;
    std::weak_ptr<int> alive = rt->alive_;
    c.sync_reply = false;
    ServiceCall info{c.id, c.parent_id, c.skill->name, c.deadline};
    rt->service_handler_(info, service, std::move(input), [rt, id, token, alive](Result<std::string> r) {
      if (alive.expired()) return;
      int32_t code = r.ok() ? 0 : static_cast<int32_t>(r.error().code);
      complete(rt, id, token, code, r.ok() ? std::move(r.value()) : r.error().message);
    });
    if (c.sync_reply) {
      results[0] = Value::from_i32(c.resume_value);
      return;
    }
    start_unwind(caller, c);
  }
};

std::vector<engine::HostFunction> abi_imports() {
  std::vector<engine::HostFunction> f;
  auto add = [&](const char* name, engine::FuncType t, engine::HostFn fn) {
    f.push_back({"airlock", name, std::move(t), std::move(fn)});
  };
  add("output", {{VT::I32, VT::I32}, {}}, [](Caller& caller, std::span<const Value> a, std::span<Value>) {
    auto& c = AbiImports::call_of(caller, "output");
    c.output.assign(guest_string(caller.instance(), a[0].i32, a[1].i32));
    c.inst.unmap_output();  // this output replaces one in an output buffer
  });
  add("output_buffer", {{VT::I32}, {VT::I32}}, &AbiImports::output_buffer);
  add("error", {{VT::I32, VT::I32}, {}}, [](Caller& caller, std::span<const Value> a, std::span<Value>) {
    auto& c = AbiImports::call_of(caller, "error");
    c.error_msg = std::string(guest_string(caller.instance(), a[0].i32, a[1].i32).substr(0, kMaxErrorBytes));
  });
  add("log", {{VT::I32, VT::I32, VT::I32}, {}}, [](Caller& caller, std::span<const Value> a, std::span<Value>) {
    Binding& b = binding_of(caller);
    int level = std::clamp(a[0].i32, 0, 5);
    // Only the first 4 KiB are looked at: a 1 MiB line costs what a 4 KiB one does.
    const int32_t len = static_cast<int32_t>(std::min<uint32_t>(static_cast<uint32_t>(a[2].i32), kMaxLogLineBytes));
    log_line(b, level, guest_string(caller.instance(), a[1].i32, len));
  });
  add("wait", {{VT::I32}, {VT::I32}}, &AbiImports::wait);
  add("call", {{VT::I32, VT::I32, VT::I32, VT::I32}, {VT::I32}}, &AbiImports::call);
  add("reply_len", {{}, {VT::I32}}, [](Caller& caller, std::span<const Value>, std::span<Value> r) {
    r[0] = Value::from_i32(static_cast<int32_t>(AbiImports::call_of(caller, "reply_len").reply.size()));
  });
  add("reply_read", {{VT::I32}, {}}, [](Caller& caller, std::span<const Value> a, std::span<Value>) {
    auto& c = AbiImports::call_of(caller, "reply_read");
    auto dst = guest_span(caller.instance(), a[0].i32, static_cast<int32_t>(c.reply.size()));
    std::memcpy(dst.data(), c.reply.data(), c.reply.size());
  });
  return f;
}

}  // namespace airlock::runtime
