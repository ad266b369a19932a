// `airlock-extension run`: one skill function, called once (or --loop N times) without a
// host, host services stubbed from the command line (docs/CLI.md).
#include <nlohmann/json.hpp>
#include <uv.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>

#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "runtime/skill_runtime.h"

namespace airlock::cli {

namespace {

using Clock = std::chrono::steady_clock;

std::optional<Code> code_from_name(std::string_view name) {
  for (uint8_t i = 0; i <= kMaxCode; ++i) {
    if (to_string(static_cast<Code>(i)) == name) return static_cast<Code>(i);
  }
  return std::nullopt;
}

bool read_all(std::FILE* f, std::string& out) {
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  return !std::ferror(f);
}

// What a stubbed service answers.
using Stub = Result<std::string>;

// --services FILE: a JSON object, name -> reply. A string is the reply itself; an object
// with "error" (a status code name) fails with it and its "message"; any other value is
// replied as its compact JSON text.
bool load_services_file(const std::string& path, std::map<std::string, Stub>& stubs, std::string& why) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    why = "cannot read --services file '" + path + "'";
    return false;
  }
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    why = "--services file '" + path + "' is not a JSON object (name -> reply)";
    return false;
  }
  for (auto& [name, v] : j.items()) {
    if (v.is_string()) {
      stubs.insert_or_assign(name, Stub(v.get<std::string>()));
    } else if (v.is_object() && v.contains("error")) {
      auto code = v["error"].is_string() ? code_from_name(v["error"].get<std::string>()) : std::nullopt;
      if (!code || *code == Code::Ok) {
        why = "--services: service '" + name + "': \"error\" must name a status code (NotFound, Unavailable, ...)";
        return false;
      }
      std::string msg = v.contains("message") && v["message"].is_string() ? v["message"].get<std::string>()
                                                                           : "stubbed failure";
      stubs.insert_or_assign(name, Stub(make_error(*code, std::move(msg))));
    } else {
      stubs.insert_or_assign(name, Stub(v.dump()));
    }
  }
  return true;
}

struct Outcome {
  Result<std::string> result = std::string();
  double ms = 0;
};

double percentile(std::vector<double> sorted, double p) {
  if (sorted.empty()) return 0;
  std::sort(sorted.begin(), sorted.end());
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

void print_json(const Outcome& o, const std::vector<double>* loop_ms) {
  nlohmann::ordered_json j;
  j["ok"] = o.result.ok();
  if (o.result.ok()) {
    j["code"] = "Ok";
    j["message"] = "";
    j["trap"] = nullptr;
    j["output"] = o.result.value();
  } else {
    const Error& e = o.result.error();
    j["code"] = std::string(to_string(e.code));
    j["message"] = e.message;
    j["trap"] = e.code == Code::Trap && e.trap != TrapKind::None ? nlohmann::ordered_json(std::string(to_string(e.trap)))
                                                                  : nlohmann::ordered_json(nullptr);
    j["output"] = "";
  }
  j["ms"] = o.ms;
  if (loop_ms) {
    j["loop"] = {{"calls", loop_ms->size()},
                 {"median_ms", percentile(*loop_ms, 0.5)},
                 {"p99_ms", percentile(*loop_ms, 0.99)},
                 {"min_ms", loop_ms->empty() ? 0 : *std::min_element(loop_ms->begin(), loop_ms->end())},
                 {"max_ms", loop_ms->empty() ? 0 : *std::max_element(loop_ms->begin(), loop_ms->end())}};
  }
  // Output bytes that are not UTF-8 become U+FFFD (JSON strings are text).
  std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << std::endl;
}

}  // namespace

