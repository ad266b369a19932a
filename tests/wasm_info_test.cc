#include "runtime/wasm_info.h"

#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <string>
#include <vector>

namespace airlock::runtime {
namespace {

using Bytes = std::vector<uint8_t>;
using engine::FuncType;
using engine::ValType;
using Kind = WasmImport::Kind;

// --- a tiny module builder ---------------------------------------------------------

constexpr uint8_t kI32 = 0x7f, kI64 = 0x7e, kF32 = 0x7d, kF64 = 0x7c, kV128 = 0x7b, kFuncref = 0x70;

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes leb(uint64_t v) {
  Bytes out;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out.push_back(v ? b | 0x80 : b);
  } while (v);
  return out;
}

Bytes str(std::string_view s) { return cat({leb(s.size()), Bytes(s.begin(), s.end())}); }
Bytes vec(std::initializer_list<Bytes> items) { return cat({leb(items.size()), cat(items)}); }
Bytes section(uint8_t id, const Bytes& payload) { return cat({{id}, leb(payload.size()), payload}); }
Bytes header() { return {0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}; }
Bytes module(std::initializer_list<Bytes> sections) { return cat({header(), cat(sections)}); }

Bytes functype(const Bytes& params, const Bytes& results) {
  return cat({{0x60}, leb(params.size()), params, leb(results.size()), results});
}
Bytes limits(uint8_t flags, uint64_t min, std::optional<uint64_t> max = std::nullopt) {
  return cat({{flags}, leb(min), max ? leb(*max) : Bytes{}});
}
Bytes import(std::string_view m, std::string_view n, uint8_t kind, const Bytes& desc) {
  return cat({str(m), str(n), {kind}, desc});
}
Bytes export_(std::string_view n, uint8_t kind, uint32_t index) { return cat({str(n), {kind}, leb(index)}); }
Bytes body(const Bytes& code) { return cat({leb(code.size()), code}); }
Bytes memory_section(const Bytes& limits) { return section(5, vec({limits})); }

// A skill-shaped module: two function imports (so defined functions start at 2), a
// table and global import, four functions (one with a v128 type it never exports),
// a memory, a global, six exports, code, and custom sections first and last. Every
// section but memory is fixed, so limit_memory results can be compared whole.
Bytes sample(const Bytes& memory = memory_section(limits(0x01, 2, 300))) {
  return module({
      section(0, cat({str("producers"), {1, 2, 3}})),
      section(1, vec({functype({kI32, kI32}, {}),             // 0 airlock.output
                      functype({kI32}, {kI32}),               // 1 airlock.wait
                      functype({}, {kI32}),                   // 2 airlock_abi_version
                      functype({kI32, kI32}, {kI32}),         // 3 run
                      functype({kV128}, {}),                  // 4 internal SIMD helper
                      functype({kI64, kF32, kF64}, {kF64})})),  // 5 f
      section(2, vec({import("airlock", "output", 0, leb(0)),
                      import("airlock", "wait", 0, leb(1)),
                      import("env", "table", 1, cat({{kFuncref}, limits(0x00, 1)})),
                      import("env", "g", 3, {kI64, 0x01})})),
      section(3, vec({leb(2), leb(3), leb(4), leb(5)})),  // functions 2..5
      memory,
      section(6, vec({{kI32, 0x00, 0x41, 0x00, 0x0b}})),  // global 1
      section(7, vec({export_("memory", 2, 0), export_("airlock_abi_version", 0, 2),
                      export_("run", 0, 3), export_("f", 0, 5), export_("g", 3, 1),
                      export_("output", 0, 0)})),
      section(10, vec({body({0x00, 0x41, 0x01, 0x0b}), body({0x00, 0x20, 0x00, 0x0b}),
                       body({0x00, 0x0b}), body({0x00, 0x20, 0x02, 0x0b})})),
      section(0, cat({str("name")})),
  });
}

// A module with a type section followed by the given sections.
Bytes with_types_and(const Bytes& types, std::initializer_list<Bytes> sections) {
  Bytes out = module({section(1, types)});
  for (const Bytes& s : sections) out.insert(out.end(), s.begin(), s.end());
  return out;
}

std::string error_of(std::span<const uint8_t> bytes) {
  auto r = parse_wasm(bytes);
  if (r.ok()) return "ok";
  EXPECT_EQ(r.error().code, Code::InvalidArgument) << r.error().message;
  return r.error().message;
}

// --- parsing -------------------------------------------------------------------------

TEST(WasmInfo, ParsesSkillShapedModule) {
  Bytes bytes = sample();
  auto info = parse_wasm(bytes);
  ASSERT_TRUE(info.ok()) << info.error().message;

  ASSERT_EQ(info->imports.size(), 4u);
  EXPECT_EQ(info->imports[0].module, "airlock");
  EXPECT_EQ(info->imports[0].name, "output");
  EXPECT_EQ(info->imports[0].kind, Kind::Func);
  EXPECT_EQ(info->imports[0].type, (FuncType{{ValType::I32, ValType::I32}, {}}));
  EXPECT_EQ(info->imports[1].name, "wait");
  EXPECT_EQ(info->imports[1].type, (FuncType{{ValType::I32}, {ValType::I32}}));
  EXPECT_EQ(info->imports[2].kind, Kind::Table);
  EXPECT_EQ(info->imports[3].kind, Kind::Global);
  EXPECT_EQ(info->imports[3].type, FuncType{});

  ASSERT_EQ(info->exports.size(), 6u);
  const std::vector<std::pair<std::string, Kind>> expected = {
      {"memory", Kind::Memory}, {"airlock_abi_version", Kind::Func}, {"run", Kind::Func},
      {"f", Kind::Func},        {"g", Kind::Global},                 {"output", Kind::Func}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(info->exports[i].name, expected[i].first);
    EXPECT_EQ(info->exports[i].kind, expected[i].second);
  }
  EXPECT_EQ(info->find_export("airlock_abi_version")->type, (FuncType{{}, {ValType::I32}}));
  EXPECT_EQ(info->find_export("run")->type, (FuncType{{ValType::I32, ValType::I32}, {ValType::I32}}));
  EXPECT_EQ(info->find_export("f")->type,
            (FuncType{{ValType::I64, ValType::F32, ValType::F64}, {ValType::F64}}));
  // Re-exporting an import resolves through the import's type.
  EXPECT_EQ(info->find_export("output")->type, (FuncType{{ValType::I32, ValType::I32}, {}}));
  EXPECT_EQ(info->find_export("run2"), nullptr);

  EXPECT_TRUE(info->has_import("airlock", "wait"));
  EXPECT_FALSE(info->has_import("airlock", "call"));
  EXPECT_FALSE(info->has_import("env", "output"));

  ASSERT_TRUE(info->memory.has_value());
  EXPECT_FALSE(info->memory->imported);
  EXPECT_EQ(info->memory->min_pages, 2u);
  EXPECT_EQ(info->memory->max_pages, 300u);
  EXPECT_FALSE(info->memory->shared);
  EXPECT_FALSE(info->memory->memory64);
}

TEST(WasmInfo, MemoryVariants) {
  auto no_max = parse_wasm(sample(memory_section(limits(0x00, 1))));
  ASSERT_TRUE(no_max.ok()) << no_max.error().message;
  EXPECT_EQ(no_max->memory->min_pages, 1u);
  EXPECT_EQ(no_max->memory->max_pages, std::nullopt);

  auto shared = parse_wasm(sample(memory_section(limits(0x03, 1, 10))));
  ASSERT_TRUE(shared.ok()) << shared.error().message;
  EXPECT_TRUE(shared->memory->shared);
  EXPECT_FALSE(shared->memory->memory64);

  auto wide = parse_wasm(sample(memory_section(limits(0x05, 1, 100000))));
  ASSERT_TRUE(wide.ok()) << wide.error().message;
  EXPECT_TRUE(wide->memory->memory64);
  EXPECT_EQ(wide->memory->max_pages, 100000u);

  auto none = parse_wasm(module({}));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->memory.has_value());

