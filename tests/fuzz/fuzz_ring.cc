// Fuzzes both ends of the shared-memory ring (proto/ring.cc) against a hostile peer that
// writes whatever it likes into the shared words and data: RingReader against a writer
// that publishes any head and any bytes, RingWriter against a reader that publishes any
// tail. The rings live in heap blocks of exactly ring_bytes(capacity), so ASan catches
// any access outside them.
//
// Input: a sequence of operations, each one byte (op) and up to 8 bytes of argument:
//   op % 6 == 0: the hostile writer sets the head word to the argument
//   op % 6 == 1: the peer writes a byte anywhere in either ring, header words included
//                (argument: bit 0 which ring, bits 8-: offset, bits 1-7 and the value byte)
//   op % 6 == 2: our reader reads up to (argument % 3 * capacity) bytes
//   op % 6 == 3: the hostile reader sets the tail word to the argument
//   op % 6 == 4: our writer writes (argument % 3 * capacity) bytes
//   op % 6 == 5: both ends look without blocking (readable, room, wait with a past deadline)
//
// Checked, beyond "no sanitizer report", against a model of what each end may do: a read
// returns exactly min(published - consumed, asked) bytes, those at the masked positions,
// when the head is one a writer could have published, and fails for good otherwise;
// a write takes exactly min(room, asked) bytes, puts them at the masked positions and
// publishes the new head, and fails for good once the tail is impossible.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "airlock/ring.h"
#include "fuzz_check.h"

namespace {

using namespace airlock::proto;
constexpr uint32_t kCap = kRingMinCapacity;

struct Input {
  const uint8_t* p;
  size_t n;
  bool take(uint8_t& b) {
    if (n == 0) return false;
    b = *p++;
    n--;
    return true;
  }
  uint64_t arg() {
    uint64_t v = 0;
    for (int i = 0; i < 8 && n > 0; i++, p++, n--) v |= uint64_t{*p} << (8 * i);
    return v;
  }
};

uint64_t load64(const std::byte* region, size_t off) {
  uint64_t v;
  std::memcpy(&v, region + off, 8);
  return v;
}
void store64(std::byte* region, size_t off, uint64_t v) { std::memcpy(region + off, &v, 8); }

struct Region {
  std::byte* p = static_cast<std::byte*>(std::aligned_alloc(64, ring_bytes(kCap)));
  Region() { std::memset(p, 0, ring_bytes(kCap)); }
  ~Region() { std::free(p); }
  std::byte* data() { return p + kRingHeaderBytes; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Region theirs_to_us, ours_to_them;  // what our reader reads; what our writer writes
  RingReader reader(theirs_to_us.p, kCap);
  RingWriter writer(ours_to_them.p, kCap);
  uint64_t consumed = 0, head = 0;  // the model: our reader's tail, our writer's head
  bool reader_failed = false, writer_failed = false;
  std::vector<std::byte> buf(3 * kCap), src(3 * kCap);
  Input in{data, size};
  uint8_t op;
  while (in.take(op)) {
    const uint64_t a = in.arg();
    switch (op % 6) {
      case 0:
        store64(theirs_to_us.p, 0, a);
        break;
      case 1:
        (a & 1 ? ours_to_them : theirs_to_us).p[(a >> 8) % ring_bytes(kCap)] = std::byte(a >> 1);
        break;
      case 2: {
        const size_t want = a % (3 * kCap);
        const uint64_t published = load64(theirs_to_us.p, 0);
        auto got = reader.read(std::span(buf).first(want));
        const bool valid = !reader_failed && published - consumed <= kCap;
        AIRLOCK_FUZZ_CHECK(got.ok() == valid);
        if (!valid) {
          reader_failed = true;
          AIRLOCK_FUZZ_CHECK(reader.readable());
          break;
        }
        const size_t expect = std::min<uint64_t>(published - consumed, want);
        AIRLOCK_FUZZ_CHECK(*got == expect);
        for (size_t i = 0; i < expect; i++)
          AIRLOCK_FUZZ_CHECK(buf[i] == theirs_to_us.data()[(consumed + i) % kCap]);
        consumed += expect;
        if (expect > 0) AIRLOCK_FUZZ_CHECK(load64(theirs_to_us.p, 64) == consumed);  // the tail is published
        break;
      }
      case 3:
        store64(ours_to_them.p, 64, a);
        break;
      case 4: {
        const size_t want = a % (3 * kCap);
        for (size_t i = 0; i < want; i++) src[i] = std::byte((head + i) * 131 >> 3);
        const uint64_t tail = load64(ours_to_them.p, 64);
        auto put = writer.write(std::span(src).first(want));
        const bool valid = !writer_failed && head - tail <= kCap;
        AIRLOCK_FUZZ_CHECK(put.ok() == valid);
        if (!valid) {
          writer_failed = true;
          break;
        }
        const size_t expect = std::min<uint64_t>(kCap - (head - tail), want);
        AIRLOCK_FUZZ_CHECK(*put == expect);
        for (size_t i = 0; i < expect; i++) AIRLOCK_FUZZ_CHECK(ours_to_them.data()[(head + i) % kCap] == src[i]);
        head += expect;
        // Published after every write that took bytes (the writer never reads it back).
        if (expect > 0) AIRLOCK_FUZZ_CHECK(load64(ours_to_them.p, 0) == head);
        break;
      }
      default: {
        const bool readable = reader.readable();
        AIRLOCK_FUZZ_CHECK(readable == (reader_failed || load64(theirs_to_us.p, 0) != consumed));
        AIRLOCK_FUZZ_CHECK(reader.wait(std::chrono::steady_clock::now() - std::chrono::seconds(1)) == readable);
        const uint64_t tail = load64(ours_to_them.p, 64);
        auto room = writer.room();
        const bool valid = !writer_failed && head - tail <= kCap;
        AIRLOCK_FUZZ_CHECK(room.ok() == valid);
        if (valid) AIRLOCK_FUZZ_CHECK(*room == kCap - (head - tail));
        writer_failed = !valid;
        (void)writer.take_sleeper();
        (void)reader.take_waiting_writer();
        AIRLOCK_FUZZ_CHECK(reader.arm() == readable);
        reader.disarm();
        auto asked = writer.ask_for_room();  // the same tail: the same verdict and room
        AIRLOCK_FUZZ_CHECK(asked.ok() == valid);
        if (valid) AIRLOCK_FUZZ_CHECK(*asked == *room);
        break;
      }
    }
  }
  return 0;
}
