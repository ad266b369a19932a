/* gemm (PolyBench 4.2): C = alpha*A*B + beta*C.  SMALL 60x70x80, MEDIUM 200x220x240. */
#include "polybench.h"

static double buf_a[200 * 240], buf_b[240 * 220], buf_c[200 * 220];

pb_result pb_gemm(int dataset) {
  const int ni = dataset == PB_SMALL ? 60 : 200, nj = dataset == PB_SMALL ? 70 : 220, nk = dataset == PB_SMALL ? 80 : 240;
  double(*A)[nk] = (double(*)[nk])buf_a;
  double(*B)[nj] = (double(*)[nj])buf_b;
  double(*C)[nj] = (double(*)[nj])buf_c;
  const double alpha = 1.5, beta = 1.2;
  for (int i = 0; i < ni; i++)
    for (int j = 0; j < nj; j++) C[i][j] = (double)((i * j + 1) % ni) / ni;
  for (int i = 0; i < ni; i++)
    for (int k = 0; k < nk; k++) A[i][k] = (double)(i * (k + 1) % nk) / nk;
  for (int k = 0; k < nk; k++)
    for (int j = 0; j < nj; j++) B[k][j] = (double)(k * (j + 2) % nj) / nj;

  const int64_t t0 = pb_now_ns();
  for (int i = 0; i < ni; i++) {
    for (int j = 0; j < nj; j++) C[i][j] *= beta;
    for (int k = 0; k < nk; k++)
      for (int j = 0; j < nj; j++) C[i][j] += alpha * A[i][k] * B[k][j];
  }
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum(buf_c, (long)ni * nj), t1 - t0};
  return r;
}
