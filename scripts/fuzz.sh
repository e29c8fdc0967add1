#!/usr/bin/env bash
# Fuzzes the input parsers with libFuzzer (clang-14): config files, layer specs, dataset files,
# checkpoints, COCO JSON, box arrays, the NIfTI and DICOM converters. Builds into build-fuzz (every library instrumented with -fsanitize=fuzzer-no-link,
# address), replays the committed seeds and former crashes (tests/fuzz/corpus, tests/fuzz/regressions),
# then fuzzes each target for the given time and prints executions per target.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]   (targets: settings spec dataset checkpoint coco boxes nifti dicom)
#
# New interesting inputs go to build-fuzz/fuzz-corpus/<target>; crashes to build-fuzz/fuzz-artifacts/<target>.
# A crash found becomes a regression: copy it to tests/fuzz/regressions/<target>/ with a note in
# tests/fuzz/README.md once fixed (tests/fuzz/known/ holds reproducers of findings not fixed yet).
# Exit status: non-zero when a replay failed or fuzzing found anything, except the artifact kinds
# listed in FUZZ_TOLERATE (comma-separated: crash, leak, oom, timeout; e.g. FUZZ_TOLERATE=timeout
# for the HDF5 library's own hangs on corrupted files, see tests/fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(settings spec dataset checkpoint coco boxes nifti dicom)
build=${FUZZ_BUILD_DIR:-build-fuzz}
flags="-fsanitize=fuzzer-no-link,address -fno-omit-frame-pointer -g"

mkdir -p "$build"
source scripts/compiler_cache.sh
CC=clang-14 CXX=clang++-14 cmake -S . -B "$build" "${compiler_cache_args[@]}" -DMPICNN_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
make -C "$build" -j"$(nproc)" "${targets[@]/#/fuzz_}" 2>&1 | grep -E "error|Error|Linking" || true
for t in "${targets[@]}"; do [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz_$t did not build"; exit 1; }; done

# Leak checking stays on: libFuzzer reports an input after which memory stays allocated, except
# inside libhdf5 (tests/fuzz/lsan.supp says why). allocator_may_return_null: a corrupted file may
# make HDF5 ask malloc for petabytes, which fails with NULL and an HDF5 error in a normal build;
# operator new (mpicnn's own allocations) still reports such a size as a finding.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}
status=0
summary=()
for t in "${targets[@]}"; do
  binary="$build/tests/fuzz/fuzz_$t"
  work="$build/fuzz-corpus/$t"
  artifacts="$build/fuzz-artifacts/$t/"
  mkdir -p "$work" "$artifacts"
  replay=(tests/fuzz/corpus/$t)
  [ -d tests/fuzz/regressions/$t ] && replay+=(tests/fuzz/regressions/$t)
  if ! "$binary" -runs=0 -artifact_prefix="$artifacts" "${replay[@]}" > "$build/fuzz-$t.replay.log" 2>&1; then
    echo "fuzz_$t: a seed or regression input fails (see $build/fuzz-$t.replay.log)"
    tail -30 "$build/fuzz-$t.replay.log"
    status=1
    continue
  fi
  log="$build/fuzz-$t.log"
  stamp="$build/fuzz-$t.start"
  touch "$stamp"
  # Fork mode with ignore_*: a finding does not end the run, every one is kept as an artifact.
  "$binary" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts" "$work" "tests/fuzz/corpus/$t" > "$log" 2>&1 || true
  last=$(grep -E '^#[0-9]+: cov: ' "$log" | tail -1)
  execs=$(echo "$last" | grep -oE '^#[0-9]+' | tr -d '#')
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+')
  found=$(find "$artifacts" -type f -newer "$stamp" -printf '%f\n' | sort)
  result=ok
  if [ -n "$found" ]; then
    result="findings: $(echo "$found" | sed 's/-.*//' | sort | uniq -c | awk '{printf "%s %s ", $1, $2}')in $artifacts"
    for kind in $(echo "$found" | sed 's/-.*//' | sort -u); do
      case ",${FUZZ_TOLERATE:-}," in *",$kind,"*) ;; *) status=1 ;; esac
    done
  fi
  summary+=("fuzz_$t: ${execs:-?} executions in ${seconds} s, ${cov:-cov: ?}, corpus $(ls "$work" | wc -l) files: $result")
done
printf '%s\n' "${summary[@]}"
exit $status