  auto imported = parse_wasm(module({section(2, vec({import("env", "memory", 2, limits(0x01, 1, 2))}))}));
  ASSERT_TRUE(imported.ok()) << imported.error().message;
  EXPECT_TRUE(imported->memory->imported);
  EXPECT_EQ(imported->memory->max_pages, 2u);
  EXPECT_EQ(imported->imports[0].kind, Kind::Memory);

  EXPECT_EQ(error_of(sample(memory_section(limits(0x01, 5, 3)))),
            "minimum 5 above maximum 3 in section 5 at offset 125");
  EXPECT_EQ(error_of(sample(memory_section(limits(0x00, 65537)))),
            "memory size above 65536 pages (4 GiB) in section 5 at offset 125");
  EXPECT_EQ(error_of(sample(memory_section(limits(0x08, 1)))),
            "invalid limits flags 0x08 in section 5 at offset 125");
}

TEST(WasmInfo, HeaderErrors) {
  EXPECT_EQ(error_of(Bytes{}), "not a WebAssembly module (empty)");
  EXPECT_EQ(error_of(Bytes{0x7f, 'E', 'L', 'F', 2, 1, 1, 0}), "not a WebAssembly module (bad magic)");
  EXPECT_EQ(error_of(Bytes{'a'}), "not a WebAssembly module (bad magic)");
  EXPECT_EQ(error_of(Bytes{0x00, 'a', 's', 'm', 0x02, 0, 0, 0}), "unsupported version 2");
  EXPECT_EQ(error_of(Bytes{0x00, 'a', 's', 'm', 0x0d, 0, 0x01, 0}),
            "a WebAssembly component, not a core module (build for WASI preview 1)");
  EXPECT_EQ(error_of(Bytes{0x00, 'a', 's', 'm', 0x01}), "truncated module header (5 bytes)");
}

