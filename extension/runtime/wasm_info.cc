#include "runtime/wasm_info.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <unordered_set>
#include <utility>

namespace airlock::runtime {
namespace {

using Kind = WasmImport::Kind;

// Limits flags. Shared needs the threads proposal, 64-bit memory64; both only change
// how the limits are read, so the patcher keeps them as they are.
constexpr uint8_t kHasMax = 0x01;
constexpr uint8_t kShared = 0x02;
constexpr uint8_t kIndex64 = 0x04;

constexpr uint64_t kMaxPages32 = 65536;  // 4 GiB, all a 32-bit memory can address

std::string hex(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", b);
  return buf;
}

Error invalid(std::string msg) { return make_error(Code::InvalidArgument, std::move(msg)); }

// Bounds-checked reads from bytes[begin, end), reporting absolute module offsets.
// The first error sticks: from then on every read returns 0 and moves nothing, so
// parsing code can read a whole item and check ok() once, and loops over a garbage
// count end as soon as the data runs out.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, size_t begin, size_t end, std::string what)
      : bytes_(bytes), pos_(begin), end_(end), what_(std::move(what)) {}

  size_t pos() const { return pos_; }
  size_t end() const { return end_; }
  size_t left() const { return end_ - pos_; }
  bool at_end() const { return pos_ == end_; }
  bool ok() const { return !error_; }
  const Error& error() const { return *error_; }
  void set_what(std::string what) { what_ = std::move(what); }

  uint8_t u8() { return need(1, pos_) ? bytes_[pos_++] : 0; }
  uint8_t peek() const { return ok() && pos_ < end_ ? bytes_[pos_] : 0; }
  uint32_t u32() { return static_cast<uint32_t>(leb(32)); }
  uint64_t u64() { return leb(64); }
  // Heap types are signed 33-bit LEBs; they are only skipped, so only the length matters.
  void skip_s33() { leb(35); }
  void skip_rest() { pos_ = end_; }

  std::string name() {
    uint32_t n = u32();
    if (!need(n, pos_)) return {};
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }

  // A reader over the next n bytes, which this one skips.
  Reader sub(uint32_t n) {
    size_t at = pos_;
    if (ok() && n > left())
      truncated(at, " (declares " + std::to_string(n) + " bytes, " + std::to_string(left()) +
                        " present)");
    if (!ok()) return Reader(bytes_, at, at, what_);
    pos_ += n;
    return Reader(bytes_, at, at + n, what_);
  }

  void fail_at(size_t at, const std::string& msg) {
    if (!error_) error_ = invalid(msg + " in " + what_ + " at offset " + std::to_string(at));
  }

 private:
  bool need(size_t n, size_t at) {
    if (error_) return false;
    if (n <= left()) return true;
    truncated(at);
    return false;
  }
  void truncated(size_t at, const std::string& detail = "") {
    if (!error_) error_ = invalid("truncated " + what_ + " at offset " + std::to_string(at) + detail);
  }

  // Unsigned LEB128 of at most `bits` bits. Padding with 0x80 bytes up to the full
  // width is valid (linkers write fixed 5-byte sizes to patch them later); a longer
  // encoding, or value bits beyond the width, is not.
  uint64_t leb(unsigned bits) {
    size_t at = pos_;
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (!need(1, at)) return 0;
      uint8_t b = bytes_[pos_++];
      if (shift + 7 >= bits) {  // the last byte the width allows
        if (b & 0x80) {
          fail_at(at, "LEB128 longer than " + std::to_string((bits + 6) / 7) + " bytes");
          return 0;
        }
        if ((b & 0x7f) >> (bits - shift)) {
          fail_at(at, "LEB128 value too large for " + std::to_string(bits) + " bits");
          return 0;
        }
      }
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
    }
  }

  std::span<const uint8_t> bytes_;
  size_t pos_;
  size_t end_;
  std::string what_;  // "section 3", for messages
  std::optional<Error> error_;
};

struct TypeEntry {
  engine::FuncType type;
  // The first value type engine::FuncType cannot express (v128, a reference), 0 if
  // none. Only an error once an import or export uses the type: SIMD code has such
  // types internally and is fine to run.
  uint8_t unsupported = 0;
};

