/* iovec_bomb: one fd_write of 4,000 iovecs of 16 MiB each (64 GB of "output" from one
 * import call). The import must bound its work per call. */
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

#include <airlock/skill.h>

#define COUNT 4000
#define LEN (16u << 20)

static __wasi_ciovec_t iov[COUNT];

AIRLOCK_SKILL(run) {
  char* buf = malloc(LEN);
  if (!buf) return airlock_fail("no memory");
  memset(buf, 'y', LEN);
  for (int i = 0; i < COUNT; ++i) {
    iov[i].buf = (const uint8_t*)buf;
    iov[i].buf_len = LEN;
  }
  __wasi_size_t written = 0;
  __wasi_errno_t err = __wasi_fd_write(1, iov, COUNT, &written);
  char msg[64];
  int len = 0;
  for (uint32_t v = written; len == 0 || v; v /= 10) msg[len++] = (char)('0' + v % 10);
  for (int i = 0; i < len / 2; ++i) {
    char t = msg[i];
    msg[i] = msg[len - 1 - i];
    msg[len - 1 - i] = t;
  }
  airlock_output(msg, (size_t)len);
  return err == 0 ? AIRLOCK_OK : airlock_fail("fd_write: errno %d", (int)err);
}
