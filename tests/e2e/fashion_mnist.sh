#!/usr/bin/env bash
# End to end on real data: Debian's Fashion-MNIST converted to HDF5, the reference CNN of
# configs/fashion_mnist.ini trained for 3 epochs on 2 ranks under mpirun, evaluated with
# `mpicnn eval` on 2 ranks. Fails unless the test accuracy reaches MIN_ACCURACY (default 0.85: the
# PyTorch reference, bench/torch_reference.py with the same model, optimizer and batch, measured 85.8%).
# Usage: fashion_mnist.sh MPICNN_EXE WORK_DIR [EPOCHS] [MIN_ACCURACY]
set -euo pipefail
exe=$1 work=$2 epochs=${3:-3} min_accuracy=${4:-0.85}
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$work"
data=$work/fashion_mnist.h5
[ -f "$data" ] || "$exe" convert --format idx --input /usr/share/datasets/fashion-mnist --output "$data" --names fashion-mnist
run=$work/fashion_mnist_run
rm -rf "$run"
mpirun -np 2 "$exe" train --config "$repo/configs/fashion_mnist.ini" --data.path="$data" --train.epochs="$epochs" \
  --train.progress=lines --checkpoint.best_metric=loss --output "$run"
# best.h5 is the checkpoint of the evaluation with the lowest test loss, and says so.
/usr/bin/python3 - "$run" <<'PY'
import json, sys, h5py
run = sys.argv[1]
evals = [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if r["kind"] == "eval"]
lowest = min(evals, key=lambda r: r["test_loss"])
with h5py.File(f"{run}/best.h5", "r") as f:
    trainer, metrics = f["trainer"].attrs, f["metrics"].attrs
    name = trainer["best_metric_name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    print(f"best.h5: step {trainer['global_step']}, best_metric_name {name}, best_metric {trainer['best_metric']}; "
          f"lowest test loss {lowest['test_loss']} at step {lowest['global_step']:.0f}")
    assert name == "loss", name
    assert trainer["best_metric"] == metrics["test_loss"], (trainer["best_metric"], metrics["test_loss"])
    assert trainer["global_step"] == lowest["global_step"], (trainer["global_step"], lowest["global_step"])
PY
report=$(mpirun -np 2 "$exe" eval --checkpoint "$run" --data "$data" --json)
echo "$report"
accuracy=$(echo "$report" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
echo "[ figure ] Fashion-MNIST test accuracy after $epochs epochs on 2 ranks: $accuracy (required >= $min_accuracy)"
/usr/bin/python3 -c "import sys; sys.exit(0 if $accuracy >= $min_accuracy else 1)"