struct Limits {
  uint8_t flags = 0;
  uint64_t min = 0;
  std::optional<uint64_t> max;
};

struct Parsed {
  WasmInfo info;
  std::vector<TypeEntry> types;
  std::vector<uint32_t> func_types;  // type index of each function, imported ones first
  std::array<uint64_t, 5> counts{};  // index space sizes by Kind (Func unused: func_types)
  bool memory_imported = false;
  // The memory section for limit_memory: [section_begin, section_end) holds the id,
  // size, entry count from payload_begin, then the entries from entries_begin.
  size_t mem_section_begin = 0, mem_payload_begin = 0, mem_entries_begin = 0, mem_section_end = 0;
  std::vector<Limits> memories;  // defined ones
  // The table section for limit_tables, laid out the same way; each entry's reference
  // type is kept as its bytes [type_begin, type_end).
  struct Table {
    size_t type_begin = 0, type_end = 0;
    Limits limits;
  };
  size_t tab_section_begin = 0, tab_payload_begin = 0, tab_entries_begin = 0, tab_section_end = 0;
  std::vector<Table> tables;  // defined ones
};

std::string out_of_range(std::string_view space, uint64_t index, uint64_t count) {
  std::string plural = count == 1 ? std::string(space)
                       : space == "memory" ? "memories"
                                           : std::string(space) + "s";
  return std::string(space) + " index " + std::to_string(index) + " out of range (" +
         std::to_string(count) + " " + plural + ")";
}

std::optional<engine::ValType> numeric(uint8_t code) {
  switch (code) {
    case 0x7f: return engine::ValType::I32;
    case 0x7e: return engine::ValType::I64;
    case 0x7d: return engine::ValType::F32;
    case 0x7c: return engine::ValType::F64;
    default: return std::nullopt;
  }
}

bool is_reftype(uint8_t code) { return code == 0x63 || code == 0x64 || (code >= 0x69 && code <= 0x74); }

// Reads a value type and returns its leading byte. Numbers, v128 and the abbreviated
// reference types are one byte; (ref null? heaptype) carries a heap type.
uint8_t read_valtype(Reader& r) {
  size_t at = r.pos();
  uint8_t code = r.u8();
  if (code == 0x63 || code == 0x64)
    r.skip_s33();
  else if (!numeric(code) && code != 0x7b && !is_reftype(code))
    r.fail_at(at, "unknown value type " + hex(code));
  return code;
}

Limits read_limits(Reader& r, bool memory) {
  size_t at = r.pos();
  Limits l;
  l.flags = r.u8();
  uint8_t allowed = kHasMax | kIndex64 | (memory ? kShared : 0);
  if (l.flags & ~allowed) {
    r.fail_at(at, "invalid limits flags " + hex(l.flags));
    return l;
  }
  bool wide = l.flags & kIndex64;
  l.min = wide ? r.u64() : r.u32();
  if (l.flags & kHasMax) l.max = wide ? r.u64() : r.u32();
  if (l.max && *l.max < l.min)
    r.fail_at(at, "minimum " + std::to_string(l.min) + " above maximum " + std::to_string(*l.max));
  return l;
}

void add_memory(Reader& r, Parsed& p, const Limits& l, size_t at, bool imported) {
  bool wide = l.flags & kIndex64;
  uint64_t cap = wide ? UINT32_MAX : kMaxPages32;
  if (l.min > cap || (l.max && *l.max > cap)) {
    r.fail_at(at, wide ? "memory64 sizes above 2^32-1 pages are not supported"
                       : "memory size above 65536 pages (4 GiB)");
    return;
  }
  if (imported) p.memory_imported = true;
  if (p.counts[size_t(Kind::Memory)]++ > 0) return;
  p.info.memory = WasmMemory{imported, static_cast<uint32_t>(l.min),
                             l.max ? std::optional<uint32_t>(static_cast<uint32_t>(*l.max))
                                   : std::nullopt,
                             bool(l.flags & kShared), wide};
}

engine::FuncType resolve(Reader& r, const Parsed& p, uint32_t type_index, size_t at,
                         const std::string& user) {
  if (type_index >= p.types.size()) {
    r.fail_at(at, out_of_range("type", type_index, p.types.size()));
    return {};
  }
  const TypeEntry& t = p.types[type_index];
  if (t.unsupported)
    r.fail_at(at, "unsupported value type " + hex(t.unsupported) + " in type " +
                      std::to_string(type_index) + ", used by " + user);
  return t.type;
}

