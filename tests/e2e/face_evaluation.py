#!/usr/bin/env python3
"""Evaluating face-recognition models (issue 18) on real data: scikit-learn's digits split by
class (train on 0-5, evaluate on the never-seen 6-9), as tests/e2e/open_set_digits.py.

loss_options: ArcFace trained on 2 ranks with loss.scale = 30, loss.margin = 0.3 stores them in
  its checkpoints (/model loss_scale, loss_margin) and `inspect` shows them; `mpicnn eval` of the
  checkpoint gives the loss of the training run's own evaluation of it (metrics.jsonl and the
  checkpoint's /metrics), and both equal ArcFace's published formula (insightface's, with its
  fallback beyond pi) computed here in numpy from the cosines `mpicnn predict` writes. The same
  checkpoint without those attributes (a file written before them) still loads and evaluates
  with the defaults s = 64, m = 0.5: the numpy formula with those.
verification: the same run's evaluations report verification figures on the embedding (pairs from
  the labels): `mpicnn eval` on 1, 2 and 3 ranks gives identical figures, equal to the training
  run's own evaluation of that checkpoint and to `mpicnn embed`'s figures on the same embedding;
  best.h5 was chosen by checkpoint.best_metric = verification_auc (the best evaluation's value);
  `inspect` shows the figures. A triplet model reports the same figures (and only those), on 1
  and 3 ranks alike.

  face_evaluation.py MPICNN_EXE WORK_DIR MPIEXEC setup|loss_options|verification
"""
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
from sklearn.datasets import load_digits

SPEC = "conv(8,3,pad=1) bn relu maxpool(2) flatten dense(16,bias=false) bn l2norm cosine(10)"
VERIFICATION = ["verification_accuracy", "verification_accuracy_std", "verification_threshold", "verification_auc",
                "verification_tar_at_far_1e-2", "verification_tar_at_far_1e-3"]


def run(command, expect_ok=True):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


class Work:
    def __init__(self, exe, work, mpiexec):
        self.exe, self.work, self.mpiexec = exe, work, mpiexec
        os.makedirs(work, exist_ok=True)
        self.data = self.path("digits_open_set.h5")
        if not os.path.exists(self.data):
            digits = load_digits()
            images = np.round(digits.images * 255 / 16).astype(np.uint8)
            labels = digits.target.astype(np.int64)
            seen = labels < 6
            npz = self.path("digits_open_set.npz")
            np.savez(npz, train_images=images[seen], train_labels=labels[seen][:, None],
                     test_images=images[~seen], test_labels=labels[~seen][:, None])
            run([exe, "convert", "--format", "npz", "--input", npz, "--output", self.data])

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def mpicnn(self, ranks, *args, expect_ok=True):
        command = [self.exe, *args]
        if ranks > 1:
            command = [self.mpiexec, "--oversubscribe", "--bind-to", "none", "-np", ranks, *command]
        return run(command, expect_ok)

    def train(self, run_dir, ranks, *extra):
        if os.path.exists(run_dir):
            shutil.rmtree(run_dir)  # a run folder with a checkpoint would resume
        self.mpicnn(ranks, "train", "--data.path", self.data, "--train.batch_size", 64, "--optimizer.lr", 0.05,
                    "--optimizer.momentum", 0.9, "--train.seed", 5, "--train.threads", 1, "--train.progress", "lines",
                    "--output", run_dir, *extra)

    def evaluate(self, ranks, checkpoint, *extra):
        out = self.mpicnn(ranks, "eval", "--checkpoint", checkpoint, "--data", self.data, "--json", *extra)
        return json.loads(out.strip().splitlines()[-1])


def case_setup(w):
    w.train(w.path("arcface"), 2, "--model.spec", SPEC, "--loss.kind", "arcface", "--loss.scale", 30,
            "--loss.margin", 0.3, "--train.epochs", 3, "--checkpoint.best_metric", "verification_auc")
    w.train(w.path("triplet"), 1, "--model.spec", "conv(8,3,pad=1) bn relu maxpool(2) flatten dense(16) l2norm",
            "--loss.kind", "triplet", "--data.identities_per_batch", 4, "--data.images_per_identity", 4,
            "--train.epochs", 1)


def records(run_dir, kind):
    return [r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["kind"] == kind]


def latest(run_dir):
    return os.path.join(run_dir, open(os.path.join(run_dir, "latest")).read().strip())


def arcface_loss(cosines, labels, s, m):
    """ArcFace's mean loss from the cosines, as insightface computes it (fallback beyond pi)."""
    c = np.clip(cosines.astype(np.float64), -1, 1)
    rows = np.arange(len(labels))
    target = c[rows, labels]
    sin = np.sqrt(np.maximum(0.0, 1 - target * target))
    phi = np.where(target > np.cos(np.pi - m), target * np.cos(m) - sin * np.sin(m), target - np.sin(np.pi - m) * m)
    z = s * c
    z[rows, labels] = s * phi
    top = z.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_total - z[rows, labels]))


