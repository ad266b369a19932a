/* atax (PolyBench 4.2): y = A^T (A x).  SMALL M=116 N=124, MEDIUM M=390 N=410. */
#include "polybench.h"

static double buf_a[390 * 410], x[410], y[410], tmp[390];

pb_result pb_atax(int dataset) {
  const int m = dataset == PB_SMALL ? 116 : 390, n = dataset == PB_SMALL ? 124 : 410;
  double(*A)[n] = (double(*)[n])buf_a;
  const double fn = (double)n;
  for (int i = 0; i < n; i++) x[i] = 1 + (i / fn);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) A[i][j] = (double)((i + j) % n) / (5 * m);

  const int64_t t0 = pb_now_ns();
  for (int i = 0; i < n; i++) y[i] = 0;
  for (int i = 0; i < m; i++) {
    tmp[i] = 0.0;
    for (int j = 0; j < n; j++) tmp[i] = tmp[i] + A[i][j] * x[j];
    for (int j = 0; j < n; j++) y[j] = y[j] + A[i][j] * tmp[i];
  }
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum(y, n), t1 - t0};
  return r;
}