TEST(WasmInfo, EveryTruncationIsAnErrorExceptAtSectionBoundaries) {
  Bytes bytes = sample();
  // A prefix ending exactly between sections is a complete (smaller) module.
  std::vector<size_t> boundaries = {8};
  for (size_t pos = 8; pos < bytes.size();) {
    size_t size = 0, shift = 0, p = pos + 1;
    for (uint8_t b = 0x80; b & 0x80; shift += 7) size |= size_t((b = bytes[p++]) & 0x7f) << shift;
    pos = p + size;
    boundaries.push_back(pos);
  }
  ASSERT_EQ(boundaries.back(), bytes.size());
  ASSERT_EQ(boundaries.size(), 10u);  // header + 9 sections

  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = parse_wasm(std::span(bytes).first(n));
    bool boundary = std::find(boundaries.begin(), boundaries.end(), n) != boundaries.end();
    if (boundary) {
      EXPECT_TRUE(r.ok()) << n << ": " << r.error().message;
    } else {
      ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes parsed";
      EXPECT_EQ(r.error().code, Code::InvalidArgument);
      if (n > 0) {
        EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << n << ": " << r.error().message;
      }
    }
  }
  // One exactly: the function section (id 3, 5 payload bytes) starts at offset 115.
  EXPECT_EQ(error_of(std::span(bytes).first(119)),
            "truncated section 3 at offset 117 (declares 5 bytes, 2 present)");
}

TEST(WasmInfo, Leb128) {
  Bytes types = functype({}, {});
  // Padded to the full 5 bytes is valid (linkers do it); 6 bytes is not.
  EXPECT_EQ(error_of(module({section(1, cat({{0x81, 0x80, 0x80, 0x80, 0x00}, types}))})), "ok");
  EXPECT_EQ(error_of(module({section(1, cat({{0x81, 0x80, 0x80, 0x80, 0x80, 0x00}, types}))})),
            "LEB128 longer than 5 bytes in section 1 at offset 10");
  // 5th byte with bits beyond 32.
  EXPECT_EQ(error_of(module({section(1, Bytes{0xff, 0xff, 0xff, 0xff, 0x1f})})),
            "LEB128 value too large for 32 bits in section 1 at offset 10");
  EXPECT_EQ(error_of(module({section(1, Bytes{0xff, 0xff, 0xff, 0xff, 0x0f})})),
            "truncated section 1 at offset 15");
  // A section size padded to 5 bytes.
  EXPECT_EQ(error_of(cat({header(), {0x01, 0x84, 0x80, 0x80, 0x80, 0x00, 0x01}, types})), "ok");
  // Over-long at module level (section size).
  EXPECT_EQ(error_of(cat({header(), {0x01, 0x84, 0x80, 0x80, 0x80, 0x80, 0x00}})),
            "LEB128 longer than 5 bytes in section 1 at offset 9");
}

