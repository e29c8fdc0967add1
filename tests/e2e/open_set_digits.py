#!/usr/bin/env python3
"""Open-set recognition end to end on real data: scikit-learn's digits (1797 real 8x8 scans of
handwritten digits, shipped with python3-sklearn) split by class, digits 0-5 for training and the
never-seen digits 6-9 for verification, as issue 18 asks. The npz (MedMNIST layout) is converted
with `mpicnn convert`, an ArcFace model with a cosine classifier is trained on 2 ranks, and
`mpicnn embed` cuts it before the cosine layer on the test split, on 1 and 2 ranks. Passes when
both embedding files are bitwise equal, the figures `embed` prints for an LFW-layout pairs file
written here equal scikit-learn's (roc_auc_score, and TAR at FAR 1e-2 from roc_curve) on the
cosine scores of the written embeddings, and the AUC on the unseen digits shows that the
embedding learned something general (>= 0.8).

  open_set_digits.py MPICNN_EXE WORK_DIR MPIEXEC
"""
import os
import re
import subprocess
import sys

import h5py
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score, roc_curve

SPEC = ("conv(16,3,pad=1) bn relu conv(32,3,pad=1) bn relu maxpool(2) flatten dense(32,bias=false) bn "
        "l2norm cosine(10)")


def run(command):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def figures(output):
    line = [l for l in output.splitlines() if l.startswith("verification on")]
    if not line:
        sys.exit(f"FAILED: no verification line in\n{output}")
    return {k: float(v) for k, v in re.findall(r"(\S+) (-?[0-9.]+)", line[0].split(":", 1)[1])}, line[0]


def write_pairs(path, labels, rng, sets=10, per_set=30):
    """LFW layout; identities are named by label (the converted file has no class names), images by
    their 1-based position among the identity's samples in the split."""
    members = {k: np.flatnonzero(labels == k) for k in np.unique(labels)}
    identities = sorted(members)
    pairs = []
    with open(path, "w") as f:
        f.write(f"{sets}\t{per_set}\n")
        for _ in range(sets):
            for _ in range(per_set):
                k = rng.choice(identities)
                a, b = rng.choice(len(members[k]), size=2, replace=False)
                f.write(f"{k}\t{a + 1}\t{b + 1}\n")
                pairs.append((members[k][a], members[k][b], True))
            for _ in range(per_set):
                k, j = rng.choice(identities, size=2, replace=False)
                a, b = rng.integers(len(members[k])), rng.integers(len(members[j]))
                f.write(f"{k}\t{a + 1}\t{j}\t{b + 1}\n")
                pairs.append((members[k][a], members[j][b], False))
    return pairs


def main():
    exe, work, mpiexec = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    seen = labels < 6
    npz = os.path.join(work, "digits_open_set.npz")
    np.savez(npz, train_images=images[seen], train_labels=labels[seen][:, None],
             test_images=images[~seen], test_labels=labels[~seen][:, None])
    data = os.path.join(work, "digits_open_set.h5")
    run([exe, "convert", "--format", "npz", "--input", npz, "--output", data])
    out = os.path.join(work, "run")
    run([mpiexec, "--oversubscribe", "--bind-to", "none", "-np", 2, exe, "train", "--data.path", data,
         "--model.spec", SPEC, "--loss.kind", "arcface", "--loss.scale", 30, "--loss.margin", 0.3,
         "--data.eval_split", "none", "--train.epochs", 12, "--train.batch_size", 64, "--optimizer.lr", 0.05,
         "--optimizer.momentum", 0.9, "--train.seed", 5, "--train.threads", 1, "--train.progress", "lines",
         "--output", out])
    test_labels = labels[~seen]
    pairs = write_pairs(os.path.join(work, "pairs.txt"), test_labels, np.random.default_rng(18))
    outputs = {}
    for ranks in (1, 2):
        emb = os.path.join(work, f"embeddings_{ranks}.h5")
        outputs[ranks] = run([mpiexec, "--oversubscribe", "--bind-to", "none", "-np", ranks, exe, "embed",
                              "--checkpoint", out, "--data", data, "--output", emb,
                              "--pairs", os.path.join(work, "pairs.txt")])
    with h5py.File(os.path.join(work, "embeddings_1.h5")) as a, h5py.File(os.path.join(work, "embeddings_2.h5")) as b:
        if not np.array_equal(a["embeddings"][:], b["embeddings"][:]):
            sys.exit("FAILED: embeddings differ between 1 and 2 ranks")
        e = a["embeddings"][:].astype(np.float64)
        if a["embeddings"].shape != (len(test_labels), 32) or not np.array_equal(a["labels"][:], test_labels):
            sys.exit(f"FAILED: embeddings {a['embeddings'].shape} / labels differ from the split")
    ours, line = figures(outputs[1])
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    first, second, same = (np.array(x) for x in zip(*pairs))
    scores = np.sum(u[first] * u[second], axis=1)
    auc = roc_auc_score(same, scores)
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    tar = tpr[fpr <= 1e-2].max()
    print(f"[ figure ] unseen digits 6-9, {len(pairs)} pairs from pairs.txt: {line.split(':', 1)[1].strip()}")
    print(f"[ figure ] scikit-learn on the written embeddings: roc_auc_score {auc:.6f}, TAR@FAR 1e-2 {tar:.6f}")
    generated, generated_line = figures(run([exe, "embed", "--checkpoint", out, "--data", data, "--output",
                                             os.path.join(work, "embeddings_generated.h5")]))
    print(f"[ figure ] unseen digits 6-9, pairs from labels: {generated_line.split(':', 1)[1].strip()}")
    if abs(ours["auc"] - auc) > 6e-5 or abs(ours["tar_at_far_1e-2"] - tar) > 6e-5:
        sys.exit(f"FAILED: embed printed AUC {ours['auc']} TAR {ours['tar_at_far_1e-2']}, sklearn {auc} {tar}")
    if auc < 0.8 or generated["auc"] < 0.8:
        sys.exit(f"FAILED: AUC on unseen digits {auc:.4f} / {generated['auc']:.4f}, expected >= 0.8")
    print("open-set digits: passed")


if __name__ == "__main__":
    main()
