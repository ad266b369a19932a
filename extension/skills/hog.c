/* hog: allocates and touches 1 MiB chunks until malloc fails, then traps. The
 * runtime reports a trap with memory at its maximum as ResourceExhausted. */
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

#define CHUNK (1u << 20)

/* Chunks are chained into a list kept in a volatile: the allocations escape, so the
 * compiler cannot drop them. */
static void* volatile chunks;

AIRLOCK_SKILL(run) {
  for (;;) {
    void** p = malloc(CHUNK);
    if (!p) break;
    memset(p, 0xA5, CHUNK); /* touch every page */
    *p = chunks;
    chunks = p;
  }
  __builtin_trap();
}
