#include "airlock/status.h"

namespace airlock {

std::string_view to_string(Code c) {
  switch (c) {
    case Code::Ok: return "Ok";
    case Code::NotFound: return "NotFound";
    case Code::InvalidArgument: return "InvalidArgument";
    case Code::Trap: return "Trap";
    case Code::Timeout: return "Timeout";
    case Code::Cancelled: return "Cancelled";
    case Code::ResourceExhausted: return "ResourceExhausted";
    case Code::PermissionDenied: return "PermissionDenied";
    case Code::ExtensionCrashed: return "ExtensionCrashed";
    case Code::Unavailable: return "Unavailable";
    case Code::Internal: return "Internal";
  }
  return "Unknown";
}

std::string_view to_string(TrapKind t) {
  switch (t) {
    case TrapKind::None: return "none";
    case TrapKind::Unreachable: return "unreachable";
    case TrapKind::MemoryOutOfBounds: return "memory out of bounds";
    case TrapKind::StackOverflow: return "stack overflow";
    case TrapKind::DivideByZero: return "divide by zero";
    case TrapKind::IntegerOverflow: return "integer overflow";
    case TrapKind::InvalidConversion: return "invalid conversion";
    case TrapKind::IndirectCall: return "indirect call";
    case TrapKind::Other: return "other";
  }
  return "unknown";
}

std::string Error::to_string() const {
  std::string s(airlock::to_string(code));
  if (code == Code::Trap && trap != TrapKind::None) {
    s += "(";
    s += airlock::to_string(trap);
    s += ")";
  }
  s += ": ";
  s += message;
  return s;
}

}  // namespace airlock