TEST(WasmInfo, IndexErrors) {
  Bytes types = vec({functype({}, {}), functype({kI32}, {})});
  EXPECT_EQ(error_of(with_types_and(types, {section(3, vec({leb(1), leb(2)}))})),
            "type index 2 out of range (2 types) in section 3 at offset 22");
  EXPECT_EQ(error_of(with_types_and(types, {section(2, vec({import("a", "b", 0, leb(7))}))})),
            "type index 7 out of range (2 types) in section 2 at offset 26");
  EXPECT_EQ(error_of(with_types_and(types, {section(2, vec({import("a", "b", 4, {0x00, 0x02})}))})),
            "type index 2 out of range (2 types) in section 2 at offset 27");

  Bytes funcs = section(3, vec({leb(0), leb(1)}));
  EXPECT_EQ(error_of(with_types_and(types, {funcs, section(7, vec({export_("run", 0, 1)}))})), "ok");
  EXPECT_EQ(error_of(with_types_and(types, {funcs, section(7, vec({export_("run", 0, 2)}))})),
            "function index 2 out of range (2 functions) in section 7 at offset 31");
  EXPECT_EQ(error_of(with_types_and(types, {funcs, section(7, vec({export_("memory", 2, 0)}))})),
            "memory index 0 out of range (0 memories) in section 7 at offset 34");
  EXPECT_EQ(error_of(with_types_and(types, {funcs, section(7, vec({export_("g", 3, 0)}))})),
            "global index 0 out of range (0 globals) in section 7 at offset 29");

  // Index spaces count imports first, then the module's own entries.
  Bytes globals = cat({section(2, vec({import("a", "g", 3, {kI32, 0x00})})),
                       section(6, vec({{kI32, 0x00, 0x41, 0x00, 0x0b}}))});
  EXPECT_EQ(error_of(with_types_and(types, {globals, section(7, vec({export_("g", 3, 1)}))})), "ok");
  EXPECT_EQ(error_of(with_types_and(types, {globals, section(7, vec({export_("g", 3, 2)}))})),
            "global index 2 out of range (2 globals) in section 7 at offset 42");
}

TEST(WasmInfo, ValueTypes) {
  // v128 and references are fine in a type no import or export uses...
  // (v128, funcref, (ref func)) -> ((ref null extern), externref)
  Bytes refs = {0x60, 0x03, kV128, kFuncref, 0x64, 0x70, 0x02, 0x63, 0x6f, 0x6f};
  Bytes types = vec({refs, functype({kI32}, {kI32})});
  EXPECT_EQ(error_of(with_types_and(types, {section(3, vec({leb(0), leb(1)})),
                                            section(7, vec({export_("ok", 0, 1)}))})),
            "ok");
  // ...but not in one that crosses the engine interface.
  EXPECT_EQ(error_of(with_types_and(types, {section(3, vec({leb(0), leb(1)})),
                                            section(7, vec({export_("simd", 0, 0)}))})),
            "unsupported value type 0x7b in type 0, used by export \"simd\" in section 7 at offset 40");
  EXPECT_EQ(error_of(with_types_and(types, {section(2, vec({import("m", "f", 0, leb(0))}))})),
            "unsupported value type 0x7b in type 0, used by import m.f in section 2 at offset 34");
  EXPECT_EQ(error_of(module({section(1, vec({functype({0x40}, {})}))})),
            "unknown value type 0x40 in section 1 at offset 13");
  EXPECT_EQ(error_of(module({section(1, vec({Bytes{0x5f, 0x00}}))})),
            "unsupported type form 0x5f for type 0 in section 1 at offset 11");
}

