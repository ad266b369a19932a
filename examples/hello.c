// The README's skill: answers "Hello, NAME!" after a 10 ms wait that holds no thread.
#include <airlock/skill.h>
#include <stdio.h>

AIRLOCK_SKILL(run) {                       // input, input_len: the caller's bytes
  if (input_len == 0) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "empty name");
  airlock_wait_ms(10);                     // waits without holding a thread
  char out[128];
  int n = snprintf(out, sizeof out, "Hello, %.*s!", (int)input_len, (const char*)input);
  airlock_output(out, (size_t)n);
  return AIRLOCK_OK;
}
