#!/usr/bin/env bash
# The README's promise, tested: install Airlock into a fresh prefix, build
# examples/outside (find_package(Airlock), Airlock::host, airlock_add_skill) against it,
# run it, and check that nothing installed points back into the source or build tree.
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
src="$(cd "$2" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

t0=$(date +%s%N)
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
t1=$(date +%s%N)
cmake -S "$src/examples/outside" -B "$work/out" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/out" -j2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
t2=$(date +%s%N)
echo "install $(( (t1 - t0) / 1000000 )) ms, configure + build of examples/outside $(( (t2 - t1) / 1000000 )) ms"

fail() { echo "FAIL: $*" >&2; exit 1; }

# Nothing installed names the trees it came from (rpaths, baked-in paths, config files).
if grep -rIl -e "$build" -e "$src" "$prefix" >"$work/leaks" 2>/dev/null || \
   grep -rl --binary-files=binary -e "$build" -e "$src" "$prefix" >>"$work/leaks" 2>/dev/null; then
  fail "installed files name the build or source tree: $(sort -u "$work/leaks" | tr '\n' ' ')"
fi

# The outside program runs the outside skill; the library finds the installed extension.
out="$(env -u AIRLOCK_EXTENSION "$work/out/hello_host" "$work/out/skills/hello.wasm" Ada)"
[[ "$out" == "Hello, Ada!" ]] || fail "hello_host printed '$out'"
# ... and the C++ skill built by the installed SDK (libc++ for wasm32).
out="$(env -u AIRLOCK_EXTENSION "$work/out/hello_host" "$work/out/skills/hello_cpp.wasm" Grace)"
[[ "$out" == "Hello, Grace!" ]] || fail "hello_host with the C++ skill printed '$out'"

# Errors arrive as text naming the extension and the skill.
if err="$(env -u AIRLOCK_EXTENSION "$work/out/hello_host" "$work/out/skills/hello.wasm" "" 2>&1)"; then
  fail "an empty name succeeded: $err"
fi
[[ "$err" == *"extension 'skills'"* && "$err" == *"skill 'hello'"* && "$err" == *"empty name"* ]] || fail "error was '$err'"

# A configured extension path that does not exist is an error, not a fallback.
if err="$(AIRLOCK_EXTENSION=/nonexistent "$work/out/hello_host" "$work/out/skills/hello.wasm" Ada 2>&1)"; then
  fail "AIRLOCK_EXTENSION=/nonexistent still worked: $err"
fi
[[ "$err" == *"/nonexistent"* ]] || fail "error was '$err'"

# pkg-config describes the same library.
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --libs airlock | grep -q -- "-lairlock" || fail "airlock.pc"
echo "ok: installed to a fresh prefix, built and ran examples/outside"
