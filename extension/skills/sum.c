/* sum: returns the sum of its input bytes (each 0..255) as an unsigned 64-bit integer,
 * output as exactly 8 bytes, little-endian. Empty input -> 8 zero bytes. */
#include <airlock/skill.h>

#include "byte_sum.h"

AIRLOCK_SKILL(run) {
  byte_sum_output(byte_sum(input, input_len));
  return AIRLOCK_OK;
}
