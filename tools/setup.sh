#!/usr/bin/env bash
# Airlock setup: installs the Debian packages the project needs, obtains V8 10.2 from
# Debian's libnode108 into a private prefix (.deps/libnode), then configures and builds.
# Idempotent: a second run only rebuilds. Works as root or through sudo.
#
#   tools/setup.sh [--build-dir DIR] [--build-type Release|Debug] [--sanitize] [--no-build]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build"
BUILD_TYPE="Release"
SANITIZE=OFF
DO_BUILD=1
JOBS="${AIRLOCK_JOBS:-2}"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --build-type) BUILD_TYPE="$2"; shift 2 ;;
    --sanitize) SANITIZE=ON; shift ;;
    --no-build) DO_BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 libclang-rt-19-dev binaryen wabt
  libc++-19-dev-wasm32 libc++abi-19-dev-wasm32
  libuv1-dev libmsgpack-cxx-dev libspdlog-dev libfmt-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libseccomp-dev libcli11-dev nlohmann-json3-dev prometheus-cpp-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # libnode108's shared-library dependencies (the .deb itself is only extracted)
  libbrotli1 libc-ares2 libicu72 libnghttp2-14 libssl3 zlib1g libuv1
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages: all present"
fi

# V8 10.2: the system copy if Debian's libnode-dev is really installed, else a private
# extraction (apt-get install libnode-dev conflicts with a preinstalled nodejs 20, which
# must not be removed).
V8_PREFIX=""
if dpkg-query -W -f='${Status}' libnode-dev 2>/dev/null | grep -q "install ok installed" \
   && grep -q "define V8_MAJOR_VERSION 10" /usr/include/node/v8-version.h 2>/dev/null; then
  V8_PREFIX="/usr"
  log "V8: using system libnode-dev"
else
  DEPS="$ROOT/.deps/libnode"
  if [[ ! -f "$DEPS/.complete" ]]; then
    log "V8: extracting libnode108 + libnode-dev into $DEPS"
    tmp="$(mktemp -d)"
    chmod 777 "$tmp"   # apt-get download runs as _apt
    (cd "$tmp" && apt-get download -qq libnode108 libnode-dev 2>/dev/null \
       || { $SUDO apt-get update -qq && apt-get download -qq libnode108 libnode-dev; })
    rm -rf "$DEPS"; mkdir -p "$DEPS"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$DEPS"; done
    rm -rf "$tmp"
    touch "$DEPS/.complete"
  else
    log "V8: private copy present in $DEPS"
  fi
  V8_PREFIX="$DEPS/usr"
fi

[[ $DO_BUILD -eq 1 ]] || exit 0

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  log "configuring $BUILD_DIR ($BUILD_TYPE, sanitize=$SANITIZE)"
  cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DAIRLOCK_SANITIZE="$SANITIZE" -DAIRLOCK_V8_PREFIX="$V8_PREFIX" >/dev/null
fi
log "building with -j$JOBS"
cmake --build "$BUILD_DIR" -j"$JOBS"
log "done: binaries in $BUILD_DIR"