void parse_types(Reader& r, Parsed& p) {
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    size_t at = r.pos();
    if (uint8_t form = r.u8(); form != 0x60) {
      r.fail_at(at, "unsupported type form " + hex(form) + " for type " + std::to_string(i));
      return;
    }
    TypeEntry t;
    for (auto* list : {&t.type.params, &t.type.results}) {
      uint32_t count = r.u32();
      for (uint32_t j = 0; j < count && r.ok(); ++j) {
        uint8_t code = read_valtype(r);
        if (auto v = numeric(code))
          list->push_back(*v);
        else if (!t.unsupported)
          t.unsupported = code;
      }
    }
    p.types.push_back(std::move(t));
  }
}

void parse_imports(Reader& r, Parsed& p) {
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    WasmImport imp;
    imp.module = r.name();
    imp.name = r.name();
    size_t at = r.pos();
    uint8_t kind = r.u8();
    size_t operand_at = r.pos();
    switch (kind) {
      case 0: {
        uint32_t t = r.u32();
        imp.type = resolve(r, p, t, operand_at, "import " + imp.module + "." + imp.name);
        p.func_types.push_back(t);
        break;
      }
      case 1:
        if (uint8_t elem = read_valtype(r); !is_reftype(elem))
          r.fail_at(operand_at, "table element type " + hex(elem) + " is not a reference");
        read_limits(r, false);
        break;
      case 2:
        add_memory(r, p, read_limits(r, true), operand_at, true);
        break;
      case 3: {
        read_valtype(r);
        size_t mut_at = r.pos();
        if (uint8_t mut = r.u8(); mut > 1) r.fail_at(mut_at, "invalid global mutability " + hex(mut));
        break;
      }
      case 4: {
        if (uint8_t attr = r.u8(); attr != 0) r.fail_at(operand_at, "invalid tag attribute " + hex(attr));
        size_t type_at = r.pos();
        if (uint32_t t = r.u32(); t >= p.types.size())
          r.fail_at(type_at, out_of_range("type", t, p.types.size()));
        break;
      }
      default:
        r.fail_at(at, "unknown import kind " + hex(kind));
        return;
    }
    imp.kind = Kind(kind);
    if (kind != 0 && kind != 2) ++p.counts[kind];  // functions and memories counted above
    p.info.imports.push_back(std::move(imp));
  }
}

void parse_functions(Reader& r, Parsed& p) {
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    size_t at = r.pos();
    uint32_t t = r.u32();
    if (t >= p.types.size()) r.fail_at(at, out_of_range("type", t, p.types.size()));
    p.func_types.push_back(t);
  }
}

void parse_memories(Reader& r, Parsed& p, size_t section_begin) {
  p.mem_section_begin = section_begin;
  p.mem_payload_begin = r.pos();
  uint32_t n = r.u32();
  p.mem_entries_begin = r.pos();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    size_t at = r.pos();
    Limits l = read_limits(r, true);
    add_memory(r, p, l, at, false);
    p.memories.push_back(l);
  }
  p.mem_section_end = r.end();
}

void parse_tables(Reader& r, Parsed& p, size_t section_begin) {
  p.tab_section_begin = section_begin;
  p.tab_payload_begin = r.pos();
  uint32_t n = r.u32();
  p.tab_entries_begin = r.pos();
  p.counts[size_t(Kind::Table)] += n;
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    Parsed::Table t;
    t.type_begin = r.pos();
    if (r.peek() == 0x40) {  // a table with an initializer expression (function references)
      r.fail_at(t.type_begin, "tables with initializer expressions are not supported");
      return;
    }
    uint8_t code = read_valtype(r);
    if (r.ok() && !is_reftype(code) && code != 0x63 && code != 0x64) {
      r.fail_at(t.type_begin, "table element type " + hex(code) + " is not a reference type");
      return;
    }
    t.type_end = r.pos();
    t.limits = read_limits(r, false);
    p.tables.push_back(t);
  }
  p.tab_section_end = r.end();
}

