/* log_loop: logs 1 MiB lines forever. Each call of the import does real work, so the
 * loop spends most of its time in the host: the deadline must hold there too. */
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

AIRLOCK_SKILL(run) {
  const uint32_t n = 1u << 20;
  char* line = malloc(n);
  if (!line) return airlock_fail("no memory");
  memset(line, 'x', n);
  for (;;) airlock_host_log(AIRLOCK_LEVEL_INFO, line, n);
  return AIRLOCK_OK;
}
