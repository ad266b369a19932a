/* fail: always fails, with the error message "fail: <input>". */
#include <airlock/skill.h>

AIRLOCK_SKILL(run) { return airlock_fail("fail: %.*s", (int)input_len, (const char*)input); }
