/* runtime_noop: the native floor of runtime_bench's cold start (no container, no V8):
 * echoes every byte it reads on stdin to stdout; exits at EOF. One byte in, one byte
 * out is its "call". */
#include <unistd.h>

int main(void) {
  char c;
  while (read(0, &c, 1) == 1)
    if (write(1, &c, 1) != 1) return 1;
  return 0;
}
