/* countdown: recursion through the host. Input: decimal N (and optionally "|SERVICE",
 * default "countdown"). N == 0 returns "0"; otherwise the skill calls the host service
 * with N-1 and returns "N," followed by the reply, e.g. "3,2,1,0". Used by call-chain
 * tests and benchmarks (host -> A -> host -> A ...). */
#include <airlock/skill.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

AIRLOCK_SKILL(run) {
  char buf[64];
  if (input_len == 0 || input_len >= sizeof buf) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "countdown: input N[|service]");
  memcpy(buf, input, input_len);
  buf[input_len] = '\0';
  const char* service = "countdown";
  char* bar = strchr(buf, '|');
  if (bar) {
    *bar = '\0';
    service = bar + 1;
  }
  char* end;
  long n = strtol(buf, &end, 10);
  if (*end != '\0' || n < 0) return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "countdown: bad number '%s'", buf);
  if (n == 0) {
    airlock_output_str("0");
    return AIRLOCK_OK;
  }
  char next[80];
  int len = bar ? snprintf(next, sizeof next, "%ld|%s", n - 1, service) : snprintf(next, sizeof next, "%ld", n - 1);
  void* reply = NULL;
  size_t reply_len = 0;
  int rc = airlock_call(service, next, (size_t)len, &reply, &reply_len);
  if (rc != AIRLOCK_OK) {
    int r = airlock_fail_code(rc, "countdown %ld: %s", n, reply ? (const char*)reply : "");
    free(reply);
    return r;
  }
  size_t out_len = reply_len + 24;
  char* out = malloc(out_len);
  if (!out) return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "countdown: out of memory");
  int k = snprintf(out, out_len, "%ld,%.*s", n, (int)reply_len, (const char*)reply);
  airlock_output(out, (size_t)k);
  free(out);
  free(reply);
  return AIRLOCK_OK;
}
