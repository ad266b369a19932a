// `airlockctl explain MANIFEST`: what an extension with this capability manifest
// (airlock/manifest.h) can and cannot do at each layer.
#pragma once

#include <string>

#include "airlock/host.h"

namespace airlock::ctl {

std::string explain(const airlock::ExtensionOptions& o, const std::string& path);

}  // namespace airlock::ctl
