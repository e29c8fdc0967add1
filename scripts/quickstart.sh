#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install and build, convert Fashion-MNIST (Debian's
# dataset-fashion-mnist) to HDF5, train the reference CNN on 2 ranks, evaluate, export.
# Re-running it resumes or reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

data=data/fashion_mnist.h5
run=${RUN_DIR:-runs/fashion_mnist}
mkdir -p data
if [ ! -f "$data" ]; then
  build/mpicnn convert --format idx --input /usr/share/datasets/fashion-mnist --output "$data" --names fashion-mnist
fi
build/mpicnn inspect "$data"

mpirun -np 2 build/mpicnn train --config configs/fashion_mnist.ini --output "$run" "$@"
mpirun -np 2 build/mpicnn eval --checkpoint "$run" --data "$data"
build/mpicnn export --checkpoint "$run" --format onnx --output "$run/model.onnx"
build/mpicnn export --checkpoint "$run" --format h5 --output "$run/model_bundle.h5"
echo "quickstart: done; run folder $run (metrics.jsonl, checkpoints, model.onnx, model_bundle.h5)"