int run_command(const RunArgs& a) {
  // Input: --input STRING, --input -, --input-file PATH, --input-file -, --stdin.
  std::string input;
  if ((a.input_set && a.input == "-") || a.input_file == "-" || a.read_stdin) {
    if (!read_all(stdin, input)) {
      std::cerr << "error: cannot read the input from stdin\n";
      return kExitUsage;
    }
  } else if (!a.input_file.empty()) {
    std::ifstream f(a.input_file, std::ios::binary);
    if (!f) {
      std::cerr << "error: cannot read input file '" << a.input_file << "'\n";
      return kExitUsage;
    }
    input.assign(std::istreambuf_iterator<char>(f), {});
  } else {
    input = a.input;
  }

  std::map<std::string, Stub> stubs;
  if (!a.services_file.empty()) {
    std::string why;
    if (!load_services_file(a.services_file, stubs, why)) {
      std::cerr << "error: " << why << "\n";
      return kExitUsage;
    }
  }
  for (const auto& s : a.services) {
    auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << "error: --service wants NAME=REPLY, got '" << s << "'\n";
      return kExitUsage;
    }
    stubs.insert_or_assign(s.substr(0, eq), Stub(s.substr(eq + 1)));
  }

  runtime::SkillLimits limits;
  limits.timeout_ms = a.timeout_ms;
  limits.max_memory_mb = a.max_memory_mb;
  limits.fresh = a.fresh == "reinstantiate" ? runtime::FreshState::Reinstantiate
               : a.fresh == "reuse"         ? runtime::FreshState::Reuse
                                            : runtime::FreshState::Reset;
  const std::string func = a.func_positional.empty() ? a.func : a.func_positional;

  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = kExitInternal;
  {
    runtime::SkillRuntime rt(&loop);
    rt.set_service_handler([&stubs](const runtime::ServiceCall&, std::string service, std::string,
                                    runtime::ServiceReply reply) {
      auto it = stubs.find(service);
      if (it != stubs.end()) return reply(it->second);
      std::string known;
      for (const auto& [n, s] : stubs) known += (known.empty() ? "" : ", ") + n;
      reply(make_error(Code::NotFound, "no host service '" + service + "' (airlock-extension run stubs only " +
                                           (known.empty() ? std::string("--service/--services, none given")
                                                          : "the services given: " + known) + ")"));
    });
    std::string name = a.skill_path.substr(a.skill_path.find_last_of('/') + 1);
    if (name.size() > 5 && name.ends_with(".wasm")) name.resize(name.size() - 5);
    if (auto st = rt.load_file(name, a.skill_path, limits); !st.ok()) {
      if (a.json) {
        print_json(Outcome{st.error(), 0}, nullptr);
      } else {
        std::cerr << "error: " << st.error().to_string() << "\n";
      }
      rc = kExitLoad;
    } else {
      runtime::CallOptions opts;
      opts.func = func;
      std::vector<double> times;
      Outcome last;
      for (uint32_t i = 0; i < a.loop; ++i) {
        std::optional<Outcome> done;
        const auto t0 = Clock::now();
        rt.call(name, input, opts, [&](Result<std::string> r) {
          done.emplace(Outcome{std::move(r), std::chrono::duration<double, std::milli>(Clock::now() - t0).count()});
        });
        while (!done) {
          if (uv_run(&loop, UV_RUN_ONCE) == 0 && !done) {
            done.emplace(Outcome{make_error(Code::Internal, "the call never completed"), 0});
          }
        }
        last = std::move(*done);
        times.push_back(last.ms);
        if (!last.result.ok()) {
          if (a.loop > 1) {
            last.result = make_error(last.result.error().code,
                                     "call " + std::to_string(i + 1) + " of " + std::to_string(a.loop) + ": " +
                                         last.result.error().message,
                                     last.result.error().trap);
          }
          break;
        }
      }
      const bool looped = a.loop > 1;
      if (a.json) {
        print_json(last, looped ? &times : nullptr);
      } else if (last.result.ok()) {
        const std::string& out = last.result.value();
        std::fwrite(out.data(), 1, out.size(), stdout);
        if ((out.empty() || out.back() != '\n') && isatty(1)) std::fputc('\n', stdout);
        std::fflush(stdout);
      } else {
        std::cerr << "error: " << last.result.error().to_string() << "\n";
      }
      if (looped && !a.json) {
        std::fprintf(stderr, "%zu calls of %s: median %.4f ms, p99 %.4f ms (min %.4f, max %.4f)\n", times.size(),
                     func.c_str(), percentile(times, 0.5), percentile(times, 0.99),
                     *std::min_element(times.begin(), times.end()), *std::max_element(times.begin(), times.end()));
      }
      rc = last.result.ok() ? kExitOk : exit_code_for(last.result.error().code);
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // let closed handles finish
  uv_loop_close(&loop);
  return rc;
}

}  // namespace airlock::cli
