#include "airlock/frame.h"

#include <iterator>
#include <string>

namespace airlock::proto {

std::string_view frame_name(const Frame& f) {
  static constexpr std::string_view kNames[] = {
      "Request", "Response", "Cancel",   "LoadSkill", "UnloadSkill",
      "Ready",   "Health",   "Shutdown", "Log",
  };
  static_assert(std::size(kNames) == std::variant_size_v<Frame>);
  return kNames[f.index()];
}

uint64_t inline_bytes(const Frame& f) {
  if (const auto* r = std::get_if<Request>(&f)) {
    return r->target.size() + r->method.size() + r->payload.size();
  }
  if (const auto* r = std::get_if<Response>(&f)) return r->error.size() + r->payload.size();
  if (const auto* l = std::get_if<LoadSkill>(&f)) {
    return l->name.size() + l->wasm.size() + l->path.size();
  }
  if (const auto* u = std::get_if<UnloadSkill>(&f)) return u->name.size();
  if (const auto* r = std::get_if<Ready>(&f)) return r->name.size() + r->sandbox.size();
  if (const auto* l = std::get_if<Log>(&f)) return l->message.size() + l->skill.size();
  return 0;
}

namespace {

Status check_refs(const std::vector<ShmRef>& refs) {
  if (refs.size() > kMaxShmRefs) {
    return make_error(Code::InvalidArgument, "too many shm_refs: " + std::to_string(refs.size()) +
                                                 " > " + std::to_string(kMaxShmRefs));
  }
  return ok_status();
}

}  // namespace

Status validate(const Frame& f) {
  if (const auto* r = std::get_if<Request>(&f)) return check_refs(r->shm_refs);
  if (const auto* r = std::get_if<Response>(&f)) {
    if (static_cast<uint8_t>(r->code) > kMaxCode) {
      return make_error(Code::InvalidArgument,
                        "Response.code out of range: " + std::to_string(int(r->code)));
    }
    if (static_cast<uint8_t>(r->trap) > kMaxTrapKind) {
      return make_error(Code::InvalidArgument,
                        "Response.trap out of range: " + std::to_string(int(r->trap)));
    }
    return check_refs(r->shm_refs);
  }
  if (const auto* l = std::get_if<LoadSkill>(&f); l && l->compiled.size() > 1) {
    return make_error(Code::InvalidArgument, "LoadSkill.compiled names " + std::to_string(l->compiled.size()) +
                                                 " buffers (at most one)");
  }
  if (const auto* l = std::get_if<Log>(&f); l && l->level > kMaxLogLevel) {
    return make_error(Code::InvalidArgument, "Log.level out of range: " + std::to_string(l->level));
  }
  return ok_status();
}

Response make_response(uint64_t id, Result<std::string> r) {
  Response resp;
  resp.id = id;
  if (r.ok()) {
    resp.payload = std::move(r.value());
  } else {
    resp.code = r.error().code;
    resp.trap = r.error().trap;
    resp.error = r.error().message;
  }
  return resp;
}

Result<std::string> result_of(Response&& r) {
  if (r.code == Code::Ok) return std::move(r.payload);
  return make_error(r.code, std::move(r.error), r.trap);
}

}  // namespace airlock::proto
