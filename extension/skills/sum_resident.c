/* sum_resident: the `sum` skill's work on bytes already in the skill's own memory, the
 * baseline that shows what a call on a large input costs beyond the skill's own compute.
 * A call with input keeps a copy of it (and returns its sum); a call with empty input
 * sums the kept copy again. Needs FreshState::Reuse, or the copy is gone after the call. */
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

#include "byte_sum.h"

static uint8_t* kept;
static size_t kept_len;

AIRLOCK_SKILL(run) {
  if (input_len > 0) {
    free(kept);
    kept = malloc(input_len);
    if (!kept) {
      kept_len = 0;
      return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "cannot keep %zu bytes", (size_t)input_len);
    }
    memcpy(kept, input, input_len);
    kept_len = input_len;
  }
  byte_sum_output(byte_sum(kept, kept_len));
  return AIRLOCK_OK;
}