def case_loss_options(w):
    run_dir = w.path("arcface")
    checkpoint = latest(run_dir)
    with h5py.File(checkpoint, "r") as f:
        attrs = dict(f["model"].attrs)
        stored = float(f["metrics"].attrs["test_loss"])
    check(attrs.get("loss_scale") == 30 and attrs.get("loss_margin") == 0.3,
          f"checkpoint /model loss_scale, loss_margin: {attrs.get('loss_scale')}, {attrs.get('loss_margin')}")
    shown = w.mpicnn(1, "inspect", checkpoint)
    check("loss: arcface (scale 30, margin 0.3)" in shown, f"inspect shows no loss options:\n{shown}")
    trained = records(run_dir, "eval")[-1]["test_loss"]
    # The trainer evaluated 2 ranks' parts in chunks of train.micro_batch (16): the same sums in the same order.
    ours = w.evaluate(2, checkpoint, "--batch", 16)["loss"]
    print(f"[ figure ] arcface s=30 m=0.3: eval loss {ours!r}, training's evaluation {trained!r}, checkpoint {stored!r}")
    check(ours == trained == stored, f"eval loss {ours!r}, the training run's evaluation {trained!r}, checkpoint {stored!r}")

    predictions = w.path("cosines.h5")
    w.mpicnn(1, "predict", "--checkpoint", checkpoint, "--data", w.data, "--output", predictions, "--batch", 16)
    with h5py.File(predictions, "r") as f:
        cosines, labels = f["cosines"][:], f["labels"][:]
    reference = arcface_loss(cosines, labels, 30, 0.3)
    check(abs(ours - reference) <= 1e-9 * abs(reference), f"eval loss {ours!r}, ArcFace's formula (s=30, m=0.3) {reference!r}")

    older = w.path("older_checkpoint.h5")
    with open(checkpoint, "rb") as source, open(older, "wb") as copy:
        copy.write(source.read())
    with h5py.File(older, "r+") as f:
        del f["model"].attrs["loss_scale"]
        del f["model"].attrs["loss_margin"]
    default = w.evaluate(1, older, "--batch", 16)["loss"]
    reference = arcface_loss(cosines, labels, 64, 0.5)
    print(f"[ figure ] the checkpoint without loss attributes: eval loss {default!r}, ArcFace s=64 m=0.5 {reference!r}")
    check(abs(default - reference) <= 1e-9 * abs(reference), f"older checkpoint: loss {default!r}, defaults' {reference!r}")
    check("loss: arcface (scale 64, margin 0.5)" in w.mpicnn(1, "inspect", older), "inspect of the older checkpoint")
    print("loss options: passed")


def verification_figures(report):
    return {k: v for k, v in report["metrics"].items() if k.startswith("verification_")}


def embed_figures(output):
    line = [l for l in output.splitlines() if l.startswith("verification on")]
    check(line, f"embed printed no verification line:\n{output}")
    return {k: float(v) for k, v in re.findall(r"(\S+) (-?[0-9.]+)", line[0].split(":", 1)[1])}


def case_verification(w):
    run_dir = w.path("arcface")
    checkpoint = latest(run_dir)
    by_ranks = {ranks: verification_figures(w.evaluate(ranks, checkpoint)) for ranks in (1, 2, 3)}
    print(f"[ figure ] arcface on the unseen digits: {by_ranks[1]}")
    check(sorted(by_ranks[1]) == sorted(VERIFICATION), f"eval's verification metrics: {sorted(by_ranks[1])}")
    check(by_ranks[1] == by_ranks[2] == by_ranks[3], f"verification differs with the rank count: {by_ranks}")
    trained = records(run_dir, "eval")
    last = {k[len("test_"):]: v for k, v in trained[-1].items() if k.startswith("test_verification_")}
    # The trainer's model takes chunks of train.micro_batch (16): eval --batch 16 meets the same.
    as_trained = verification_figures(w.evaluate(1, checkpoint, "--batch", 16))
    check(last == as_trained, f"the training run's evaluation {last}, eval --batch 16 {as_trained}")
    with h5py.File(checkpoint, "r") as f:
        stored = {k[len("test_"):]: float(v) for k, v in f["metrics"].attrs.items() if k.startswith("test_verification_")}
    check(stored == last, f"checkpoint /metrics {stored}, the training run's evaluation {last}")
    embedded = embed_figures(w.mpicnn(1, "embed", "--checkpoint", checkpoint, "--data", w.data, "--output",
                                      w.path("embeddings.h5")))
    for name, value in embedded.items():  # embed prints 4 decimals
        check(abs(value - by_ranks[1]["verification_" + name]) <= 5.1e-5, f"embed's {name} {value}, eval's {by_ranks[1]}")
    best = max(r["test_verification_auc"] for r in trained)
    with h5py.File(os.path.join(run_dir, "best.h5"), "r") as f:
        name, value = f["trainer"].attrs["best_metric_name"], float(f["trainer"].attrs["best_metric"])
    check(name == "verification_auc" and value == best, f"best.h5 by {name} {value}, best evaluation {best}")
    shown = w.mpicnn(1, "inspect", checkpoint)
    check("test_verification_tar_at_far_1e-3" in shown and "best.h5: test verification_auc" in shown, shown)

    triplet_dir = w.path("triplet")
    triplet = {ranks: w.evaluate(ranks, latest(triplet_dir))["metrics"] for ranks in (1, 3)}
    print(f"[ figure ] triplet on the unseen digits: {triplet[1]}")
    check(sorted(triplet[1]) == sorted(VERIFICATION) and triplet[1] == triplet[3], f"triplet's metrics: {triplet}")
    check("loss: triplet (margin 0.2, mining batch_hard)" in w.mpicnn(1, "inspect", latest(triplet_dir)), "triplet inspect")
    print("verification: passed")


def main():
    exe, work, mpiexec, case = sys.argv[1:5]
    cases = {"setup": case_setup, "loss_options": case_loss_options, "verification": case_verification}
    cases[case](Work(exe, work, mpiexec))


if __name__ == "__main__":
    main()
