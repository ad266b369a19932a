// The README's skill again, in C++ (clang++-19 + Debian's wasm32 libc++, no exceptions).
#include <airlock/skill.h>

#include <string>
#include <string_view>

AIRLOCK_SKILL(run) {
  const std::string_view name(reinterpret_cast<const char*>(input), input_len);
  if (name.empty()) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "empty name");
  airlock_wait_ms(10);
  const std::string out = "Hello, " + std::string(name) + "!";
  airlock_output(out.data(), out.size());
  return AIRLOCK_OK;
}
