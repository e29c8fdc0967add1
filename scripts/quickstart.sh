#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install and build, convert Fashion-MNIST (Debian's
# dataset-fashion-mnist) to HDF5, train the reference CNN on 2 ranks, evaluate, export, and draw
# the run's pictures (scripts/plot.py) into the run folder's plots/.
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
# The same evaluation for machines, and every test sample's probabilities: the pictures' inputs.
mpirun -np 2 build/mpicnn eval --checkpoint "$run" --data "$data" --json > "$run/eval.json"
mpirun -np 2 build/mpicnn predict --checkpoint "$run" --data "$data" --output "$run/predictions.h5"
build/mpicnn export --checkpoint "$run" --format onnx --output "$run/model.onnx"
build/mpicnn export --checkpoint "$run" --format h5 --output "$run/model_bundle.h5"
/usr/bin/python3 scripts/plot.py all "$run"
echo "quickstart: done; run folder $run (metrics.jsonl, checkpoints, eval.json, predictions.h5, model.onnx," \
  "model_bundle.h5, plots/*.png)"
