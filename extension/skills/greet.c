/* greet: input "name[,kb[,ms]]", e.g. "Ada,512,100" (missing or empty numbers are 0).
 * Allocates kb KiB, touching every page: one chunk if kb <= 300, else random chunks of
 * 100-300 KiB; waits ms milliseconds through airlock.wait if ms > 0; frees the memory;
 * returns "Hello, <name>!". Benchmarks use it as a skill with tunable memory and
 * latency. Fails on malformed numbers or when the memory cannot be allocated. */
#define _DEFAULT_SOURCE /* getentropy() */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <airlock/skill.h>

/* Parses the decimal field [p, end) into *out; empty is 0. Returns 0 if malformed. */
static int parse_u32(const uint8_t* p, const uint8_t* end, uint32_t* out) {
  uint64_t v = 0;
  for (; p < end; p++) {
    if (*p < '0' || *p > '9') return 0;
    v = v * 10 + (uint64_t)(*p - '0');
    if (v > UINT32_MAX) return 0;
  }
  *out = (uint32_t)v;
  return 1;
}

static void free_chunks(void** chunks, size_t n) {
  for (size_t i = 0; i < n; i++) free(chunks[i]);
  free(chunks);
}

AIRLOCK_SKILL(run) {
  const uint8_t* end = input + input_len;
  const uint8_t* comma1 = memchr(input, ',', input_len);
  const uint8_t* name_end = comma1 ? comma1 : end;
  uint32_t kb = 0, ms = 0;
  if (comma1) {
    const uint8_t* kb_begin = comma1 + 1;
    const uint8_t* comma2 = memchr(kb_begin, ',', (size_t)(end - kb_begin));
    const uint8_t* kb_end = comma2 ? comma2 : end;
    if (!parse_u32(kb_begin, kb_end, &kb))
      return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "greet: bad kb '%.*s' (expected name[,kb[,ms]])",
                          (int)(kb_end - kb_begin), (const char*)kb_begin);
    if (comma2 && !parse_u32(comma2 + 1, end, &ms))
      return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "greet: bad ms '%.*s' (expected name[,kb[,ms]])",
                          (int)(end - comma2 - 1), (const char*)comma2 + 1);
  }
  if (kb > UINT32_MAX / 1024)
    return airlock_fail_code(AIRLOCK_INVALID_ARGUMENT, "greet: kb %u is more than 4 GiB", (unsigned)kb);

  /* Chunk sizes in KiB: one chunk, or random 100-300 KiB pieces (the last one smaller). */
  size_t max_chunks = kb <= 300 ? 1 : kb / 100 + 1;
  void** chunks = calloc(max_chunks, sizeof *chunks);
  if (!chunks) return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "greet: out of memory");
  size_t n_chunks = 0;
  if (kb > 300) {
    unsigned seed = 12345;
    getentropy(&seed, sizeof seed); /* keeps the fixed seed if that fails */
    srand(seed);
  }
  for (uint32_t left = kb; left > 0;) {
    uint32_t size = kb <= 300 ? kb : 100 + (uint32_t)(rand() % 201);
    if (size > left) size = left;
    void* p = malloc((size_t)size * 1024);
    if (!p) {
      free_chunks(chunks, n_chunks);
      return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "greet: out of memory allocating %u KiB (%u KiB done)",
                          (unsigned)kb, (unsigned)(kb - left));
    }
    memset(p, 0x5A, (size_t)size * 1024); /* touch every page */
    chunks[n_chunks++] = p;
    left -= size;
  }

  if (ms > 0) {
    int rc = airlock_wait_ms(ms);
    if (rc != AIRLOCK_OK) {
      free_chunks(chunks, n_chunks);
      return airlock_fail("greet: wait failed (code %d)", rc);
    }
  }
  free_chunks(chunks, n_chunks);

  size_t name_len = (size_t)(name_end - input);
  char* out = malloc(name_len + 8);
  if (!out) return airlock_fail_code(AIRLOCK_RESOURCE_EXHAUSTED, "greet: out of memory");
  memcpy(out, "Hello, ", 7);
  memcpy(out + 7, input, name_len);
  out[7 + name_len] = '!';
  airlock_output(out, name_len + 8);
  free(out);
  return AIRLOCK_OK;
}
