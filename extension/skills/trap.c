/* trap: traps in the way the input selects:
 *   "" or "unreachable"  unreachable instruction (__builtin_trap)
 *   "oob"                load beyond the end of linear memory
 *   "div0"               integer division by zero
 *   "overflow"           INT_MIN / -1
 *   "stack"              unbounded recursion: the engine's call stack overflows
 * Anything else fails with an error message. */
#include <limits.h>
#include <string.h>

#include <airlock/skill.h>

static volatile int32_t zero = 0;
static volatile int32_t minus_one = -1;
static volatile int32_t int_min = INT_MIN;
static volatile uint32_t depth;

/* Not a tail call (the result is used after the call) and every frame does a volatile
 * store, so it is neither turned into a loop nor removed. The locals live in wasm
 * locals, not on the C stack in linear memory, so the engine's native stack overflows
 * first (a "Maximum call stack size" trap), not the 64 KiB C stack. */
#pragma clang diagnostic ignored "-Winfinite-recursion"
__attribute__((noinline)) static uint32_t recurse(uint32_t n) {
  depth = n;
  uint32_t r = recurse(n + 1);
  depth = r;
  return r + n;
}

static int is(const uint8_t* input, uint32_t len, const char* word) {
  return len == strlen(word) && memcmp(input, word, len) == 0;
}

AIRLOCK_SKILL(run) {
  if (input_len == 0 || is(input, input_len, "unreachable")) __builtin_trap();
  if (is(input, input_len, "oob")) return *(volatile int32_t*)0xFFFFFFF0u;
  if (is(input, input_len, "div0")) return 7 / zero;
  if (is(input, input_len, "overflow")) return int_min / minus_one;
  if (is(input, input_len, "stack")) return (int32_t)recurse(0);
  return airlock_fail("trap: unknown kind '%.*s' (unreachable, oob, div0, overflow, stack)",
                      (int)input_len, (const char*)input);
}