TEST(WasmInfo, StructureErrors) {
  Bytes types = section(1, vec({functype({}, {})}));
  EXPECT_EQ(error_of(module({types, types})), "duplicate section 1 at offset 14");
  EXPECT_EQ(error_of(module({section(3, vec({})), types})), "out of order section 1 at offset 11");
  // The tag section (13) sits between memory (5) and global (6).
  EXPECT_EQ(error_of(module({section(5, vec({})), section(13, vec({})), section(6, vec({}))})), "ok");
  EXPECT_EQ(error_of(module({section(6, vec({})), section(13, vec({}))})),
            "out of order section 13 at offset 11");
  EXPECT_EQ(error_of(module({section(14, {})})), "unknown section id 14 at offset 8");
  EXPECT_EQ(error_of(module({section(1, cat({vec({functype({}, {})}), {0, 0}}))})),
            "2 trailing bytes in section 1 at offset 14");
  EXPECT_EQ(error_of(module({section(2, vec({import("a", "b", 5, {})}))})),
            "unknown import kind 0x05 in section 2 at offset 15");
  EXPECT_EQ(error_of(module({section(2, vec({import("a", "b", 3, {kI32, 2})}))})),
            "invalid global mutability 0x02 in section 2 at offset 17");
  EXPECT_EQ(error_of(module({section(2, vec({import("a", "t", 1, cat({{kI32}, limits(0, 1)}))}))})),
            "table element type 0x7f is not a reference in section 2 at offset 16");
  EXPECT_EQ(error_of(module({section(2, vec({import("a", "t", 1, cat({{kFuncref}, limits(2, 1)}))}))})),
            "invalid limits flags 0x02 in section 2 at offset 17");
  EXPECT_EQ(error_of(module({section(5, vec({limits(0, 1)})),
                             section(7, vec({export_("m", 2, 0), export_("m", 2, 0)}))})),
            "duplicate export \"m\" in section 7 at offset 20");
  EXPECT_EQ(error_of(module({section(5, vec({limits(0, 1)})), section(7, vec({export_("m", 5, 0)}))})),
            "unknown export kind 0x05 in section 7 at offset 18");
}

// --- limit_memory --------------------------------------------------------------------

Bytes limited(const Bytes& bytes, uint32_t max_pages) {
  auto r = limit_memory(bytes, max_pages);
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? *r : Bytes{};
}

TEST(LimitMemory, LowersMaximum) {
  Bytes out = limited(sample(), 100);
  EXPECT_EQ(out, sample(memory_section(limits(0x01, 2, 100))));  // all other bytes identical
  auto info = parse_wasm(out);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->memory->min_pages, 2u);
  EXPECT_EQ(info->memory->max_pages, 100u);
}

TEST(LimitMemory, NeverRaisesMaximumOrMinimum) {
  EXPECT_EQ(limited(sample(), 1000), sample());
  EXPECT_EQ(limited(sample(), 300), sample());
  EXPECT_EQ(limited(sample(), 2), sample(memory_section(limits(0x01, 2, 2))));
}

TEST(LimitMemory, AddsMissingMaximum) {
  Bytes out = limited(sample(memory_section(limits(0x00, 1))), 1024);
  EXPECT_EQ(out, sample(memory_section(limits(0x01, 1, 1024))));
  auto info = parse_wasm(out);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->memory->max_pages, 1024u);
  // A 32-bit memory cannot have a maximum above 4 GiB, whatever the limit.
  EXPECT_EQ(limited(sample(memory_section(limits(0x00, 1))), 100000),
            sample(memory_section(limits(0x01, 1, 65536))));
}

TEST(LimitMemory, KeepsSharedAndMemory64Flags) {
  EXPECT_EQ(limited(sample(memory_section(limits(0x02, 1))), 64), sample(memory_section(limits(0x03, 1, 64))));
  EXPECT_EQ(limited(sample(memory_section(limits(0x04, 1))), 100000),
            sample(memory_section(limits(0x05, 1, 100000))));
  EXPECT_EQ(limited(sample(memory_section(limits(0x07, 1, 9))), 64), sample(memory_section(limits(0x07, 1, 9))));
}

TEST(LimitMemory, RefusesMinimumAboveLimit) {
  auto r = limit_memory(sample(memory_section(limits(0x00, 2000))), 1024);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::ResourceExhausted);
  EXPECT_EQ(r.error().message, "skill needs 2000 pages initially, above the limit of 1024 pages (64 MiB)");

  r = limit_memory(sample(), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "skill needs 2 pages initially, above the limit of 1 pages (0.0625 MiB)");
}

