// One capability manifest per extension: everything it may do, in one JSON file, read
// into ExtensionOptions. docs/SECURITY.md says what each field opens at each layer;
// `airlockctl explain FILE` prints it for one manifest. Nothing is allowed by default.
//
//   {
//     "name": "summarizer",
//     "services": ["kv.get"],              host services its skills may call ([] none; absent: by ServiceOptions::allow)
//     "may_call": ["tokenizer/run"],       skills of other extensions ("EXT" or "EXT/SKILL")
//     "readable": ["/srv/models"],         paths bound read-only into its empty root
//     "env": {"MODEL": "small"},           its whole environment
//     "network": "none",                   the only value: no interface but a down loopback
//     "limits": {"memory_mb": 64, "timeout_ms": 500,    per skill instance / call
//                "total_memory_mb": 512,                all its skill memory together
//                "start_timeout_ms": 10000},
//     "restart": {"mode": "on-failure", "max_restarts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 5000}
//   }
//
// Unknown keys, wrong types and out-of-range numbers are errors (InvalidArgument naming
// the key): a typo in a security declaration must not pass silently.
#pragma once

#include <string>
#include <string_view>

#include "airlock/host.h"

namespace airlock {

Result<ExtensionOptions> parse_manifest(std::string_view json, std::string_view origin = "manifest");
Result<ExtensionOptions> load_manifest(const std::string& path);

}  // namespace airlock
