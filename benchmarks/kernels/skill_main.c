/* The skill around one kernel (built per kernel with -DKERNEL_FN=pb_<name>): input
 * "small" or "medium" (empty: medium); output 16 bytes, little-endian: the checksum
 * (double) and the kernel's own time in ns (int64), measured inside the skill exactly
 * as the native build measures it. */
#include <airlock/skill.h>
#include <string.h>

#include "polybench.h"

#ifndef KERNEL_FN
#error "build with -DKERNEL_FN=pb_<kernel>"
#endif

AIRLOCK_SKILL(run) {
  int dataset = PB_MEDIUM;
  if (input_len == 5 && memcmp(input, "small", 5) == 0) dataset = PB_SMALL;
  else if (input_len == 6 && memcmp(input, "medium", 6) == 0) dataset = PB_MEDIUM;
  else if (input_len != 0) return airlock_fail("input must be 'small' or 'medium'");
  pb_result r = KERNEL_FN(dataset);
  unsigned char out[16];
  memcpy(out, &r.checksum, 8);
  memcpy(out + 8, &r.kernel_ns, 8);
  airlock_output(out, sizeof out);
  return AIRLOCK_OK;
}
