#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, clang-19) of every decoder of untrusted bytes
# (tests/fuzz/README.md). Configures and builds build-fuzz/ (-DAIRLOCK_FUZZ=ON), then
# runs each TARGET (default: all) for N seconds on build-fuzz/corpus/TARGET, seeded from
# tests/fuzz/corpus/TARGET and from fuzz_seeds; crash artifacts go to build-fuzz/artifacts/.
# Exits 1 if any target found a crash (or failed to build).
#
#   tools/fuzz.sh [--seconds N] [--parallel J] [TARGET...]
#     --seconds N    fuzzing time per target (default 60)
#     --parallel J   targets fuzzed at once (default 2, the number of cores here)
#   targets: fuzz_msgpack_frames fuzz_proto_frames fuzz_ring fuzz_side_channel fuzz_wasm_parser
#            fuzz_zygote_wire
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build-fuzz"
ALL_TARGETS=(fuzz_msgpack_frames fuzz_proto_frames fuzz_ring fuzz_side_channel fuzz_wasm_parser fuzz_zygote_wire)
SECONDS_PER_TARGET=60
PARALLEL=2
TARGETS=()

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER_TARGET="${2:?--seconds needs a value}"; shift 2 ;;
    --parallel) PARALLEL="${2:?--parallel needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "fuzz.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *)
      if [[ " ${ALL_TARGETS[*]} " != *" $1 "* ]]; then
        echo "fuzz.sh: unknown target '$1' (known: ${ALL_TARGETS[*]})" >&2; exit 2
      fi
      TARGETS+=("$1"); shift ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")
[[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds must be a positive integer" >&2; exit 2; }
[[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --parallel must be a positive integer" >&2; exit 2; }

log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }
start=$(date +%s)

command -v clang++-19 >/dev/null || { echo "fuzz.sh: clang++-19 not found (tools/setup.sh installs it)" >&2; exit 1; }
if ! compgen -G "$(clang++-19 -print-resource-dir)/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null; then
  echo "fuzz.sh: libFuzzer missing: install the Debian package libclang-rt-19-dev (tools/setup.sh does)" >&2
  exit 1
fi

if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  log "configuring $BUILD_DIR (clang-19, AIRLOCK_FUZZ=ON)"
  cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_C_COMPILER=clang-19 \
    -DCMAKE_CXX_COMPILER=clang++-19 -DCMAKE_BUILD_TYPE=Debug -DAIRLOCK_FUZZ=ON >/dev/null
fi
log "building ${TARGETS[*]} with -j2"
if ! cmake --build "$BUILD_DIR" -j2 --target "${TARGETS[@]}" fuzz_seeds >"$BUILD_DIR/build.log" 2>&1; then
  tail -40 "$BUILD_DIR/build.log" >&2
  echo "fuzz.sh: build failed (whole log: $BUILD_DIR/build.log)" >&2
  exit 1
fi
built=$(date +%s)

FUZZ_BIN="$BUILD_DIR/tests/fuzz"
CORPUS="$BUILD_DIR/corpus"
ARTIFACTS="$BUILD_DIR/artifacts"
LOGS="$BUILD_DIR/logs"
mkdir -p "$CORPUS" "$ARTIFACTS" "$LOGS"
for t in "${TARGETS[@]}"; do
  mkdir -p "$CORPUS/$t" "$ARTIFACTS/$t"
  if compgen -G "$ROOT/tests/fuzz/corpus/$t/*" >/dev/null; then
    cp -n "$ROOT/tests/fuzz/corpus/$t/"* "$CORPUS/$t/"
  fi
  rm -f "$LOGS/$t.log" "$LOGS/$t.rc"
done
"$FUZZ_BIN/fuzz_seeds" "$CORPUS"  # fresh encodings of real frames, in step with the codecs

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Stack-use-after-return detection halves the msgpack fuzzer's speed (every malformed
# frame throws inside msgpack-c); a reproducer run without this script keeps it on.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_stack_use_after_return=0}"
run_one() {
  local t="$1" rc=0
  # -artifact_prefix ends in '/': crash-<sha1>, leak-..., timeout-..., oom-... inside it.
  "$FUZZ_BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$t/" \
    "$CORPUS/$t" >"$LOGS/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$LOGS/$t.rc"
}

log "fuzzing ${#TARGETS[@]} target(s) for ${SECONDS_PER_TARGET} s each, ${PARALLEL} at a time"
marker="$LOGS/.started"
touch "$marker"
for t in "${TARGETS[@]}"; do
  while [[ $(jobs -rp | wc -l) -ge $PARALLEL ]]; do wait -n || true; done
  run_one "$t" &
done
wait

failed=0
for t in "${TARGETS[@]}"; do
  rc=$(cat "$LOGS/$t.rc" 2>/dev/null || echo 1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$t.log" | tail -1)
  [[ -n "$execs" ]] || execs=$(grep -oE '^#[0-9]+' "$LOGS/$t.log" | tail -1 | tr -d '#')
  status=$(grep -E '^#[0-9]+.*cov:' "$LOGS/$t.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)
  new_artifacts=$(find "$ARTIFACTS/$t" -type f -newer "$marker" ! -name 'slow-unit-*' 2>/dev/null | sort)
  if [[ "$rc" -eq 0 && -z "$new_artifacts" ]]; then
    printf '%-20s %12s execs  %-32s no crash\n' "$t" "${execs:-?}" "${status:-}"
  else
    failed=1
    printf '%-20s %12s execs  %-32s CRASH (exit %s)\n' "$t" "${execs:-?}" "${status:-}" "$rc"
    for a in $new_artifacts; do echo "    artifact: $a"; done
    echo "    log: $LOGS/$t.log"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*fuzz check failed|.*runtime error)' "$LOGS/$t.log" | head -5 | sed 's/^/    /' || true
  fi
done
end=$(date +%s)
log "done in $((end - start)) s (build $((built - start)) s); corpus in $CORPUS, logs in $LOGS"
exit "$failed"
