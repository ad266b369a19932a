/* make_bytes: outputs N bytes, byte i = (i * 131 + 7) mod 256, for the input "N". With
 * the input "N,copy" it builds them in malloc'd memory and passes them to
 * airlock_output() (copied); otherwise it writes them straight into
 * airlock_output_buffer(N) (no copy on the way out: docs/SKILL_ABI.md "Large outputs").
 * The two ways side by side show what the output buffer saves. With "N,check" it first
 * checks that the output buffer it got is all zero (fresh memory, as memory.grow gives),
 * and fails if not. */
#include <airlock/skill.h>
#include <stdlib.h>
#include <string.h>

static void fill(uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = (uint8_t)(i * 131u + 7u);
}

AIRLOCK_SKILL(run) {
  size_t n = 0, i = 0;
  for (; i < input_len && input[i] >= '0' && input[i] <= '9'; ++i) {
    n = n * 10 + (size_t)(input[i] - '0');
    if (n > 0x7fff0000u) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "size too large");
  }
  if (i == 0) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "expected a size, then optionally ',copy'");
  if (n == 0) return AIRLOCK_OK;
  const int copy = input_len - i == 5 && memcmp(input + i, ",copy", 5) == 0;
  const int check = input_len - i == 6 && memcmp(input + i, ",check", 6) == 0;
  uint8_t* out = copy ? malloc(n) : airlock_output_buffer(n);
  if (!out) return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "no room for %zu output bytes", n);
  for (size_t k = 0; check && k < n; ++k) {
    if (out[k]) return airlock_fail_code(AIRLOCK_INTERNAL, "output buffer byte %zu is %u, not 0", k, out[k]);
  }
  fill(out, n);
  if (copy) {
    airlock_output(out, n);
    free(out);
  }
  return AIRLOCK_OK;
}
