/* Airlock skill SDK runtime part: linked into every skill by airlock_add_skill().
 * Provides the exports the runtime requires (docs/SKILL_ABI.md) and the helpers
 * declared in airlock/skill.h. */
#include "airlock/skill.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(void*) == 4, "Airlock skills are wasm32 modules");

/* --- required exports ---------------------------------------------------------------- */

AIRLOCK_EXPORT("airlock_abi_version") int32_t airlock_abi_version(void);
int32_t airlock_abi_version(void) { return AIRLOCK_ABI_VERSION; }

/* Memory for the call's input; never freed (each call runs in a fresh instance). */
AIRLOCK_EXPORT("airlock_alloc") void* airlock_alloc(uint32_t len);
void* airlock_alloc(uint32_t len) { return malloc(len); }

/* The asyncify data buffer, in binaryen's layout: {i32 start, i32 end} followed by the
 * save area. start/end point at the save area; asyncify advances start while unwinding
 * and moves it back while rewinding. 16 KiB holds the locals of the suspended frames
 * (only functions that can reach airlock.wait/airlock.call are saved). */
#define AIRLOCK_ASYNC_SAVE_AREA (16 * 1024)
struct airlock_async_data {
  uint8_t* start;
  uint8_t* end;
  uint8_t save[AIRLOCK_ASYNC_SAVE_AREA];
};
_Static_assert(offsetof(struct airlock_async_data, save) == 8, "asyncify data layout");

static _Alignas(8) struct airlock_async_data airlock_async = {
    airlock_async.save,
    airlock_async.save + AIRLOCK_ASYNC_SAVE_AREA,
    {0},
};

AIRLOCK_EXPORT("airlock_async_buffer") void* airlock_async_buffer(void);
void* airlock_async_buffer(void) { return &airlock_async; }

/* --- helpers --------------------------------------------------------------------------- */

void airlock_output(const void* data, size_t len) {
  airlock_host_output(data, (uint32_t)len);
}

void airlock_output_str(const char* s) { airlock_output(s, s ? strlen(s) : 0); }

void* airlock_output_buffer(size_t len) {
  if (len == 0 || len > 0x7fff0000u) return NULL;
  uint32_t at = airlock_host_output_buffer((uint32_t)len);
  return at ? (void*)(uintptr_t)at : NULL;
}

/* Formats into `stack_buf` if it fits, else into a malloc'd buffer (*heap, to free).
 * Returns the text and its length; on failure, the format string itself. */
static const char* format_message(char* stack_buf, size_t stack_size, char** heap,
                                  size_t* len, const char* fmt, va_list ap) {
  *heap = NULL;
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(stack_buf, stack_size, fmt, ap);
  const char* text = stack_buf;
  if (n < 0) {
    text = fmt;
    n = (int)strlen(fmt);
  } else if ((size_t)n >= stack_size) {
    *heap = malloc((size_t)n + 1);
    if (*heap) {
      vsnprintf(*heap, (size_t)n + 1, fmt, ap2);
      text = *heap;
    } else {
      n = (int)stack_size - 1; /* truncated */
    }
  }
  va_end(ap2);
  *len = (size_t)n;
  return text;
}

static int fail_v(int code, const char* fmt, va_list ap) {
  char buf[512];
  char* heap;
  size_t len;
  const char* text = format_message(buf, sizeof buf, &heap, &len, fmt, ap);
  airlock_host_error(text, (uint32_t)len);
  free(heap);
  return code;
}

int airlock_fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = fail_v(AIRLOCK_INTERNAL, fmt, ap);
  va_end(ap);
  return rc;
}

int airlock_fail_code(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = fail_v(code > 0 ? code : AIRLOCK_INTERNAL, fmt, ap);
  va_end(ap);
  return rc;
}

void airlock_log(int level, const char* fmt, ...) {
  char buf[512];
  char* heap;
  size_t len;
  va_list ap;
  va_start(ap, fmt);
  const char* text = format_message(buf, sizeof buf, &heap, &len, fmt, ap);
  va_end(ap);
  airlock_host_log(level, text, (uint32_t)len);
  free(heap);
}

int airlock_wait_ms(uint32_t ms) { return airlock_host_wait(ms); }

int airlock_call(const char* service, const void* in, size_t in_len, void** out,
                 size_t* out_len) {
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!service) service = "";
  int status = airlock_host_call(service, (uint32_t)strlen(service), in, (uint32_t)in_len);
  if (!out) return status;
  uint32_t n = airlock_host_reply_len();
  char* buf = malloc((size_t)n + 1);
  if (!buf) return status == AIRLOCK_OK ? AIRLOCK_RESOURCE_EXHAUSTED : status;
  if (n) airlock_host_reply_read(buf);
  buf[n] = '\0';
  *out = buf;
  if (out_len) *out_len = n;
  return status;
}
