/* noop: the skill runtime_bench's cold start measures. Answers every call with nothing. */
#include <airlock/skill.h>

AIRLOCK_SKILL(run) { return AIRLOCK_OK; }
