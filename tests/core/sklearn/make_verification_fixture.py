#!/usr/bin/python3
"""Writes the verification references tests/core/test_verification.cpp reads, at test time, with
scikit-learn (python3-sklearn) on fixed arrays:
  embeddings: 40 identities x 6 images (16 dimensions), the pairs (all 600 positives, 2400
    seeded negatives, shuffled), their cosine similarities in float64;
  per score array (the embeddings' pair scores, and a second array on a 0.05 grid with ties):
    roc_curve(drop_intermediate=False), roc_auc_score, TAR at FAR 1e-2 / 1e-3 (largest tpr with
    fpr <= FAR), and the LFW protocol's 10-fold accuracy: sklearn's KFold(10, shuffle=False),
    the threshold of the best accuracy_score on the nine other folds among the distinct scores and
    +inf (the largest of equals), accuracy_score on the held-out fold; mean and np.std;
  identification: gallery = each identity's first image, probes = the others, per-identity score =
    the best cosine to that identity's gallery images, top_k_accuracy_score for k = 1 and 5.

    /usr/bin/python3 make_verification_fixture.py OUTPUT.txt

Format: one array per line, `name count v0 v1 ...` (%.17g)."""
import sys

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve, top_k_accuracy_score
from sklearn.model_selection import KFold

lines = []


def put(name, values):
    values = np.asarray(values, dtype=np.float64).ravel()
    lines.append(f"{name} {values.size} " + " ".join("%.17g" % v for v in values))


def kfold_accuracy(scores, same):
    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(scores):
        candidates = np.concatenate([[np.inf], np.unique(scores[train])[::-1]])
        train_accuracy = ((scores[train][None, :] >= candidates[:, None]) == same[train][None, :]).mean(axis=1)
        threshold = candidates[int(np.argmax(train_accuracy))]
        accuracies.append(accuracy_score(same[test], scores[test] >= threshold))
    return np.mean(accuracies), np.std(accuracies)


def score_metrics(prefix, scores, same):
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    put(prefix + "_fpr", fpr)
    put(prefix + "_tpr", tpr)
    put(prefix + "_auc", [roc_auc_score(same, scores)])
    put(prefix + "_tar", [tpr[fpr <= far].max() for far in (1e-2, 1e-3)])
    put(prefix + "_kfold", kfold_accuracy(scores, same))


def main():
    rng = np.random.default_rng(18)
    identities, per_identity, dim = 40, 6, 16
    labels = np.repeat(np.arange(identities), per_identity)
    centres = rng.normal(size=(identities, dim))
    embeddings = (centres[labels] + 0.9 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    put("embeddings", embeddings)
    put("labels", labels)
    n = len(labels)
    pairs = [(i, j, 1) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    negatives = set()
    while len(negatives) < 2400:
        i, j = sorted(rng.integers(0, n, size=2))
        if labels[i] != labels[j]:
            negatives.add((i, j))
    pairs += [(i, j, 0) for i, j in sorted(negatives)]
    pairs = np.array(pairs)[rng.permutation(len(pairs))]
    put("pairs", pairs)
    e = embeddings.astype(np.float64)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    scores = np.sum(u[pairs[:, 0]] * u[pairs[:, 1]], axis=1)
    same = pairs[:, 2].astype(bool)
    put("scores", scores)
    score_metrics("pairs", scores, same)

    tied = np.round(rng.normal(size=1500) * 4) / 20  # a 0.05 grid: many ties
    tied_same = rng.random(1500) < 1 / (1 + np.exp(-8 * tied))
    put("tied_scores", tied)
    put("tied_same", tied_same)
    score_metrics("tied", tied, tied_same)

    gallery = np.array([np.flatnonzero(labels == k)[0] for k in range(identities)])
    probes = np.setdiff1d(np.arange(n), gallery)
    similarity = u[probes] @ u[gallery].T  # one gallery image per identity: per-identity scores
    put("gallery", gallery)
    put("identification", [top_k_accuracy_score(labels[probes], similarity, k=k, labels=np.arange(identities))
                           for k in (1, 5)])
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
