#!/usr/bin/env python3
"""3D end to end (issue 16) on a generated OrganMNIST3D-layout file (28x28x28 grey volumes, 11
classes, MedMNIST's .npz layout (N,D,H,W) from scripts/make_medmnist.py): converted with
`mpicnn convert --format npz --task multi-class`, a small 3D ResNet (conv3d, bn, a residual block
with a strided 1x1x1 shortcut, globalavgpool, dense(11)) trained the same number of steps with
the same global batch on 2 ranks and on 1 rank. Passes when
- the two final checkpoints hold bitwise identical weights and BatchNorm running statistics
  (every dataset of /model and /state, read with h5py);
- `mpicnn eval --json` gives identical figures (accuracy, AUC, loss) on 1, 2 and 3 ranks;
- the ONNX export run in onnxruntime (npm's onnxruntime-node, tests/io/run_onnx.js) gives
  probabilities within 1e-4 of `mpicnn predict`'s;
- `mpicnn inspect` of its HDF5 bundle shows the input as float32 NCDHW.

  volumes3d.py MPICNN_EXE WORK_DIR MPIEXEC NODE_MODULES
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "..", "scripts")
RUN_ONNX = os.path.join(HERE, "..", "io", "run_onnx.js")
CLASSES = 11  # OrganMNIST3D's
SPEC = ("conv3d(8,3,pad=1,bias=false) bn relu "
        "residual{conv3d(16,3,stride=2,pad=1,bias=false) bn relu conv3d(16,3,pad=1,bias=false) bn"
        " | conv3d(16,1,stride=2,bias=false) bn} relu globalavgpool flatten dense(11)")
STEPS = 24
TOLERANCE = 1e-4  # the export tests' (tests/io/export_tests.py)


def run(command, **kwargs):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def train(exe, launcher, data, out):
    shutil.rmtree(out, ignore_errors=True)
    run(launcher + [exe, "train", "--data.path", data, "--model.spec", SPEC, "--data.eval_split", "val",
                    "--train.batch_size", 16, "--train.micro_batch", 8, f"--train.max_steps={STEPS}",
                    "--optimizer.name", "adam", "--optimizer.lr", 0.003, "--train.progress", "lines",
                    "--output", out])


def final_checkpoint(out):
    """The step checkpoint with the highest step (not best.h5)."""
    steps = []
    for name in os.listdir(out):
        if name.endswith(".h5") and name != "best.h5":
            with h5py.File(os.path.join(out, name), "r") as f:
                steps.append((int(f["trainer"].attrs["global_step"]), name))
    if not steps:
        sys.exit(f"FAILED: no checkpoint in {out}")
    step, name = max(steps)
    if step != STEPS:
        sys.exit(f"FAILED: {out}/{name} is at global step {step}, expected {STEPS}")
    return os.path.join(out, name)


def tensors(path, group):
    found = {}

    def take(name, obj):  # returns None: visititems stops at the first other value
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    with h5py.File(path, "r") as f:
        f[group].visititems(take)
    return found


def check_bitwise(one, two):
    for group in ("model", "state"):
        a, b = tensors(one, group), tensors(two, group)
        if sorted(a) != sorted(b):
            sys.exit(f"FAILED: /{group} names differ: {sorted(a)} vs {sorted(b)}")
        differing = [n for n in a if a[n].dtype != b[n].dtype or a[n].tobytes() != b[n].tobytes()]
        values = sum(np.size(v) for v in a.values())
        largest = max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) for n in a)
        print(f"[ figure ] /{group}: {len(a)} tensors, {values} values; bitwise different on 1 and 2 ranks: "
              f"{len(differing)} tensors; largest difference {largest:.3g}")
        if differing:
            sys.exit(f"FAILED: /{group} differs between 1 and 2 ranks: {differing}")
    if not any(name.endswith("running_var") for name in tensors(one, "state")):
        sys.exit("FAILED: the checkpoint holds no BatchNorm running statistics")


def check_eval(exe, mpiexec, checkpoint, data):
    """The whole `mpicnn eval --json` report (loss, accuracy, AUC, confusion matrix, per-class rates)."""
    reports = {}
    for ranks in (1, 2, 3):
        launcher = [mpiexec, "--oversubscribe", "-np", ranks]
        reports[ranks] = json.loads(run(launcher + [exe, "eval", "--checkpoint", checkpoint, "--data", data,
                                                    "--split", "test", "--json"]))
    for ranks in (2, 3):
        if reports[ranks] != reports[1]:
            sys.exit(f"FAILED: eval on {ranks} ranks differs from 1 rank:\n{reports[ranks]}\n{reports[1]}")
    r = reports[1]
    print(f"[ figure ] test split ({r['samples']} volumes), identical on 1, 2, 3 ranks: accuracy "
          f"{r['metrics']['accuracy']:.4f}, AUC {r['metrics']['auc']:.4f}, loss {r['loss']:.6f}, "
          f"confusion matrix and {len(r['per_class'])} per-class rows")


def check_onnx(exe, checkpoint, data, work, node_modules):
    model = os.path.join(work, "model.onnx")
    run([exe, "export", "--checkpoint", checkpoint, "--format", "onnx", "--output", model])
    predictions = os.path.join(work, "predict.h5")
    run([exe, "predict", "--checkpoint", checkpoint, "--data", data, "--split", "test", "--output", predictions])
    with h5py.File(predictions, "r") as f:
        predicted = f["probabilities"][:]
    with h5py.File(data, "r") as f:
        images = f["test/images"][:]
    if images.dtype != np.uint8 or images.ndim != 5:
        sys.exit(f"FAILED: test/images is {images.dtype} {images.shape}, expected uint8 (N,1,D,H,W)")
    x = images.astype(np.float32) / np.float32(255)  # what the exported model takes (tests/io)
    inputs = os.path.join(work, "inputs.f32")
    x.tofile(inputs)
    prefix = os.path.join(work, "ort_")
    run(["node", RUN_ONNX, model, inputs, ",".join(map(str, x.shape)), 5, prefix],
        env=dict(os.environ, NODE_PATH=node_modules))
    probabilities = np.fromfile(prefix + "probabilities.f32", dtype=np.float32).reshape(predicted.shape)
    diff = float(np.max(np.abs(probabilities.astype(np.float64) - predicted.astype(np.float64))))
    agree = float(np.mean(probabilities.argmax(1) == predicted.argmax(1)))
    print(f"[ figure ] onnxruntime vs mpicnn predict on {x.shape[0]} volumes {x.shape[1:]}: max |difference| of "
          f"the probabilities {diff:.3g} (tolerance {TOLERANCE:g}); argmax agrees on {agree:.4f}")
    if diff > TOLERANCE:
        sys.exit(f"FAILED: onnxruntime differs from mpicnn predict by {diff:.3g}")


def check_bundle(exe, checkpoint, work):
    """`mpicnn inspect` of a volume model's bundle names the input's layout NCDHW."""
    bundle = os.path.join(work, "model_bundle.h5")
    run([exe, "export", "--checkpoint", checkpoint, "--format", "h5", "--output", bundle])
    shown = run([exe, "inspect", bundle])
    line = next((l for l in shown.splitlines() if l.strip().startswith("input ")), "")
    print(f"[ figure ] inspect of the bundle: {line.strip()}")
    if "(1,28,28,28) float32 NCDHW" not in line:
        sys.exit(f"FAILED: inspect does not show the input as (1,28,28,28) float32 NCDHW:\n{shown}")


def main():
    exe, work, mpiexec, node_modules = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    npz, data = os.path.join(work, "organmnist3d_like.npz"), os.path.join(work, "organmnist3d_like.h5")
    run(["/usr/bin/python3", os.path.join(SCRIPTS, "make_medmnist.py"), "organmnist3d", "--size", 28,
         "--counts", "96,24,40", "--seed", 5, "--output", npz])
    run([exe, "convert", "--format", "npz", "--task", "multi-class", "--input", npz, "--output", data])
    with h5py.File(data, "r") as f:
        shape = f["train/images"].shape
    if shape != (96, 1, 28, 28, 28):
        sys.exit(f"FAILED: converted train/images {shape}, expected (96, 1, 28, 28, 28)")
    outs = {ranks: os.path.join(work, f"run{ranks}") for ranks in (1, 2)}
    train(exe, [mpiexec, "-np", 2], data, outs[2])
    train(exe, [], data, outs[1])
    one, two = final_checkpoint(outs[1]), final_checkpoint(outs[2])
    check_bitwise(one, two)
    check_eval(exe, mpiexec, two, data)
    check_onnx(exe, two, data, work, node_modules)
    check_bundle(exe, two, work)


if __name__ == "__main__":
    main()
