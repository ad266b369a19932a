#!/usr/bin/env bash
# Runs the whole test suite from any state, including a fresh clone: sets up and builds
# what is missing (tools/setup.sh), then runs ctest.
#   tools/test.sh [--sanitize]   (--sanitize: ASan+UBSan build in build-asan/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build"
SETUP_ARGS=()
case "${1:-}" in
  --sanitize) BUILD_DIR="$ROOT/build-asan"; SETUP_ARGS=(--sanitize --build-type RelWithDebInfo) ;;
  -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "test.sh: unknown argument '$1'" >&2; exit 2 ;;
esac
"$ROOT/tools/setup.sh" --build-dir "$BUILD_DIR" "${SETUP_ARGS[@]}"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 120 -j2

# Fuzzing smoke run: every decoder of untrusted bytes under libFuzzer for 10 s each, on
# the corpus kept in build-fuzz/ (tools/fuzz.sh, tests/fuzz/README.md). Fails on a crash.
"$ROOT/tools/fuzz.sh" --seconds 10
