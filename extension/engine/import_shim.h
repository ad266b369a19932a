// The import shim: one small wasm module per engine that imports every host function
// and re-exports each as a wasm function forwarding its arguments.
//
// Why: V8 10.2 compiles a wasm-to-JS wrapper (a TurboFan stub) for every JS-function
// import of every module, and keeps it in that module only. A skill importing the host
// functions directly paid for 7 such wrappers at compile time and again at its first
// instantiation: 35% of the CPU of loading a 32 KB skill (perf, 500 distinct skills).
// An import that is an exported function of another wasm instance needs no wrapper (a
// direct wasm-to-wasm call), so skills import the shim's exports instead, and the
// wrappers are compiled once per engine, in the shim, one per distinct signature.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace airlock::engine {

// A module importing function i of `types` as ("h", "<i>") and exporting a function of
// the same type as "<i>" that calls it with its arguments and returns its result.
std::vector<uint8_t> encode_import_shim(std::span<const FuncType> types);

}  // namespace airlock::engine
