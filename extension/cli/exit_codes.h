// Exit codes of airlock-extension (docs/CLI.md): one place, used by the commands and
// printed in --help's footer.
#pragma once

#include <string>

#include "airlock/status.h"

namespace airlock::cli {

constexpr int kExitOk = 0;
constexpr int kExitInternal = 1;  // a failure of airlock-extension itself
constexpr int kExitUsage = 2;     // bad arguments, unreadable --input-file/--services
constexpr int kExitLoad = 3;      // the skill could not be loaded
constexpr int kExitCallBase = 10; // the call failed with status code N: exit 10 + N

// Exit code of a call that failed with `code` (Ok: 0).
inline int exit_code_for(Code code) {
  return code == Code::Ok ? kExitOk : kExitCallBase + static_cast<int>(code);
}

// The table, as --help's footer shows it.
std::string exit_code_table();

}  // namespace airlock::cli
