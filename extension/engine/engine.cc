#include "engine/engine.h"

namespace airlock::engine {

static const char* type_name(ValType t) {
  switch (t) {
    case ValType::I32: return "i32";
    case ValType::I64: return "i64";
    case ValType::F32: return "f32";
    case ValType::F64: return "f64";
  }
  return "?";
}

std::string FuncType::to_string() const {
  auto list = [](const std::vector<ValType>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) s += ", ";
      s += type_name(v[i]);
    }
    return s;
  };
  std::string s = "(";  // appended, not "(" + ...: GCC 12 warns falsely on that (PR105651)
  s += list(params);
  s += ") -> ";
  if (results.size() == 1) return s + type_name(results[0]);
  return s + "(" + list(results) + ")";
}

}  // namespace airlock::engine
