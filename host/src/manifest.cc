// The capability manifest (airlock/manifest.h): JSON -> ExtensionOptions, strictly.
#include "airlock/manifest.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <set>

namespace airlock {

namespace {

using nlohmann::json;

struct Reader {
  std::string origin;
  Error bad(const std::string& key, const std::string& why) const {
    return make_error(Code::InvalidArgument, origin + ": '" + key + "' " + why);
  }
  // Every key of `obj` must be one of `known`.
  Status only(const json& obj, const std::string& where, std::initializer_list<const char*> known) const {
    std::set<std::string> k(known.begin(), known.end());
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      if (!k.count(it.key())) {
        std::string list;
        for (const char* n : known) list += std::string(list.empty() ? "" : ", ") + n;
        return bad(where + it.key(), "is not a manifest field (known: " + list + ")");
      }
    }
    return ok_status();
  }
  Result<std::vector<std::string>> strings(const json& v, const std::string& key) const {
    if (!v.is_array()) return bad(key, "must be a list of strings");
    std::vector<std::string> out;
    for (const auto& s : v) {
      if (!s.is_string()) return bad(key, "must be a list of strings");
      out.push_back(s.get<std::string>());
    }
    return out;
  }
  Result<uint32_t> number(const json& v, const std::string& key, uint64_t lo, uint64_t hi) const {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
      return bad(key, "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
    }
    const uint64_t n = v.get<uint64_t>();
    if (n < lo || n > hi) return bad(key, "is " + std::to_string(n) + ", must be from " + std::to_string(lo) + " to " + std::to_string(hi));
    return static_cast<uint32_t>(n);
  }
};

}  // namespace

Result<ExtensionOptions> parse_manifest(std::string_view text, std::string_view origin) {
  Reader rd{std::string(origin)};
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(Code::InvalidArgument, rd.origin + ": not valid JSON");
  if (!j.is_object()) return make_error(Code::InvalidArgument, rd.origin + ": must be a JSON object");
  if (auto st = rd.only(j, "", {"name", "services", "may_call", "readable", "env", "network", "limits", "restart"}); !st.ok()) {
    return st.take_error();
  }
  ExtensionOptions o;
  if (!j.contains("name") || !j["name"].is_string() || j["name"].get<std::string>().empty()) {
    return rd.bad("name", "is required (a non-empty string)");
  }
  o.name = j["name"].get<std::string>();
  if (j.contains("services")) {
    auto v = rd.strings(j["services"], "services");
    if (!v.ok()) return v.take_error();
    o.services = std::move(*v);
  }
  if (j.contains("may_call")) {
    auto v = rd.strings(j["may_call"], "may_call");
    if (!v.ok()) return v.take_error();
    o.may_call = std::move(*v);
  }
  if (j.contains("readable")) {
    auto v = rd.strings(j["readable"], "readable");
    if (!v.ok()) return v.take_error();
    for (const auto& p : *v) {
      if (p.empty() || p[0] != '/') return rd.bad("readable", "entry '" + p + "' is not an absolute path");
    }
    o.readable = std::move(*v);
  }
  if (j.contains("env")) {
    if (!j["env"].is_object()) return rd.bad("env", "must be an object of strings");
    for (auto it = j["env"].begin(); it != j["env"].end(); ++it) {
      if (!it.value().is_string() || it.key().empty() || it.key().find('=') != std::string::npos) {
        return rd.bad("env." + it.key(), "must be a string, under a name without '='");
      }
      o.env.push_back(it.key() + "=" + it.value().get<std::string>());
    }
  }
  if (j.contains("network") && j["network"] != "none") {
    return rd.bad("network", "can only be \"none\" (extensions have no network)");
  }
  if (j.contains("limits")) {
    const json& l = j["limits"];
    if (!l.is_object()) return rd.bad("limits", "must be an object");
    if (auto st = rd.only(l, "limits.", {"memory_mb", "timeout_ms", "total_memory_mb", "start_timeout_ms"}); !st.ok()) {
      return st.take_error();
    }
    SkillLimits sl;
    if (l.contains("memory_mb")) {
      auto n = rd.number(l["memory_mb"], "limits.memory_mb", 1, 4096);
      if (!n.ok()) return n.take_error();
      sl.max_memory_mb = *n;
    }
    if (l.contains("timeout_ms")) {
      auto n = rd.number(l["timeout_ms"], "limits.timeout_ms", 1, 3'600'000);
      if (!n.ok()) return n.take_error();
      sl.timeout_ms = *n;
    }
    if (l.contains("memory_mb") || l.contains("timeout_ms")) o.limits = sl;
    if (l.contains("total_memory_mb")) {
      auto n = rd.number(l["total_memory_mb"], "limits.total_memory_mb", 1, 1u << 20);
      if (!n.ok()) return n.take_error();
      o.max_memory_mb = *n;
    }
    if (l.contains("start_timeout_ms")) {
      auto n = rd.number(l["start_timeout_ms"], "limits.start_timeout_ms", 1, 600'000);
      if (!n.ok()) return n.take_error();
      o.start_timeout = std::chrono::milliseconds(*n);
    }
  }
  if (j.contains("restart")) {
    const json& r = j["restart"];
    if (!r.is_object()) return rd.bad("restart", "must be an object");
    if (auto st = rd.only(r, "restart.", {"mode", "max_restarts", "initial_backoff_ms", "max_backoff_ms"}); !st.ok()) {
      return st.take_error();
    }
    if (r.contains("mode")) {
      if (r["mode"] == "never") {
        o.restart.mode = RestartPolicy::Mode::Never;
      } else if (r["mode"] == "on-failure") {
        o.restart.mode = RestartPolicy::Mode::OnFailure;
      } else {
        return rd.bad("restart.mode", "must be \"never\" or \"on-failure\"");
      }
    }
    if (r.contains("max_restarts")) {
      auto n = rd.number(r["max_restarts"], "restart.max_restarts", 0, 1'000'000);
      if (!n.ok()) return n.take_error();
      o.restart.max_restarts = *n;
    }
    if (r.contains("initial_backoff_ms")) {
      auto n = rd.number(r["initial_backoff_ms"], "restart.initial_backoff_ms", 1, 3'600'000);
      if (!n.ok()) return n.take_error();
      o.restart.initial_backoff = std::chrono::milliseconds(*n);
    }
    if (r.contains("max_backoff_ms")) {
      auto n = rd.number(r["max_backoff_ms"], "restart.max_backoff_ms", 1, 3'600'000);
      if (!n.ok()) return n.take_error();
      o.restart.max_backoff = std::chrono::milliseconds(*n);
    }
  }
  return o;
}

Result<ExtensionOptions> load_manifest(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(Code::NotFound, "manifest '" + path + "': cannot read it");
  std::string text((std::istreambuf_iterator<char>(f)), {});
  if (text.size() > (1u << 20)) return make_error(Code::InvalidArgument, "manifest '" + path + "': larger than 1 MiB");
  return parse_manifest(text, "manifest '" + path + "'");
}

}  // namespace airlock
