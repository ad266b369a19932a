// Status codes and errors shared by every layer and both wire encodings.
// The numeric values are part of the wire protocol and the skill ABI: never renumber.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace airlock {

enum class Code : uint8_t {
  Ok = 0,
  NotFound = 1,
  InvalidArgument = 2,
  Trap = 3,
  Timeout = 4,
  Cancelled = 5,
  ResourceExhausted = 6,
  PermissionDenied = 7,
  ExtensionCrashed = 8,
  Unavailable = 9,
  Internal = 10,
};
constexpr uint8_t kMaxCode = 10;

// Why a skill trapped; only meaningful when code == Code::Trap.
enum class TrapKind : uint8_t {
  None = 0,
  Unreachable = 1,
  MemoryOutOfBounds = 2,
  StackOverflow = 3,
  DivideByZero = 4,
  IntegerOverflow = 5,
  InvalidConversion = 6,
  IndirectCall = 7,
  Other = 8,
};
constexpr uint8_t kMaxTrapKind = 8;

std::string_view to_string(Code c);
std::string_view to_string(TrapKind t);

struct Error {
  Code code = Code::Internal;
  std::string message;
  TrapKind trap = TrapKind::None;

  std::string to_string() const;  // "Trap(unreachable): message"
};

inline Error make_error(Code c, std::string msg, TrapKind t = TrapKind::None) {
  return Error{c, std::move(msg), t};
}

// What Result::value() throws when it holds an Error: the Error itself, and its text.
class BadResultAccess : public std::runtime_error {
 public:
  explicit BadResultAccess(Error e) : std::runtime_error(e.to_string()), error_(std::move(e)) {}
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

// A value or an Error. Small on purpose: g++ 12 in C++20 mode has no std::expected.
// value() (and * and ->) on an Error throws BadResultAccess carrying it.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}  // NOLINT(google-explicit-constructor)
  Result(Error e) : v_(std::move(e)) {}  // NOLINT(google-explicit-constructor)
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const Error& error() const { return std::get<1>(v_); }
  Error&& take_error() { return std::get<1>(std::move(v_)); }

 private:
  void check() const {
    if (!ok()) throw BadResultAccess(std::get<1>(v_));
  }
  std::variant<T, Error> v_;
};

struct Unit {};
using Status = Result<Unit>;
inline Status ok_status() { return Unit{}; }

}  // namespace airlock
