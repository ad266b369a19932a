// Engine-independent reading and patching of WebAssembly binaries.
//
// The runtime inspects a skill before handing it to the engine, so that load errors
// name the skill's own imports and exports rather than repeating an engine message,
// and it caps linear memory by rewriting the module, which behaves the same on every
// engine. Only the module structure is decoded, never code or data: a module that
// parses here can still be rejected by the engine's compiler.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/status.h"
#include "engine/engine.h"

namespace airlock::runtime {

struct WasmImport {
  enum class Kind : uint8_t { Func, Table, Memory, Global, Tag };  // the binary codes 0..4
  std::string module;
  std::string name;
  Kind kind = Kind::Func;
  engine::FuncType type;  // only for Kind::Func
};

std::string_view to_string(WasmImport::Kind kind);  // "function", "table", ...

struct WasmExport {
  std::string name;
  WasmImport::Kind kind = WasmImport::Kind::Func;
  engine::FuncType type;  // only for Kind::Func
};

struct WasmMemory {
  bool imported = false;
  uint32_t min_pages = 0;  // 64 KiB pages
  std::optional<uint32_t> max_pages;
  bool shared = false;
  bool memory64 = false;
};

struct WasmInfo {
  std::vector<WasmImport> imports;
  std::vector<WasmExport> exports;
  std::optional<WasmMemory> memory;  // memory 0, whether defined or imported

  const WasmExport* find_export(std::string_view name) const;  // nullptr if absent
  bool has_import(std::string_view module, std::string_view name) const;
};

// Parses the module structure: header, type, import, function, memory and export
// sections, plus the entry counts of the table, global and tag sections (to
// bounds-check export indices); every other section is skipped by its size.
// Errors are InvalidArgument with a message naming the offset, e.g. "not a
// WebAssembly module (bad magic)", "unsupported version 2", "truncated section 3 at
// offset 123". Safe on any input: never reads out of bounds.
//
// Function types may use only i32/i64/f32/f64 where they are imported or exported
// (engine::FuncType cannot express more); other value types (v128, references) are
// accepted in types used only inside the module.
Result<WasmInfo> parse_wasm(std::span<const uint8_t> bytes);

// Returns a copy of the module whose defined memories have maximum
// min(declared maximum, max_pages) (a maximum is added if none was declared); the
// minimum is never changed. Only the memory section is re-encoded; every other byte
// is copied unchanged. A module without memory is returned as is.
// Errors: anything parse_wasm reports; InvalidArgument "imported memory is not
// supported"; ResourceExhausted "skill needs N pages initially, above the limit of M
// pages (X MiB)" when the declared minimum exceeds max_pages.
// `extra_pages` are added to every maximum after that (room the runtime reserves for a
// mapped input window, docs/SKILL_ABI.md: the skill's own allocations stay within
// max_pages).
Result<std::vector<uint8_t>> limit_memory(std::span<const uint8_t> bytes, uint32_t max_pages, uint32_t extra_pages = 0);

// The same for tables: every defined table gets maximum min(declared maximum,
// max_entries), so table.grow cannot pass it; only the table section is re-encoded.
// ResourceExhausted "skill needs a table of N entries initially, above the limit of M
// entries" when a declared minimum exceeds max_entries (a 10 M-entry table costs ~80 MB
// of engine heap per instance).
Result<std::vector<uint8_t>> limit_tables(std::span<const uint8_t> bytes, uint64_t max_entries);

}  // namespace airlock::runtime
