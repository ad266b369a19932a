/* printer: writes a line to stdout and one to stderr (both reach the extension's log)
 * and returns "printed". */
#include <stdio.h>

#include <airlock/skill.h>

AIRLOCK_SKILL(run) {
  printf("hello from printer: %.*s\n", (int)input_len, (const char*)input);
  fflush(stdout); /* stdout is not a terminal, so it is fully buffered */
  fprintf(stderr, "printer stderr: %u bytes of input\n", (unsigned)input_len);
  airlock_output_str("printed");
  return AIRLOCK_OK;
}
