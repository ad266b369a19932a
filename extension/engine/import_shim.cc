#include "engine/import_shim.h"

namespace airlock::engine {

namespace {

void leb(std::vector<uint8_t>& out, uint32_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out.push_back(v ? (b | 0x80) : b);
  } while (v);
}

uint8_t code(ValType t) {
  switch (t) {
    case ValType::I32: return 0x7f;
    case ValType::I64: return 0x7e;
    case ValType::F32: return 0x7d;
    case ValType::F64: return 0x7c;
  }
  return 0x7f;
}

void name(std::vector<uint8_t>& out, const std::string& s) {
  leb(out, static_cast<uint32_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

void section(std::vector<uint8_t>& module, uint8_t id, const std::vector<uint8_t>& body) {
  module.push_back(id);
  leb(module, static_cast<uint32_t>(body.size()));
  module.insert(module.end(), body.begin(), body.end());
}

}  // namespace

std::vector<uint8_t> encode_import_shim(std::span<const FuncType> types) {
  const auto n = static_cast<uint32_t>(types.size());
  std::vector<uint8_t> m = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00};
  std::vector<uint8_t> s;

  leb(s, n);  // types: one per function (V8 canonicalises equal ones)
  for (const auto& t : types) {
    s.push_back(0x60);
    leb(s, static_cast<uint32_t>(t.params.size()));
    for (auto p : t.params) s.push_back(code(p));
    leb(s, static_cast<uint32_t>(t.results.size()));
    for (auto r : t.results) s.push_back(code(r));
  }
  section(m, 1, s);

  s.clear();
  leb(s, n);
  for (uint32_t i = 0; i < n; ++i) {
    name(s, "h");
    name(s, std::to_string(i));
    s.push_back(0x00);  // function
    leb(s, i);
  }
  section(m, 2, s);

  s.clear();
  leb(s, n);
  for (uint32_t i = 0; i < n; ++i) leb(s, i);
  section(m, 3, s);

  s.clear();
  leb(s, n);
  for (uint32_t i = 0; i < n; ++i) {
    name(s, std::to_string(i));
    s.push_back(0x00);
    leb(s, n + i);  // defined functions follow the imported ones
  }
  section(m, 7, s);

  s.clear();
  leb(s, n);
  for (uint32_t i = 0; i < n; ++i) {
    std::vector<uint8_t> body = {0x00};  // no locals
    for (uint32_t p = 0; p < types[i].params.size(); ++p) {
      body.push_back(0x20);  // local.get p
      leb(body, p);
    }
    body.push_back(0x10);  // call i
    leb(body, i);
    body.push_back(0x0b);  // end
    leb(s, static_cast<uint32_t>(body.size()));
    s.insert(s.end(), body.begin(), body.end());
  }
  section(m, 10, s);
  return m;
}

}  // namespace airlock::engine
