/* parked_hog: input "MB,MS": touches MB MiB of its memory, then waits MS ms. Many
 * parked calls hold many instances' memories at once. */
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

static uint32_t number(const char** p, const char* end) {
  uint32_t v = 0;
  while (*p < end && **p >= '0' && **p <= '9') v = v * 10 + (uint32_t)(*(*p)++ - '0');
  if (*p < end && **p == ',') ++*p;
  return v;
}

/* Kept in a volatile: the allocation escapes, so the compiler cannot drop it. */
static char* volatile held;

AIRLOCK_SKILL(run) {
  const char* p = (const char*)input;
  const char* end = p + input_len;
  uint32_t mb = number(&p, end), ms = number(&p, end);
  char* mem = malloc((size_t)mb << 20);
  if (mb && !mem) return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "cannot allocate %u MiB", mb);
  if (mb) memset(mem, 0x5a, (size_t)mb << 20);
  held = mem;
  int rc = airlock_wait_ms(ms);
  if (rc != AIRLOCK_OK) return rc;
  airlock_output_str("parked");
  return AIRLOCK_OK;
}
