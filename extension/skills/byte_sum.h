/* byte_sum: the sum of n bytes (each 0..255), shared by the sum and sum_resident skills.
 *
 * Speed: 8 bytes per step (SWAR): the even and odd bytes of each 64-bit word are added
 * into four 16-bit lanes, which are folded into the 64-bit total every 128 words,
 * before they can overflow (128 * 2 * 255 = 65280 < 65536). */
#ifndef AIRLOCK_SKILLS_BYTE_SUM_H
#define AIRLOCK_SKILLS_BYTE_SUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t byte_sum_fold_lanes(uint64_t lanes) {
  return (lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) + ((lanes >> 32) & 0xFFFF) + (lanes >> 48);
}

static inline uint64_t byte_sum(const uint8_t* p, size_t n) {
  const uint64_t kEven = 0x00FF00FF00FF00FFull;
  uint64_t total = 0;
  while (n >= 8) {
    size_t words = n / 8;
    if (words > 128) words = 128;
    uint64_t lanes = 0;
    for (size_t i = 0; i < words; i++) {
      uint64_t w;
      memcpy(&w, p + 8 * i, 8); /* unaligned load */
      lanes += (w & kEven) + ((w >> 8) & kEven);
    }
    total += byte_sum_fold_lanes(lanes);
    p += 8 * words;
    n -= 8 * words;
  }
  while (n--) total += *p++;
  return total;
}

/* The total as exactly 8 bytes, little-endian, as the skill's output. */
static inline void byte_sum_output(uint64_t total) {
  uint8_t out[8];
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(total >> (8 * i));
  airlock_output(out, sizeof out);
}

#endif
