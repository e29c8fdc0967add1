#!/usr/bin/env bash
# Runs every test: installs and builds through setup.sh, then CTest (unit, MPI, dataset, SLURM,
# export and fault tests). Extra arguments go to ctest, e.g. scripts/test.sh -R core.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure --timeout 900 "$@"
