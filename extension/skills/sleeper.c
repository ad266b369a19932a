/* sleeper: input N (decimal milliseconds); waits N/2 ms twice through airlock.wait and
 * returns "slept N". `sum_later`: waits 50 ms, then returns the byte sum of its input (a
 * call that stays parked while it holds a large mapped input). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

#include "byte_sum.h"

AIRLOCK_SKILL(run) {
  char text[16];
  if (input_len == 0 || input_len >= sizeof text)
    return airlock_fail("sleeper: expected a number of milliseconds, got %u bytes",
                        (unsigned)input_len);
  memcpy(text, input, input_len);
  text[input_len] = '\0';
  char* end;
  errno = 0;
  unsigned long ms = strtoul(text, &end, 10);
  if (*end != '\0' || text[0] < '0' || text[0] > '9' || errno || ms > UINT32_MAX)
    return airlock_fail("sleeper: bad milliseconds '%s'", text);

  uint32_t first = (uint32_t)ms / 2;
  int rc = airlock_wait_ms(first);
  if (rc == AIRLOCK_OK) rc = airlock_wait_ms((uint32_t)ms - first);
  if (rc != AIRLOCK_OK) return airlock_fail("sleeper: wait failed (code %d)", rc);

  char out[32];
  int n = snprintf(out, sizeof out, "slept %lu", ms);
  airlock_output(out, (size_t)n);
  return AIRLOCK_OK;
}

AIRLOCK_SKILL(sum_later) {
  int rc = airlock_wait_ms(50);
  if (rc != AIRLOCK_OK) return airlock_fail("sum_later: wait failed (code %d)", rc);
  byte_sum_output(byte_sum(input, input_len));
  return AIRLOCK_OK;
}
