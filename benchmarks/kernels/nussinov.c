/* nussinov (PolyBench 4.2): RNA folding, dynamic programming, int.  SMALL N=180, MEDIUM N=500. */
#include "polybench.h"

static int seq[500];
static int buf_table[500 * 500];

#define match(b1, b2) (((b1) + (b2)) == 3 ? 1 : 0)
#define max_score(s1, s2) ((s1 >= s2) ? s1 : s2)

pb_result pb_nussinov(int dataset) {
  const int n = dataset == PB_SMALL ? 180 : 500;
  int(*table)[n] = (int(*)[n])buf_table;
  for (int i = 0; i < n; i++) seq[i] = (i + 1) % 4;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) table[i][j] = 0;

  const int64_t t0 = pb_now_ns();
  for (int i = n - 1; i >= 0; i--) {
    for (int j = i + 1; j < n; j++) {
      if (j - 1 >= 0) table[i][j] = max_score(table[i][j], table[i][j - 1]);
      if (i + 1 < n) table[i][j] = max_score(table[i][j], table[i + 1][j]);
      if (j - 1 >= 0 && i + 1 < n) {
        if (i < j - 1) table[i][j] = max_score(table[i][j], table[i + 1][j - 1] + match(seq[i], seq[j]));
        else table[i][j] = max_score(table[i][j], table[i + 1][j - 1]);
      }
      for (int k = i + 1; k < j; k++) table[i][j] = max_score(table[i][j], table[i][k] + table[k + 1][j]);
    }
  }
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum_int(buf_table, (long)n * n), t1 - t0};
  return r;
}
