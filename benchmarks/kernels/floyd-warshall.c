/* floyd-warshall (PolyBench 4.2): all-pairs shortest paths, int.  SMALL N=180, MEDIUM N=500. */
#include "polybench.h"

static int buf_path[500 * 500];

pb_result pb_floyd_warshall(int dataset) {
  const int n = dataset == PB_SMALL ? 180 : 500;
  int(*path)[n] = (int(*)[n])buf_path;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      path[i][j] = i * j % 7 + 1;
      if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) path[i][j] = 999;
    }

  const int64_t t0 = pb_now_ns();
  for (int k = 0; k < n; k++)
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++)
        path[i][j] = path[i][j] < path[i][k] + path[k][j] ? path[i][j] : path[i][k] + path[k][j];
  const int64_t t1 = pb_now_ns();
  pb_result r = {pb_checksum_int(buf_path, (long)n * n), t1 - t0};
  return r;
}
