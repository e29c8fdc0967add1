#!/usr/bin/env python3
"""Multi-label end to end on a generated ChestMNIST-layout file (28x28 grey images, labels (N,14)
of 0/1): converted with `mpicnn convert --format npz`, trained with loss.kind = bce on 2 ranks,
evaluated with `mpicnn eval --json` on 1, 2 and 3 ranks. Passes when the three reports give the
same per-label and mean AUC and accuracy (bitwise), the mean AUC shows learning (>= 0.9), and
scikit-learn's roc_auc_score on `mpicnn predict`'s probabilities and the dataset's targets gives
the same AUCs to 1e-9. MedMNIST's protocol: the val split chooses best.h5 (by val AUC) and
data.test_split reports the test split once for it, equal to `mpicnn eval` of best.h5.

  multilabel.py MPICNN_EXE WORK_DIR MPIEXEC
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
from sklearn.metrics import precision_score, recall_score, roc_auc_score

LABELS = 14  # ChestMNIST's
SPEC = "conv(8,3,pad=1) bn relu maxpool(2) conv(16,3,pad=1) bn relu maxpool(2) flatten dropout(0.2) dense(14)"


def chest_like(rng, n):
    """Label k is present with probability 0.3; when present, block k of a 4x4 grid of 7x7 blocks is a little brighter (AUC well below 1)."""
    targets = (rng.random((n, LABELS)) < 0.3).astype(np.uint8)
    images = rng.integers(0, 160, size=(n, 28, 28)).astype(np.int32)
    for i in range(n):
        for k in np.flatnonzero(targets[i]):
            r, c = 7 * (k // 4), 7 * (k % 4)
            images[i, r:r + 7, c:c + 7] += 30
    return np.clip(images, 0, 255).astype(np.uint8), targets


def run(command, **kwargs):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def check_protocol(exe, out, data):
    """best.h5 holds the evaluation with the highest val_auc, and the run's final 'test' record
    holds the test figures `mpicnn eval` gives for best.h5."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if r["kind"] == "eval"]
    tests = [r for r in records if r["kind"] == "test"]
    if len(tests) != 1 or any("test_auc" in r for r in evals):
        sys.exit(f"FAILED: expected val_* evaluations and one final test record, got {len(evals)} and {len(tests)}")
    best = max(evals, key=lambda r: r["val_auc"])
    if tests[0]["global_step"] != best["global_step"]:
        sys.exit(f"FAILED: test reported step {tests[0]['global_step']}, best val_auc was at {best['global_step']}")
    chosen = json.loads(run([exe, "eval", "--checkpoint", os.path.join(out, "best.h5"), "--data", data, "--json"]))
    for name, value in chosen["metrics"].items():
        if tests[0][f"test_{name}"] != value:
            sys.exit(f"FAILED: final test_{name} {tests[0][f'test_{name}']} != eval of best.h5 {value}")
    print(f"[ figure ] best.h5 from global step {best['global_step']} (val AUC {best['val_auc']:.4f} of "
          + ", ".join(f"{r['val_auc']:.4f}" for r in evals) + f"); its test AUC {tests[0]['test_auc']:.4f}")


def main():
    exe, work, mpiexec = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(3)
    splits = {name: chest_like(rng, n) for name, n in (("train", 1024), ("val", 160), ("test", 211))}
    npz = os.path.join(work, "chestmnist_like.npz")
    np.savez_compressed(npz, **{f"{s}_{kind}": arr for s, (x, y) in splits.items() for kind, arr in
                                (("images", x), ("labels", y))})
    data = os.path.join(work, "chestmnist_like.h5")
    run([exe, "convert", "--format", "npz", "--task", "multi-label", "--input", npz, "--output", data])
    out = os.path.join(work, "run")
    subprocess.run(["rm", "-rf", out])
    run([mpiexec, "-np", 2, exe, "train", "--data.path", data, "--model.spec", SPEC, "--loss.kind", "bce",
         "--data.eval_split", "val", "--data.test_split", "test", "--checkpoint.best_metric", "auc", "--train.batch_size", 64, "--train.epochs", 4, "--optimizer.name", "adam",
         "--optimizer.lr", 0.003, "--train.progress", "lines", "--output", out])
    reports = {}
    for ranks in (1, 2, 3):
        launcher = [mpiexec, "--oversubscribe", "-np", ranks]
        reports[ranks] = json.loads(run(launcher + [exe, "eval", "--checkpoint", out, "--data", data, "--json"]))
    metrics = reports[1]["metrics"]
    check_protocol(exe, out, data)
    for ranks in (2, 3):
        if reports[ranks]["metrics"] != metrics:
            sys.exit(f"FAILED: eval on {ranks} ranks differs from 1 rank:\n{reports[ranks]['metrics']}\n{metrics}")
    print(f"[ figure ] multi-label (14 labels) test split, identical on 1, 2, 3 ranks: mean AUC {metrics['auc']:.4f}, "
          f"accuracy {metrics['accuracy']:.4f}, per-label AUC "
          + " ".join(f"{metrics[f'auc_{k}']:.3f}" for k in range(LABELS)))
    predictions = os.path.join(work, "predictions.h5")
    run([exe, "predict", "--checkpoint", out, "--data", data, "--output", predictions])
    with h5py.File(predictions, "r") as f, h5py.File(data, "r") as d:
        scores = f["probabilities"][:].astype(np.float64)
        targets = d["test/targets"][:]
    worst = 0.0
    for k in range(LABELS):
        worst = max(worst, abs(roc_auc_score(targets[:, k], scores[:, k]) - metrics[f"auc_{k}"]))
    print(f"[ figure ] largest |sklearn roc_auc_score - mpicnn| over the 14 labels: {worst:.3g}")
    rates = {"sensitivity": lambda t, p: recall_score(t, p), "specificity": lambda t, p: recall_score(t, p, pos_label=0),
             "precision": lambda t, p: precision_score(t, p, zero_division=0)}
    for name, sklearn in rates.items():
        for k in range(LABELS):
            worst = max(worst, abs(sklearn(targets[:, k] > 0.5, scores[:, k] > 0.5) - metrics[f"{name}_{k}"]))
    print(f"[ figure ] with sensitivity, specificity and precision at 0.5 per label: largest difference {worst:.3g}; "
          f"means {metrics['sensitivity']:.4f}, {metrics['specificity']:.4f}, {metrics['precision']:.4f}")
    if worst > 1e-9:
        sys.exit("FAILED: mpicnn's AUC differs from scikit-learn's")
    if metrics["auc"] < 0.9:
        sys.exit(f"FAILED: mean AUC {metrics['auc']:.4f} < 0.9: the model did not learn the labels")


if __name__ == "__main__":
    main()
