/* PolyBench/C-style kernels for runtime_bench (benchmarks/README.md, "runtime_bench").
 * Each kernel is one C file, compiled twice from the same source: natively (the
 * project's C compiler, -O2, linked into runtime_bench) and as a skill
 * (airlock_add_skill() + skill_main.c). A kernel initialises its arrays as PolyBench 4.2
 * does, times only the kernel proper with CLOCK_MONOTONIC (the same lines run on both
 * sides), and returns a weighted checksum of its output array. */
#ifndef RUNTIME_BENCH_POLYBENCH_H
#define RUNTIME_BENCH_POLYBENCH_H

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PB_SMALL 0
#define PB_MEDIUM 1

typedef struct {
  double checksum;   /* sum of out[i] * (i % 13 + 1) over the output array, row-major */
  int64_t kernel_ns; /* the kernel proper (initialisation and checksum excluded) */
} pb_result;

static inline int64_t pb_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline double pb_checksum(const double* out, long n) {
  double s = 0;
  for (long i = 0; i < n; ++i) s += out[i] * (double)(i % 13 + 1);
  return s;
}

static inline double pb_checksum_int(const int* out, long n) {
  double s = 0;
  for (long i = 0; i < n; ++i) s += (double)out[i] * (double)(i % 13 + 1);
  return s;
}

pb_result pb_gemm(int dataset);
pb_result pb_2mm(int dataset);
pb_result pb_atax(int dataset);
pb_result pb_jacobi_2d(int dataset);
pb_result pb_seidel_2d(int dataset);
pb_result pb_floyd_warshall(int dataset);
pb_result pb_nussinov(int dataset);

#ifdef __cplusplus
}
#endif

#endif
