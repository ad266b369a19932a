/* counter: increments a static counter and returns it as decimal text. Every call
 * runs in a fresh instance, so every call must return "1". */
#include <stdio.h>

#include <airlock/skill.h>

static uint32_t counter;

AIRLOCK_SKILL(run) {
  char buf[16];
  int n = snprintf(buf, sizeof buf, "%u", (unsigned)++counter);
  airlock_output(buf, (size_t)n);
  return AIRLOCK_OK;
}
