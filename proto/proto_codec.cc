#include "airlock/proto_codec.h"

#include <string>
#include <utility>

namespace airlock::proto {
namespace {

namespace v1 = airlock::v1;

// The proto enums mirror status.h so values cross by a plain cast.
#define AIRLOCK_SAME(a, b) static_assert(int(a) == int(b), #a " != " #b)
AIRLOCK_SAME(v1::CODE_OK, Code::Ok);
AIRLOCK_SAME(v1::CODE_NOT_FOUND, Code::NotFound);
AIRLOCK_SAME(v1::CODE_INVALID_ARGUMENT, Code::InvalidArgument);
AIRLOCK_SAME(v1::CODE_TRAP, Code::Trap);
AIRLOCK_SAME(v1::CODE_TIMEOUT, Code::Timeout);
AIRLOCK_SAME(v1::CODE_CANCELLED, Code::Cancelled);
AIRLOCK_SAME(v1::CODE_RESOURCE_EXHAUSTED, Code::ResourceExhausted);
AIRLOCK_SAME(v1::CODE_PERMISSION_DENIED, Code::PermissionDenied);
AIRLOCK_SAME(v1::CODE_EXTENSION_CRASHED, Code::ExtensionCrashed);
AIRLOCK_SAME(v1::CODE_UNAVAILABLE, Code::Unavailable);
AIRLOCK_SAME(v1::CODE_INTERNAL, Code::Internal);
AIRLOCK_SAME(v1::Code_MAX, kMaxCode);
AIRLOCK_SAME(v1::TRAP_KIND_NONE, TrapKind::None);
AIRLOCK_SAME(v1::TRAP_KIND_UNREACHABLE, TrapKind::Unreachable);
AIRLOCK_SAME(v1::TRAP_KIND_MEMORY_OUT_OF_BOUNDS, TrapKind::MemoryOutOfBounds);
AIRLOCK_SAME(v1::TRAP_KIND_STACK_OVERFLOW, TrapKind::StackOverflow);
AIRLOCK_SAME(v1::TRAP_KIND_DIVIDE_BY_ZERO, TrapKind::DivideByZero);
AIRLOCK_SAME(v1::TRAP_KIND_INTEGER_OVERFLOW, TrapKind::IntegerOverflow);
AIRLOCK_SAME(v1::TRAP_KIND_INVALID_CONVERSION, TrapKind::InvalidConversion);
AIRLOCK_SAME(v1::TRAP_KIND_INDIRECT_CALL, TrapKind::IndirectCall);
AIRLOCK_SAME(v1::TRAP_KIND_OTHER, TrapKind::Other);
AIRLOCK_SAME(v1::TrapKind_MAX, kMaxTrapKind);
#undef AIRLOCK_SAME

Error invalid(std::string what) {
  return make_error(Code::InvalidArgument, "invalid protobuf frame: " + std::move(what));
}

void put_refs(const std::vector<ShmRef>& refs,
              google::protobuf::RepeatedPtrField<v1::ShmRef>* out) {
  out->Reserve(static_cast<int>(refs.size()));
  for (const ShmRef& r : refs) {
    v1::ShmRef* p = out->Add();
    p->set_buffer_id(r.buffer_id);
    p->set_offset(r.offset);
    p->set_length(r.length);
  }
}

std::vector<ShmRef> get_refs(const google::protobuf::RepeatedPtrField<v1::ShmRef>& in) {
  std::vector<ShmRef> refs;
  refs.reserve(in.size());
  for (const v1::ShmRef& p : in) refs.push_back({p.buffer_id(), p.offset(), p.length()});
  return refs;
}

struct ToProto {
  v1::Frame* m;
  void operator()(const Request& r) const {
    v1::Request* p = m->mutable_request();
    p->set_id(r.id);
    p->set_parent_id(r.parent_id);
    p->set_timeout_us(r.timeout_us);
    p->set_target(r.target);
    p->set_method(r.method);
    p->set_payload(r.payload);
    put_refs(r.shm_refs, p->mutable_shm_refs());
  }
  void operator()(const Response& r) const {
    v1::Response* p = m->mutable_response();
    p->set_id(r.id);
    p->set_code(static_cast<v1::Code>(r.code));
    p->set_trap(static_cast<v1::TrapKind>(r.trap));
    p->set_error(r.error);
    p->set_payload(r.payload);
    put_refs(r.shm_refs, p->mutable_shm_refs());
  }
  void operator()(const Cancel& c) const { m->mutable_cancel()->set_id(c.id); }
  void operator()(const LoadSkill& l) const {
    v1::LoadSkill* p = m->mutable_load_skill();
    p->set_id(l.id);
    p->set_name(l.name);
    p->set_wasm(l.wasm);
    p->set_path(l.path);
    p->set_max_memory_pages(l.max_memory_pages);
    p->set_timeout_ms(l.timeout_ms);
    put_refs(l.compiled, p->mutable_compiled());
  }
  void operator()(const UnloadSkill& x) const {
    v1::UnloadSkill* p = m->mutable_unload_skill();
    p->set_id(x.id);
    p->set_name(x.name);
  }
  void operator()(const Ready& r) const {
    v1::Ready* p = m->mutable_ready();
    p->set_protocol_version(r.protocol_version);
    p->set_pid(r.pid);
    p->set_name(r.name);
    p->set_sandbox(r.sandbox);
  }
  void operator()(const Health& h) const { m->mutable_health()->set_id(h.id); }
  void operator()(const Shutdown& s) const { m->mutable_shutdown()->set_grace_ms(s.grace_ms); }
  void operator()(const Log& l) const {
    v1::Log* p = m->mutable_log();
    p->set_level(l.level);
    p->set_message(l.message);
    p->set_skill(l.skill);
  }
};

// The one field that can be large (payload, or module bytes), so the moving overloads can
// swap it across instead of copying it. nullptr for frames without one.
std::string* big_field(Frame& f) {
  if (auto* r = std::get_if<Request>(&f)) return &r->payload;
  if (auto* r = std::get_if<Response>(&f)) return &r->payload;
  if (auto* l = std::get_if<LoadSkill>(&f)) return &l->wasm;
  return nullptr;
}

std::string* big_field(v1::Frame& m) {
  switch (m.kind_case()) {
    case v1::Frame::kRequest: return m.mutable_request()->mutable_payload();
    case v1::Frame::kResponse: return m.mutable_response()->mutable_payload();
    case v1::Frame::kLoadSkill: return m.mutable_load_skill()->mutable_wasm();
    default: return nullptr;
  }
}

Result<Frame> convert(const v1::Frame& m) {
  switch (m.kind_case()) {
    case v1::Frame::kRequest: {
      const v1::Request& p = m.request();
      return Frame(Request{p.id(), p.parent_id(), p.timeout_us(), p.target(), p.method(),
                           p.payload(), get_refs(p.shm_refs())});
    }
    case v1::Frame::kResponse: {
      const v1::Response& p = m.response();
      if (p.code() < 0 || p.code() > int(kMaxCode)) {
        return invalid("Response.code out of range: " + std::to_string(p.code()));
      }
      if (p.trap() < 0 || p.trap() > int(kMaxTrapKind)) {
        return invalid("Response.trap out of range: " + std::to_string(p.trap()));
      }
      return Frame(Response{p.id(), static_cast<Code>(p.code()), static_cast<TrapKind>(p.trap()),
                            p.error(), p.payload(), get_refs(p.shm_refs())});
    }
    case v1::Frame::kCancel: return Frame(Cancel{m.cancel().id()});
    case v1::Frame::kLoadSkill: {
      const v1::LoadSkill& p = m.load_skill();
      return Frame(
          LoadSkill{p.id(), p.name(), p.wasm(), p.path(), p.max_memory_pages(), p.timeout_ms(), get_refs(p.compiled())});
    }
    case v1::Frame::kUnloadSkill:
      return Frame(UnloadSkill{m.unload_skill().id(), m.unload_skill().name()});
    case v1::Frame::kReady: {
      const v1::Ready& p = m.ready();
      return Frame(Ready{p.protocol_version(), p.pid(), p.name(), p.sandbox()});
    }
    case v1::Frame::kHealth: return Frame(Health{m.health().id()});
    case v1::Frame::kShutdown: return Frame(Shutdown{m.shutdown().grace_ms()});
    case v1::Frame::kLog: {
      const v1::Log& p = m.log();
      if (p.level() > kMaxLogLevel)
        return invalid("Log.level out of range: " + std::to_string(p.level()));
      return Frame(Log{static_cast<uint8_t>(p.level()), p.message(), p.skill()});
    }
    case v1::Frame::KIND_NOT_SET: break;
  }
  return invalid("no frame set (empty oneof)");
}

// validate() and the cheap size bound, before anything is copied into msg.
Status check_before_encoding(const Frame& f, uint32_t max_frame) {
  if (Status s = validate(f); !s.ok()) return s;
  if (const uint64_t at_least = inline_bytes(f); at_least > max_frame) {
    return make_error(Code::ResourceExhausted, "frame of at least " + std::to_string(at_least) +
                                                   " bytes exceeds max frame size " +
                                                   std::to_string(max_frame) + " bytes");
  }
  return ok_status();
}

}  // namespace

void to_proto(const Frame& f, v1::Frame* msg) {
  msg->Clear();
  std::visit(ToProto{msg}, f);
}

void to_proto(Frame&& f, v1::Frame* msg) {
  std::string big;
  if (std::string* b = big_field(f)) big.swap(*b);
  to_proto(std::as_const(f), msg);
  if (std::string* b = big_field(*msg)) b->swap(big);
}

Status encode_proto(Frame&& f, v1::Frame* msg, uint32_t max_frame) {
  if (Status s = check_before_encoding(f, max_frame); !s.ok()) return s;
  to_proto(std::move(f), msg);
  return check_frame_size(*msg, max_frame);
}

Status encode_proto(const Frame& f, v1::Frame* msg, uint32_t max_frame) {
  if (Status s = check_before_encoding(f, max_frame); !s.ok()) return s;
  to_proto(f, msg);
  return check_frame_size(*msg, max_frame);
}

Status check_frame_size(const v1::Frame& msg, uint32_t max_frame) {
  const size_t size = msg.ByteSizeLong();
  if (size > max_frame) {
    return make_error(Code::ResourceExhausted, "encoded frame of " + std::to_string(size) +
                                                   " bytes exceeds max frame size " +
                                                   std::to_string(max_frame) + " bytes");
  }
  return ok_status();
}

Result<Frame> from_proto(const v1::Frame& msg) {
  Result<Frame> r = convert(msg);
  if (!r.ok()) return r;
  if (Status s = validate(r.value()); !s.ok()) return invalid(s.error().message);
  return r;
}

Result<Frame> from_proto(v1::Frame&& msg) {
  std::string big;
  if (std::string* b = big_field(msg)) big.swap(*b);
  Result<Frame> r = from_proto(std::as_const(msg));
  if (r.ok()) {
    if (std::string* b = big_field(r.value())) b->swap(big);
  }
  return r;
}

}  // namespace airlock::proto
