#include "log_gate.h"

#include <algorithm>

namespace airlock::detail {

namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 if it is not a valid one
// (overlong forms, surrogates and code points above U+10FFFF are invalid too).
size_t utf8_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
  if (n == 0 || c > 0xf4 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
  }
  if (n == 3 && c == 0xe0 && b(i + 1) < 0xa0) return 0;  // overlong
  if (n == 3 && c == 0xed && b(i + 1) >= 0xa0) return 0;  // surrogate
  if (n == 4 && c == 0xf0 && b(i + 1) < 0x90) return 0;  // overlong
  if (n == 4 && c == 0xf4 && b(i + 1) >= 0x90) return 0;  // > U+10FFFF
  return n;
}

}  // namespace

std::string escape_log_text(std::string_view text, size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::string piece;
    size_t used = 1;
    if (c == '\\') {
      piece = "\\\\";
    } else if (c == '\n') {
      piece = "\\n";
    } else if (c == '\r') {
      piece = "\\r";
    } else if (c == '\t') {
      piece = "\\t";
    } else if (c == 0x1b) {
      piece = "\\e";
    } else if (c < 0x20 || c == 0x7f) {
      piece = {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    } else if (c < 0x80) {
      piece.assign(1, static_cast<char>(c));
    } else if (size_t n = utf8_length(text, i); n == 0) {
      piece = {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    } else if (n == 2 && c == 0xc2 && static_cast<unsigned char>(text[i + 1]) < 0xa0) {
      // C1 controls U+0080..U+009F (0x9b is an 8-bit CSI: terminal escapes again).
      const auto c1 = static_cast<unsigned char>(text[i + 1]);
      piece = {'\\', 'x', kHex[c1 >> 4], kHex[c1 & 15]};
      used = 2;
    } else {
      piece.assign(text.substr(i, n));
      used = n;
    }
    if (out.size() + piece.size() > max_bytes) {
      out += "...";
      return out;
    }
    out += piece;
    i += used;
  }
  return out;
}

bool LogGate::admit(Clock::time_point now) {
  if (last_ != Clock::time_point{}) {
    const double secs = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(2.0 * rate_, tokens_ + secs * rate_);
  }
  last_ = now;
  if (tokens_ >= 1.0) {
    tokens_ -= 1.0;
    return true;
  }
  ++dropped_;
  return false;
}

}  // namespace airlock::detail
