/* caller: input "service|payload" (no '|': the whole input is the service name and the
 * payload is empty). Calls the host service and returns its reply, or fails with
 * "call failed (code C): <message>". */
#include <stdlib.h>
#include <string.h>

#include <airlock/skill.h>

AIRLOCK_SKILL(run) {
  const uint8_t* bar = memchr(input, '|', input_len);
  size_t name_len = bar ? (size_t)(bar - input) : input_len;
  char* service = malloc(name_len + 1);
  if (!service) return airlock_fail("caller: out of memory");
  memcpy(service, input, name_len);
  service[name_len] = '\0';
  const uint8_t* payload = bar ? bar + 1 : input + input_len;
  size_t payload_len = input_len - (size_t)(payload - input);

  void* reply = NULL;
  size_t reply_len = 0;
  int rc = airlock_call(service, payload, payload_len, &reply, &reply_len);
  free(service);
  if (rc != AIRLOCK_OK) {
    /* Pass the code on: a chain's caller sees where and why it failed. */
    int r = airlock_fail_code(rc, "call failed (code %d): %s", rc, reply ? (const char*)reply : "");
    free(reply);
    return r;
  }
  airlock_output(reply, reply_len);
  free(reply);
  return AIRLOCK_OK;
}
