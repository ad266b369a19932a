/* seidel-2d (PolyBench 4.2): 9-point Gauss-Seidel sweep, in place.  SMALL T=40 N=120, MEDIUM T=100 N=400. */
#include "polybench.h"

static double buf_a[400 * 400];

pb_result pb_seidel_2d(int dataset) {
  const int tsteps = dataset == PB_SMALL ? 40 : 100, n = dataset == PB_SMALL ? 120 : 400;
  double(*A)[n] = (double(*)[n])buf_a;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) A[i][j] = ((double)i * (j + 2) + 2) / n;

  const int64_t t0 = pb_now_ns();
  for (int t = 0; t <= tsteps - 1; t++)
    for (int i = 1; i <= n - 2; i++)
      for (int j = 1; j <= n - 2; j++)
        A[i][j] = (A[i - 1][j - 1] + A[i - 1][j] + A[i - 1][j + 1] + A[i][j - 1] + A[i][j] + A[i][j + 1] + A[i + 1][j - 1] +
                   A[i + 1][j] + A[i + 1][j + 1]) /
                  9.0;
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum(buf_a, (long)n * n), t1 - t0};
  return r;
}
