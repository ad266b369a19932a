/* 2mm (PolyBench 4.2): D = alpha*A*B*C + beta*D.  SMALL 40/50/70/80, MEDIUM 180/190/210/220. */
#include "polybench.h"

static double buf_tmp[180 * 190], buf_a[180 * 210], buf_b[210 * 190], buf_c[190 * 220], buf_d[180 * 220];

pb_result pb_2mm(int dataset) {
  const int s = dataset == PB_SMALL;
  const int ni = s ? 40 : 180, nj = s ? 50 : 190, nk = s ? 70 : 210, nl = s ? 80 : 220;
  double(*tmp)[nj] = (double(*)[nj])buf_tmp;
  double(*A)[nk] = (double(*)[nk])buf_a;
  double(*B)[nj] = (double(*)[nj])buf_b;
  double(*C)[nl] = (double(*)[nl])buf_c;
  double(*D)[nl] = (double(*)[nl])buf_d;
  const double alpha = 1.5, beta = 1.2;
  for (int i = 0; i < ni; i++)
    for (int k = 0; k < nk; k++) A[i][k] = (double)((i * k + 1) % ni) / ni;
  for (int k = 0; k < nk; k++)
    for (int j = 0; j < nj; j++) B[k][j] = (double)(k * (j + 1) % nj) / nj;
  for (int j = 0; j < nj; j++)
    for (int l = 0; l < nl; l++) C[j][l] = (double)((j * (l + 3) + 1) % nl) / nl;
  for (int i = 0; i < ni; i++)
    for (int l = 0; l < nl; l++) D[i][l] = (double)(i * (l + 2) % nk) / nk;

  const int64_t t0 = pb_now_ns();
  for (int i = 0; i < ni; i++)
    for (int j = 0; j < nj; j++) {
      tmp[i][j] = 0.0;
      for (int k = 0; k < nk; ++k) tmp[i][j] += alpha * A[i][k] * B[k][j];
    }
  for (int i = 0; i < ni; i++)
    for (int l = 0; l < nl; l++) {
      D[i][l] *= beta;
      for (int j = 0; j < nj; ++j) D[i][l] += tmp[i][j] * C[j][l];
    }
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum(buf_d, (long)ni * nl), t1 - t0};
  return r;
}
