// A check that stops the fuzzer: libFuzzer records the input that broke it as a crash.
#pragma once

#include <cstdio>

// On failure prints where and what, then traps (not abort(): no handler can swallow it).
#define AIRLOCK_FUZZ_CHECK(cond)                                                        \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                 \
    }                                                                                   \
  } while (0)
