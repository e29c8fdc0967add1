#!/usr/bin/env bash
# Builds everything with AddressSanitizer + UndefinedBehaviorSanitizer (-DMPICNN_SANITIZE=ON) into
# build-asan and runs the CTest suites there: unit tests, MPI tests under mpirun, the reliability
# (bad input, fault) tests. Any sanitizer report fails its test. Leak reports from inside Open MPI,
# HDF5 and TBB are suppressed (tests/sanitize/lsan.supp says why for each); nothing of mpicnn's own.
#
#   scripts/sanitize.sh [extra ctest arguments, e.g. -R reliability]
#
# Not run here: the SLURM cluster tests and the end-to-end Fashion-MNIST training (minutes of
# compute that ASan makes 2-3x slower, and no parser or memory handling of their own).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${ASAN_BUILD_DIR:-build-asan}
begin=$(date +%s)

mkdir -p "$build"
source scripts/compiler_cache.sh
cmake -S . -B "$build" "${compiler_cache_args[@]}" -DMPICNN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
# The executable and every test binary, not the benchmarks (nothing runs them here).
targets=(mpicnn $(grep -ho 'add_executable([A-Za-z0-9_]*' tests/*/CMakeLists.txt | cut -d'(' -f2 | grep -v '^fuzz_'))
make -C "$build" -j"$(nproc)" "${targets[@]}" 2>&1 | grep -E "error|warning: " || true
make -C "$build" -j"$(nproc)" "${targets[@]}" > /dev/null  # fails the script if the build failed
built=$(date +%s)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# detect_leaks: on (LSan at exit); fast_unwind_on_malloc=0: full stacks through the uninstrumented
# MPI libraries, which the suppressions match on. halt_on_error: the first report ends the process with an error.
# allocator_may_return_null=0: a huge allocation is a report, not a silent null.
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:halt_on_error=1:abort_on_error=0:allocator_may_return_null=0:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitize/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Tells the reliability drivers not to cap address space (ASan reserves terabytes of it).
export MPICNN_SANITIZED=1
# Open MPI unloads its components at finalize: their frames in a leak report then read
# "<unknown module>" and no suppression can name them. Keep them loaded.
export OMPI_MCA_mca_base_component_disable_dlclose=1

status=0
ctest --test-dir "$build" --output-on-failure -j2 --timeout 600 -E '^(slurm|e2e\.|fuzz\.)' "$@" || status=$?
end=$(date +%s)
echo "sanitize.sh: build $((built - begin)) s, tests $((end - built)) s, total $((end - begin)) s"
exit $status
