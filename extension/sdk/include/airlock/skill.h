/* Airlock skill SDK: the header skill authors include (C11 or C++).
 *
 * A skill is a C or C++ file built with the CMake function airlock_add_skill(), which
 * links in the SDK (airlock_skill.c) and runs binaryen's asyncify over the result.
 * The binding contract underneath is docs/SKILL_ABI.md (ABI version 1).
 *
 *     #include <airlock/skill.h>
 *
 *     AIRLOCK_SKILL(run) {
 *       if (input_len == 0) return airlock_fail("empty input");
 *       airlock_output(input, input_len);
 *       return AIRLOCK_OK;
 *     }
 *
 * Every call runs in a fresh instance: nothing (statics, heap) survives between
 * calls. stdout and stderr go to the extension's log, line by line.
 */
#ifndef AIRLOCK_SKILL_H
#define AIRLOCK_SKILL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define AIRLOCK_EXTERN_C extern "C"
extern "C" {
#else
#define AIRLOCK_EXTERN_C
#endif

/* The ABI version this header implements (the value of export airlock_abi_version). */
#define AIRLOCK_ABI_VERSION 1

/* --- attributes (empty when the header is parsed for a non-wasm target, e.g. by tools) */
#if defined(__wasm__)
#define AIRLOCK_EXPORT(export_name_) __attribute__((export_name(export_name_)))
#define AIRLOCK_IMPORT(import_name_) \
  __attribute__((import_module("airlock"), import_name(import_name_)))
#else
#define AIRLOCK_EXPORT(export_name_)
#define AIRLOCK_IMPORT(import_name_)
#endif
#define AIRLOCK_PRINTF(fmt_index, first_arg) \
  __attribute__((format(printf, fmt_index, first_arg)))

/* --- status codes: same numbering as the wire protocol (airlock::Code) --------------- */
#define AIRLOCK_OK 0
#define AIRLOCK_NOT_FOUND 1
#define AIRLOCK_INVALID_ARGUMENT 2
#define AIRLOCK_TRAP 3
#define AIRLOCK_TIMEOUT 4
#define AIRLOCK_CANCELLED 5
#define AIRLOCK_RESOURCE_EXHAUSTED 6
#define AIRLOCK_PERMISSION_DENIED 7
#define AIRLOCK_EXTENSION_CRASHED 8
#define AIRLOCK_UNAVAILABLE 9
#define AIRLOCK_INTERNAL 10

/* --- defining a skill function -----------------------------------------------------
 * AIRLOCK_SKILL(name) { ... } defines the exported skill function `name` with the ABI
 * type (i32 ptr, i32 len) -> i32. The body sees `input` / `input_len` (the input bytes,
 * not NUL-terminated) and returns AIRLOCK_OK (0) on success, or non-zero on failure,
 * usually `return airlock_fail("...")`. One module may define several skill functions. */
#define AIRLOCK_SKILL(name)                                                              \
  AIRLOCK_EXTERN_C AIRLOCK_EXPORT(#name) int32_t name(const uint8_t* input,              \
                                                      uint32_t input_len);               \
  AIRLOCK_EXTERN_C AIRLOCK_EXPORT(#name) int32_t name(                                   \
      const uint8_t* input __attribute__((unused)),                                      \
      uint32_t input_len __attribute__((unused)))

/* --- output and errors ---------------------------------------------------------------- */

/* Sets the call's output (copied at once; a later call replaces it). */
void airlock_output(const void* data, size_t len);
/* airlock_output() of a NUL-terminated string. */
void airlock_output_str(const char* s);

/* Returns `len` writable bytes that become the call's output when the skill returns:
 * write a large output there and no copy of it is made on its way to the host (the
 * bytes are shared memory: docs/SKILL_ABI.md "Large outputs"). The bytes are valid until
 * the skill function returns; they count against the skill's memory limit. NULL if
 * refused (len 0, or past the memory limit). A later airlock_output() or
 * airlock_output_buffer() replaces this output. */
void* airlock_output_buffer(size_t len);

/* Formats an error message (printf-style), sets it as the call's error and returns
 * AIRLOCK_INTERNAL for the skill to return: `return airlock_fail("bad: %d", x);` */
int airlock_fail(const char* fmt, ...) AIRLOCK_PRINTF(1, 2);

/* Like airlock_fail, with the status code the caller sees, e.g.
 * `return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "bad number '%s'", s);` */
int airlock_fail_code(int code, const char* fmt, ...) AIRLOCK_PRINTF(2, 3);

/* --- logging -------------------------------------------------------------------------- */
#define AIRLOCK_LEVEL_TRACE 0
#define AIRLOCK_LEVEL_DEBUG 1
#define AIRLOCK_LEVEL_INFO 2
#define AIRLOCK_LEVEL_WARN 3
#define AIRLOCK_LEVEL_ERROR 4
#define AIRLOCK_LEVEL_CRITICAL 5

/* Logs one printf-formatted line at `level` (AIRLOCK_LEVEL_*). */
void airlock_log(int level, const char* fmt, ...) AIRLOCK_PRINTF(2, 3);

#define AIRLOCK_LOG_TRACE(...) airlock_log(AIRLOCK_LEVEL_TRACE, __VA_ARGS__)
#define AIRLOCK_LOG_DEBUG(...) airlock_log(AIRLOCK_LEVEL_DEBUG, __VA_ARGS__)
#define AIRLOCK_LOG_INFO(...) airlock_log(AIRLOCK_LEVEL_INFO, __VA_ARGS__)
#define AIRLOCK_LOG_WARN(...) airlock_log(AIRLOCK_LEVEL_WARN, __VA_ARGS__)
#define AIRLOCK_LOG_ERROR(...) airlock_log(AIRLOCK_LEVEL_ERROR, __VA_ARGS__)
#define AIRLOCK_LOG_CRITICAL(...) airlock_log(AIRLOCK_LEVEL_CRITICAL, __VA_ARGS__)

/* --- suspending calls (need the asyncify build step) ---------------------------------- */

/* Waits `ms` milliseconds without holding a thread. Returns AIRLOCK_OK, or a non-zero
 * status code (e.g. AIRLOCK_CANCELLED) if the call was cancelled meanwhile. */
int airlock_wait_ms(uint32_t ms);

/* Calls host service `service` (e.g. "kv.get") with `in_len` bytes from `in`.
 * Returns AIRLOCK_OK or the status code of the failure. If `out` is not NULL, *out
 * receives a malloc'd buffer the caller frees (NUL-terminated, the NUL not counted in
 * *out_len): the reply on success, the error message on failure. If that buffer cannot
 * be allocated, *out is NULL and a call that succeeded reports
 * AIRLOCK_RESOURCE_EXHAUSTED. `out_len` may be NULL. */
int airlock_call(const char* service, const void* in, size_t in_len, void** out,
                 size_t* out_len);

/* --- raw imports (module "airlock"), exactly as in docs/SKILL_ABI.md ------------------
 * Prefer the helpers above. Pointers and lengths are i32 on wasm32. */
AIRLOCK_IMPORT("output") void airlock_host_output(const void* ptr, uint32_t len);
AIRLOCK_IMPORT("output_buffer") uint32_t airlock_host_output_buffer(uint32_t len);
AIRLOCK_IMPORT("error") void airlock_host_error(const void* ptr, uint32_t len);
AIRLOCK_IMPORT("log") void airlock_host_log(int32_t level, const void* ptr, uint32_t len);
AIRLOCK_IMPORT("wait") int32_t airlock_host_wait(uint32_t ms);
AIRLOCK_IMPORT("call")
int32_t airlock_host_call(const void* name_ptr, uint32_t name_len, const void* in_ptr,
                          uint32_t in_len);
AIRLOCK_IMPORT("reply_len") uint32_t airlock_host_reply_len(void);
AIRLOCK_IMPORT("reply_read") void airlock_host_reply_read(void* ptr);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* AIRLOCK_SKILL_H */