void parse_exports(Reader& r, Parsed& p) {
  std::unordered_set<std::string> seen;
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    size_t at = r.pos();
    WasmExport e;
    e.name = r.name();
    if (r.ok() && !seen.insert(e.name).second) r.fail_at(at, "duplicate export \"" + e.name + "\"");
    size_t kind_at = r.pos();
    uint8_t kind = r.u8();
    size_t index_at = r.pos();
    uint32_t index = r.u32();
    if (!r.ok()) return;
    if (kind > uint8_t(Kind::Tag)) {
      r.fail_at(kind_at, "unknown export kind " + hex(kind));
      return;
    }
    e.kind = Kind(kind);
    uint64_t count = e.kind == Kind::Func ? p.func_types.size() : p.counts[kind];
    if (index >= count) {
      r.fail_at(index_at, out_of_range(to_string(e.kind), index, count));
      return;
    }
    if (e.kind == Kind::Func)
      e.type = resolve(r, p, p.func_types[index], index_at, "export \"" + e.name + "\"");
    p.info.exports.push_back(std::move(e));
  }
}

// Where each known section id may appear: the spec fixes the order, and the tag (13)
// and data count (12) sections were added later with ids outside it. 0: anywhere.
int section_rank(uint8_t id) {
  static constexpr std::array<int8_t, 14> kRank = {0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 11, 6};
  return id < kRank.size() ? kRank[id] : -1;
}

Result<Parsed> parse(std::span<const uint8_t> bytes) {
  static constexpr uint8_t kMagic[4] = {0x00, 'a', 's', 'm'};
  if (bytes.empty()) return invalid("not a WebAssembly module (empty)");
  if (!std::equal(bytes.begin(), bytes.begin() + std::min<size_t>(bytes.size(), 4), kMagic))
    return invalid("not a WebAssembly module (bad magic)");
  if (bytes.size() < 8)
    return invalid("truncated module header (" + std::to_string(bytes.size()) + " bytes)");
  uint32_t version = bytes[4] | bytes[5] << 8 | uint32_t{bytes[6]} << 16 | uint32_t{bytes[7]} << 24;
  if (version != 1) {
    // Bytes 6-7 are the component model's "layer" field: 1 is what wasm32-wasip2 emits.
    if (bytes[6] == 1 && bytes[7] == 0)
      return invalid("a WebAssembly component, not a core module (build for WASI preview 1)");
    return invalid("unsupported version " + std::to_string(version));
  }

  Parsed p;
  Reader top(bytes, 8, bytes.size(), "module");
  int last_rank = 0;
  while (top.ok() && !top.at_end()) {
    size_t begin = top.pos();
    uint8_t id = top.u8();
    std::string what = "section " + std::to_string(id);
    top.set_what(what);
    Reader r = top.sub(top.u32());
    if (!top.ok()) break;
    int rank = section_rank(id);
    if (rank < 0) return invalid("unknown section id " + std::to_string(id) + " at offset " + std::to_string(begin));
    if (rank > 0) {
      // Duplicates matter beyond tidiness: limit_memory must see the only memory section.
      if (rank <= last_rank)
        return invalid((rank == last_rank ? "duplicate " : "out of order ") + what + " at offset " +
                       std::to_string(begin));
      last_rank = rank;
    }
    switch (id) {
      case 1: parse_types(r, p); break;
      case 2: parse_imports(r, p); break;
      case 3: parse_functions(r, p); break;
      case 5: parse_memories(r, p, begin); break;
      case 7: parse_exports(r, p); break;
      // Global and tag entries are not needed; their counts bound export indices.
      case 4: parse_tables(r, p, begin); break;
      case 6: p.counts[size_t(Kind::Global)] += r.u32(); r.skip_rest(); break;
      case 13: p.counts[size_t(Kind::Tag)] += r.u32(); r.skip_rest(); break;
      default: r.skip_rest(); break;
    }
    if (r.ok() && !r.at_end()) r.fail_at(r.pos(), std::to_string(r.left()) + " trailing bytes");
    if (!r.ok()) return r.error();
  }
  if (!top.ok()) return top.error();
  return p;
}

void put_leb(std::vector<uint8_t>& out, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out.push_back(v ? b | 0x80 : b);
  } while (v);
}

}  // namespace

