/* spin: never returns (the runtime's wall-clock limit must stop it). */
#include <airlock/skill.h>

static volatile uint32_t spins;

AIRLOCK_SKILL(run) {
  for (;;) spins = spins + 1; /* volatile: the loop cannot be removed */
  return AIRLOCK_OK;
}
