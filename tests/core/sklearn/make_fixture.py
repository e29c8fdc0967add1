#!/usr/bin/env python3
"""Writes metrics_reference.txt: fixed score arrays (with ties) and what scikit-learn computes from
them, for tests/core/test_metrics.cpp. Run with Debian's python3-sklearn:

  /usr/bin/python3 tests/core/sklearn/make_fixture.py

Format: one array per line, `name count v0 v1 ...` (%.17g; nan for a metric sklearn cannot
compute because a label has one class only)."""
import os

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

rng = np.random.default_rng(11)
lines = []


def put(name, values):
    values = np.asarray(values, dtype=np.float64).ravel()
    lines.append(f"{name} {values.size} " + " ".join("%.17g" % v for v in values))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# Multi-label: 200 samples, 5 labels; logits on a coarse grid (ties), label 4 never positive.
logits = (np.round(rng.normal(size=(200, 5)) * 4) / 4).astype(np.float32)
targets = (rng.random((200, 5)) < sigmoid(logits.astype(np.float64) * 1.5)).astype(np.float32)
targets[:, 4] = 0
scores = sigmoid(logits.astype(np.float64)).astype(np.float32)
put("multilabel_logits", logits)
put("multilabel_targets", targets)
aucs = [roc_auc_score(targets[:, k], scores[:, k]) if 0 < targets[:, k].sum() < len(targets) else np.nan
        for k in range(5)]
put("multilabel_auc", aucs)
# MedMNIST's ACC for multi-label: the mean over labels of accuracy at the 0.5 threshold.
put("multilabel_accuracy", [np.mean([accuracy_score(targets[:, k], scores[:, k] > 0.5) for k in range(5)])])


# At the same threshold, per label: sensitivity (recall), specificity (recall of the negatives) and
# precision; nan where the denominator is empty (scikit-learn 1.2 would give 0 with a warning).
def rate(score, truth, positive_class, over_predicted):
    predicted = score > 0.5
    group = predicted == positive_class if over_predicted else truth == positive_class
    if not group.any():
        return np.nan
    if over_predicted:
        return precision_score(truth, predicted, zero_division=0)
    return recall_score(truth, predicted, pos_label=positive_class)


put("multilabel_sensitivity", [rate(scores[:, k], targets[:, k] > 0.5, True, False) for k in range(5)])
put("multilabel_specificity", [rate(scores[:, k], targets[:, k] > 0.5, False, False) for k in range(5)])
put("multilabel_precision", [rate(scores[:, k], targets[:, k] > 0.5, True, True) for k in range(5)])

# Multi-class: 150 samples, 4 classes, probabilities with ties.
z = np.round(rng.normal(size=(150, 4)) * 2) / 2
probabilities = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
labels = rng.integers(0, 4, size=150)
put("multiclass_probabilities", probabilities)
put("multiclass_labels", labels)
# Scored as stored (float32 rows sum to 1 within sklearn's check): renormalising would break ties.
put("multiclass_auc", [roc_auc_score(labels, probabilities.astype(np.float64), multi_class="ovr", average="macro")])

# Binary: the AUC of class 1's score.
z = np.round(rng.normal(size=(100, 2)) * 3) / 3
probabilities = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
labels = rng.integers(0, 2, size=100)
put("binary_probabilities", probabilities)
put("binary_labels", labels)
put("binary_auc", [roc_auc_score(labels, probabilities[:, 1])])

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics_reference.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