std::string_view to_string(WasmImport::Kind kind) {
  switch (kind) {
    case Kind::Func: return "function";
    case Kind::Table: return "table";
    case Kind::Memory: return "memory";
    case Kind::Global: return "global";
    case Kind::Tag: return "tag";
  }
  return "unknown";
}

const WasmExport* WasmInfo::find_export(std::string_view name) const {
  auto it = std::find_if(exports.begin(), exports.end(), [&](const WasmExport& e) { return e.name == name; });
  return it == exports.end() ? nullptr : &*it;
}

bool WasmInfo::has_import(std::string_view module, std::string_view name) const {
  return std::any_of(imports.begin(), imports.end(),
                     [&](const WasmImport& i) { return i.module == module && i.name == name; });
}

Result<WasmInfo> parse_wasm(std::span<const uint8_t> bytes) {
  auto p = parse(bytes);
  if (!p) return p.take_error();
  return std::move(p->info);
}

Result<std::vector<uint8_t>> limit_memory(std::span<const uint8_t> bytes, uint32_t max_pages, uint32_t extra_pages) {
  auto parsed = parse(bytes);
  if (!parsed) return parsed.take_error();
  const Parsed& p = *parsed;
  if (p.memory_imported) return invalid("imported memory is not supported");
  if (p.memories.empty()) return std::vector<uint8_t>(bytes.begin(), bytes.end());

  // The entry count is copied as written; every entry is re-encoded with a maximum,
  // so that a later memory (multi-memory) cannot escape the limit either.
  std::vector<uint8_t> payload(bytes.begin() + p.mem_payload_begin, bytes.begin() + p.mem_entries_begin);
  for (const Limits& m : p.memories) {
    uint64_t limit = m.flags & kIndex64 ? max_pages : std::min<uint64_t>(max_pages, kMaxPages32);
    uint64_t max = m.max ? std::min(*m.max, limit) : limit;
    if (m.min > max) {
      char mib[32];
      auto end = std::to_chars(mib, mib + sizeof mib, static_cast<double>(limit) / 16).ptr;
      return make_error(Code::ResourceExhausted,
                        "skill needs " + std::to_string(m.min) + " pages initially, above the limit of " +
                            std::to_string(limit) + " pages (" + std::string(mib, end) + " MiB)");
    }
    max += extra_pages;
    if (!(m.flags & kIndex64)) max = std::min<uint64_t>(max, kMaxPages32);
    payload.push_back(m.flags | kHasMax);
    put_leb(payload, m.min);
    put_leb(payload, max);
  }

  std::vector<uint8_t> out(bytes.begin(), bytes.begin() + p.mem_section_begin);
  out.push_back(5);
  put_leb(out, payload.size());
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), bytes.begin() + p.mem_section_end, bytes.end());
  return out;
}

Result<std::vector<uint8_t>> limit_tables(std::span<const uint8_t> bytes, uint64_t max_entries) {
  auto parsed = parse(bytes);
  if (!parsed) return parsed.take_error();
  const Parsed& p = *parsed;
  if (p.tables.empty()) return std::vector<uint8_t>(bytes.begin(), bytes.end());
  std::vector<uint8_t> payload(bytes.begin() + p.tab_payload_begin, bytes.begin() + p.tab_entries_begin);
  for (const auto& t : p.tables) {
    const Limits& l = t.limits;
    uint64_t max = l.max ? std::min<uint64_t>(*l.max, max_entries) : max_entries;
    if (l.min > max) {
      return make_error(Code::ResourceExhausted, "skill needs a table of " + std::to_string(l.min) +
                                                     " entries initially, above the limit of " + std::to_string(max) +
                                                     " entries");
    }
    payload.insert(payload.end(), bytes.begin() + t.type_begin, bytes.begin() + t.type_end);
    payload.push_back(l.flags | kHasMax);
    put_leb(payload, l.min);
    put_leb(payload, max);
  }
  std::vector<uint8_t> out(bytes.begin(), bytes.begin() + p.tab_section_begin);
  out.push_back(4);
  put_leb(out, payload.size());
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), bytes.begin() + p.tab_section_end, bytes.end());
  return out;
}

}  // namespace airlock::runtime
