/* echo: returns its input unchanged. */
#include <airlock/skill.h>

AIRLOCK_SKILL(run) {
  airlock_output(input, input_len);
  return AIRLOCK_OK;
}
