/* jacobi-2d (PolyBench 4.2): 5-point stencil, two arrays.  SMALL T=40 N=90, MEDIUM T=100 N=250. */
#include "polybench.h"

static double buf_a[250 * 250], buf_b[250 * 250];

pb_result pb_jacobi_2d(int dataset) {
  const int tsteps = dataset == PB_SMALL ? 40 : 100, n = dataset == PB_SMALL ? 90 : 250;
  double(*A)[n] = (double(*)[n])buf_a;
  double(*B)[n] = (double(*)[n])buf_b;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      A[i][j] = ((double)i * (j + 2) + 2) / n;
      B[i][j] = ((double)i * (j + 3) + 3) / n;
    }

  const int64_t t0 = pb_now_ns();
  for (int t = 0; t < tsteps; t++) {
    for (int i = 1; i < n - 1; i++)
      for (int j = 1; j < n - 1; j++) B[i][j] = 0.2 * (A[i][j] + A[i][j - 1] + A[i][1 + j] + A[1 + i][j] + A[i - 1][j]);
    for (int i = 1; i < n - 1; i++)
      for (int j = 1; j < n - 1; j++) A[i][j] = 0.2 * (B[i][j] + B[i][j - 1] + B[i][1 + j] + B[1 + i][j] + B[i - 1][j]);
  }
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum(buf_a, (long)n * n), t1 - t0};
  return r;
}