TEST(LimitMemory, ReencodesOnlyTheMemorySection) {
  // Padded LEBs everywhere: the memory section's size and limits come out minimal,
  // its entry count and every other section stay exactly as written.
  Bytes padded_types = cat({{0x01, 0x84, 0x80, 0x80, 0x80, 0x00}, vec({functype({}, {})})});
  Bytes padded_memory = {0x05, 0x88, 0x80, 0x80, 0x80, 0x00, 0x81, 0x80, 0x00, 0x00, 0x82, 0x80, 0x80, 0x00};
  ASSERT_EQ(error_of(cat({header(), padded_types, padded_memory})), "ok");
  EXPECT_EQ(limited(cat({header(), padded_types, padded_memory}), 64),
            cat({header(), padded_types, {0x05, 0x06, 0x81, 0x80, 0x00, 0x01, 0x02, 0x40}}));
}

TEST(LimitMemory, LimitsEveryDefinedMemory) {
  Bytes two = module({section(5, vec({limits(0x00, 1), limits(0x01, 1, 500)}))});
  EXPECT_EQ(limited(two, 64), module({section(5, vec({limits(0x01, 1, 64), limits(0x01, 1, 64)}))}));
}

TEST(LimitMemory, NoMemoryAndImportedMemory) {
  Bytes none = module({section(1, vec({functype({}, {})}))});
  EXPECT_EQ(limited(none, 64), none);

  auto r = limit_memory(module({section(2, vec({import("env", "memory", 2, limits(0x00, 1))}))}), 64);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::InvalidArgument);
  EXPECT_EQ(r.error().message, "imported memory is not supported");

  r = limit_memory(Bytes{1, 2, 3}, 64);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "not a WebAssembly module (bad magic)");
}

// --- robustness ----------------------------------------------------------------------

// Whatever parses must survive limit_memory, and its result must parse with the limit.
void check_consistent(const Bytes& bytes) {
  auto info = parse_wasm(bytes);
  auto out = limit_memory(bytes, 64);
  if (!info.ok()) {
    EXPECT_FALSE(out.ok());
    return;
  }
  if (!out.ok()) {
    EXPECT_TRUE(out.error().code == Code::ResourceExhausted ||
                out.error().message == "imported memory is not supported")
        << out.error().message;
    return;
  }
  auto again = parse_wasm(*out);
  ASSERT_TRUE(again.ok()) << again.error().message;
  if (again->memory) {
    EXPECT_LE(*again->memory->max_pages, 64u);
  }
  EXPECT_EQ(again->exports.size(), info->exports.size());
  EXPECT_EQ(again->imports.size(), info->imports.size());
}

TEST(WasmInfoFuzz, ByteFlips) {
  const Bytes original = sample();
  auto base = parse_wasm(original);
  ASSERT_TRUE(base.ok());
  ASSERT_EQ(base->exports.size(), 6u);
  ASSERT_EQ(base->memory->max_pages, 300u);

  int parsed = 0, failed = 0;
  for (size_t i = 0; i < original.size(); ++i) {
    uint8_t b = original[i];
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0x01}, uint8_t{0x7f}, uint8_t{0x80}, uint8_t{0xff},
                      uint8_t(b ^ 0x01), uint8_t(b ^ 0x40), uint8_t(b ^ 0x80)}) {
      if (v == b) continue;
      Bytes m = original;  // exact size, so ASan sees any read past the end
      m[i] = v;
      (parse_wasm(m).ok() ? parsed : failed)++;
      check_consistent(m);
    }
  }
  // Both outcomes happen: flips in names and code still parse, structural ones do not.
  EXPECT_GT(parsed, 100);
  EXPECT_GT(failed, 100);
}

TEST(WasmInfoFuzz, RandomMutations) {
  const Bytes original = sample();
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 20000; ++iter) {
    Bytes m = original;
    int edits = 1 + rng() % 4;
    for (int e = 0; e < edits && !m.empty(); ++e) {
      size_t at = 8 + rng() % (m.size() - 8 + 1);
      switch (rng() % 3) {
        case 0: if (at < m.size()) m[at] = uint8_t(rng()); break;
        case 1: m.insert(m.begin() + at, uint8_t(rng())); break;
        case 2: if (at < m.size()) m.erase(m.begin() + at); break;
      }
    }
    check_consistent(m);
  }
  // Random bytes behind a valid header.
  for (int iter = 0; iter < 5000; ++iter) {
    Bytes m = header();
    for (size_t n = rng() % 64; n > 0; --n) m.push_back(uint8_t(rng()));
    check_consistent(m);
  }
}

}  // namespace
}  // namespace airlock::runtime
