// Fuzzes the WebAssembly module reader the extension runs on every skill it is asked to
// load (extension/runtime/wasm_info.cc): parse_wasm, and limit_memory, which re-encodes
// the memory section to cap it, on whatever parses.
//
// Input: the module bytes (a LoadSkill's wasm field).
//
// Checked, beyond "no sanitizer report": what parses is consistent (export names unique
// and found, memory limits in range); limit_memory fails exactly as parse_wasm does,
// refuses imported memory, and otherwise returns a module that parses to the same
// imports and exports, keeps memory 0's minimum and flags, caps its maximum at the limit,
// refuses a minimum above it (ResourceExhausted), and is a fixed point of limit_memory.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "airlock/status.h"
#include "fuzz_check.h"
#include "runtime/wasm_info.h"

namespace {

using namespace airlock;
using namespace airlock::runtime;

constexpr uint64_t kMaxPages32 = 65536;

bool same_error(const Error& a, const Error& b) {
  return a.code == b.code && a.message == b.message && a.trap == b.trap;
}

bool same_imports(const std::vector<WasmImport>& a, const std::vector<WasmImport>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.module == y.module && x.name == y.name && x.kind == y.kind && x.type == y.type;
  });
}

bool same_exports(const std::vector<WasmExport>& a, const std::vector<WasmExport>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.name == y.name && x.kind == y.kind && x.type == y.type;
  });
}

void check_info(const WasmInfo& info) {
  for (const WasmExport& e : info.exports) {
    AIRLOCK_FUZZ_CHECK(info.find_export(e.name) == &e);  // unique: the first is this one
    AIRLOCK_FUZZ_CHECK(!to_string(e.kind).empty() && to_string(e.kind) != "unknown");
  }
  for (const WasmImport& i : info.imports) {
    AIRLOCK_FUZZ_CHECK(info.has_import(i.module, i.name));
    AIRLOCK_FUZZ_CHECK(to_string(i.kind) != "unknown");
  }
  if (info.memory) {
    const WasmMemory& m = *info.memory;
    if (m.max_pages) AIRLOCK_FUZZ_CHECK(*m.max_pages >= m.min_pages);
    if (!m.memory64) {
      AIRLOCK_FUZZ_CHECK(m.min_pages <= kMaxPages32);
      if (m.max_pages) AIRLOCK_FUZZ_CHECK(*m.max_pages <= kMaxPages32);
    }
  }
}

bool imports_memory(const WasmInfo& info) {
  return std::any_of(info.imports.begin(), info.imports.end(),
                     [](const WasmImport& i) { return i.kind == WasmImport::Kind::Memory; });
}

void check_limit(std::span<const uint8_t> bytes, const WasmInfo& info, uint32_t max_pages) {
  Result<std::vector<uint8_t>> r = limit_memory(bytes, max_pages);
  if (imports_memory(info)) {
    AIRLOCK_FUZZ_CHECK(!r.ok() && r.error().code == Code::InvalidArgument);
    return;
  }
  if (!info.memory) {  // nothing to cap: the module comes back as it was
    AIRLOCK_FUZZ_CHECK(r.ok());
    AIRLOCK_FUZZ_CHECK(std::equal(bytes.begin(), bytes.end(), r->begin(), r->end()));
    return;
  }
  const WasmMemory& m = *info.memory;  // memory 0; other memories are capped too, unseen
  const uint64_t limit = m.memory64 ? max_pages : std::min<uint64_t>(max_pages, kMaxPages32);
  const uint64_t cap = m.max_pages ? std::min<uint64_t>(*m.max_pages, limit) : limit;
  if (!r.ok()) {
    AIRLOCK_FUZZ_CHECK(r.error().code == Code::ResourceExhausted);  // some memory too large
    return;
  }
  AIRLOCK_FUZZ_CHECK(m.min_pages <= cap);  // else memory 0 must have been refused

  Result<WasmInfo> patched = parse_wasm(*r);
  AIRLOCK_FUZZ_CHECK(patched.ok());
  AIRLOCK_FUZZ_CHECK(same_imports(info.imports, patched->imports));
  AIRLOCK_FUZZ_CHECK(same_exports(info.exports, patched->exports));
  AIRLOCK_FUZZ_CHECK(patched->memory.has_value());
  const WasmMemory& pm = *patched->memory;
  AIRLOCK_FUZZ_CHECK(!pm.imported && pm.min_pages == m.min_pages);
  AIRLOCK_FUZZ_CHECK(pm.shared == m.shared && pm.memory64 == m.memory64);
  AIRLOCK_FUZZ_CHECK(pm.max_pages && *pm.max_pages == cap);

  Result<std::vector<uint8_t>> twice = limit_memory(*r, max_pages);
  AIRLOCK_FUZZ_CHECK(twice.ok() && *twice == *r);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  Result<WasmInfo> info = parse_wasm(bytes);
  if (!info.ok()) {
    AIRLOCK_FUZZ_CHECK(info.error().code == Code::InvalidArgument);
    Result<std::vector<uint8_t>> r = limit_memory(bytes, 256);
    AIRLOCK_FUZZ_CHECK(!r.ok() && same_error(r.error(), info.error()));
    return 0;
  }
  check_info(*info);
  // Limits at the edges of memory 0's minimum, and the widest one.
  std::vector<uint32_t> limits = {std::numeric_limits<uint32_t>::max()};
  if (info->memory) {
    const uint32_t min = info->memory->min_pages;
    limits.push_back(min);
    if (min > 0) limits.push_back(min - 1);
  } else {
    limits.push_back(16);
  }
  for (uint32_t l : limits) check_limit(bytes, *info, l);
  return 0;
}
