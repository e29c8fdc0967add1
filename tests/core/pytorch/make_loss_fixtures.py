#!/usr/bin/python3
"""Writes the focal-loss references tests/core/test_pytorch_losses.cpp reads, at test time, with
PyTorch's autograd in float64:
  sigmoid: torchvision.ops.sigmoid_focal_loss itself (reduction="mean"), for several gamma and alpha
           (alpha -1: none), 0/1 and soft targets, logits up to +-30 (saturated sigmoids);
  softmax: the published multi-class form, -w_y (1 - p_y)^gamma log p_y summed and divided by
           sum(w_y), written here with log_softmax (torch has no built-in one);
  smoothed: torch.nn.functional.cross_entropy itself with label_smoothing (the <gamma> field holds
           the smoothing), with and without class weights.

    /usr/bin/python3 make_loss_fixtures.py OUTPUT.txt

Text layout, one case per block:
  case <kind> <gamma or smoothing> <alpha> <N> <K>
  logits  N*K values (the float32 inputs, printed exactly)
  truth   N labels (softmax) or N*K targets (sigmoid)
  weights K class weights (softmax; empty line for none)
  loss    the mean, float64
  grad    N*K values of d(mean)/d(logits), float64
"""
import sys

import numpy as np
import torch
from torchvision.ops import sigmoid_focal_loss


def line(name, values):
    return name + " " + " ".join(repr(float(v)) for v in np.ravel(values)) + "\n"


def sigmoid_case(rng, gamma, alpha, soft, n=7, k=5):
    logits = rng.normal(0, 4, size=(n, k)).astype(np.float32)
    logits[0, :3] = [30, -30, 0]  # saturated both ways, and the midpoint
    targets = rng.random((n, k)) if soft else (rng.random((n, k)) < 0.3).astype(np.float64)
    targets = targets.astype(np.float32)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.tensor(targets, dtype=torch.float64), alpha=alpha, gamma=gamma, reduction="mean")
    loss.backward()
    return (f"case sigmoid {gamma!r} {alpha!r} {n} {k}\n" + line("logits", logits) + line("truth", targets) +
            "weights\n" + line("loss", [loss.item()]) + line("grad", x.grad.numpy()))


def softmax_case(rng, gamma, weighted, n=9, k=4):
    logits = rng.normal(0, 3, size=(n, k)).astype(np.float32)
    logits[0] = [25, -5, 0, 1]  # p_y close to 1 for label 0: (1 - p_y) from the other classes
    labels = rng.integers(0, k, size=n)
    labels[0] = 0
    weights = rng.uniform(0.2, 3, size=k).astype(np.float32) if weighted else None
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(z, dim=1)[torch.arange(n), torch.tensor(labels)]
    w = torch.tensor(weights, dtype=torch.float64)[torch.tensor(labels)] if weighted else torch.ones(n, dtype=torch.float64)
    loss = (-w * (1 - log_p.exp()) ** gamma * log_p).sum() / w.sum()
    loss.backward()
    return (f"case softmax {gamma!r} -1.0 {n} {k}\n" + line("logits", logits) + line("truth", labels) +
            ("weights " + " ".join(repr(float(v)) for v in weights) + "\n" if weighted else "weights\n") +
            line("loss", [loss.item()]) + line("grad", z.grad.numpy()))


def smoothed_case(rng, smoothing, weighted, n=8, k=5):
    logits = rng.normal(0, 3, size=(n, k)).astype(np.float32)
    labels = rng.integers(0, k, size=n)
    weights = rng.uniform(0.2, 3, size=k).astype(np.float32) if weighted else None
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(z, torch.tensor(labels), label_smoothing=smoothing,
                                             weight=torch.tensor(weights, dtype=torch.float64) if weighted else None)
    loss.backward()
    return (f"case smoothed {smoothing!r} -1.0 {n} {k}\n" + line("logits", logits) + line("truth", labels) +
            ("weights " + " ".join(repr(float(v)) for v in weights) + "\n" if weighted else "weights\n") +
            line("loss", [loss.item()]) + line("grad", z.grad.numpy()))


def main():
    rng = np.random.default_rng(11)
    cases = [sigmoid_case(rng, g, a, soft) for g, a, soft in
             ((2.0, 0.25, False), (2.0, -1.0, False), (0.5, 0.75, False), (1.0, -1.0, True), (3.0, 0.25, True))]
    cases += [softmax_case(rng, g, weighted) for g, weighted in ((2.0, False), (2.0, True), (0.5, False), (1.0, True))]
    cases += [smoothed_case(rng, e, weighted) for e, weighted in ((0.1, False), (0.1, True), (0.4, True))]
    with open(sys.argv[1], "w") as f:
        f.writelines(cases)


if __name__ == "__main__":
    main()
