#!/usr/bin/python3
"""Writes the metric-learning loss references tests/core/test_pytorch_metric_losses.cpp reads, at
test time, with PyTorch's autograd in float64, each written here from its published formula:
  arcface: insightface's CombinedMarginLoss for (m1, m2, m3) = (1, m, 0): the label's cosine c
           becomes cos(acos(c) + m) = c cos m - sqrt(1 - c^2) sin m while c > cos(pi - m), else
           c - sin(pi - m) m; all cosines times s; F.cross_entropy (mean);
  cosface: the label's cosine minus m, times s, F.cross_entropy;
  triplet: F.normalize'd embeddings, Euclidean distances (torch.norm of differences);
           batch_hard: per anchor max(0, m + max_p d - min_n d) (Hermans et al. 2017);
           semi_hard: per (anchor, positive), the nearest negative farther than the positive,
           else the farthest negative (TensorFlow Addons' triplet_semihard_loss), hinge averaged
           over the anchor's positives; the sum over anchors divided by N.
Mining picks indices from the distances' values; the loss of the picked distances is what autograd
differentiates, as the references do.

    /usr/bin/python3 make_metric_loss_fixtures.py OUTPUT.txt

Text layout, one case per block:
  case <kind> <mining or -> <scale> <margin> <N> <K or D>
  input   N*K cosines or N*D embeddings (the float32 inputs, printed exactly)
  labels  N labels
  loss    the mean, float64
  grad    N*K (or N*D) values of d(mean)/d(input), float64
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F


def line(name, values):
    return name + " " + " ".join(repr(float(v)) for v in np.ravel(values)) + "\n"


def cosines(rng, n, k, d=6):
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(k, d))
    c = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    return c.astype(np.float32)


def margin_case(rng, kind, scale, margin, n=10, k=6):
    c = cosines(rng, n, k)
    labels = rng.integers(0, k, size=n)
    c[0, labels[0]] = -0.95  # theta + m beyond pi for m = 0.5: insightface's fallback
    c[1, labels[1]] = 0.999  # nearly aligned
    c[2, labels[2]] = np.float32(math.cos(math.pi - margin)) - np.float32(1e-3)  # just past the switch
    cos = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    index = torch.arange(n)
    target = cos[index, torch.tensor(labels)]
    if kind == "arcface":
        sin = torch.sqrt(1.0 - target ** 2)
        phi = torch.where(target > math.cos(math.pi - margin), target * math.cos(margin) - sin * math.sin(margin),
                          target - math.sin(math.pi - margin) * margin)
    else:
        phi = target - margin
    one_hot = F.one_hot(torch.tensor(labels), k).to(torch.float64)
    logits = scale * (cos + one_hot * (phi - target)[:, None])
    loss = F.cross_entropy(logits, torch.tensor(labels))
    loss.backward()
    return (f"case {kind} - {scale!r} {margin!r} {n} {k}\n" + line("input", c) + line("labels", labels) +
            line("loss", [loss.item()]) + line("grad", cos.grad.numpy()))


def triplet_case(rng, mining, margin, identities=4, per_identity=3, d=5):
    labels = np.repeat(np.arange(identities), per_identity)
    labels = np.append(labels, identities)  # an anchor without a positive: contributes 0
    rng.shuffle(labels)
    n = len(labels)
    emb = (rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(identities + 1, d))[labels]).astype(np.float32)
    x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    u = F.normalize(x, dim=1)

    def dist(i, j):
        return torch.norm(u[i] - u[j])

    total = torch.zeros((), dtype=torch.float64)
    for a in range(n):
        positives = [j for j in range(n) if j != a and labels[j] == labels[a]]
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "batch_hard":
            p = max(positives, key=lambda j: dist(a, j).item())
            q = min(negatives, key=lambda j: dist(a, j).item())
            total = total + torch.clamp(margin + dist(a, p) - dist(a, q), min=0)
            continue
        for p in positives:
            dap = dist(a, p).item()
            outside = [j for j in negatives if dist(a, j).item() > dap]
            q = min(outside, key=lambda j: dist(a, j).item()) if outside else max(negatives, key=lambda j: dist(a, j).item())
            total = total + torch.clamp(margin + dist(a, p) - dist(a, q), min=0) / len(positives)
    loss = total / n
    loss.backward()
    return (f"case triplet {mining} 0.0 {margin!r} {n} {d}\n" + line("input", emb) + line("labels", labels) +
            line("loss", [loss.item()]) + line("grad", x.grad.numpy()))


def main():
    rng = np.random.default_rng(18)
    cases = [margin_case(rng, "arcface", 64.0, 0.5), margin_case(rng, "arcface", 30.0, 0.3),
             margin_case(rng, "cosface", 64.0, 0.4), margin_case(rng, "cosface", 30.0, 0.25)]
    cases += [triplet_case(rng, mining, margin) for mining in ("batch_hard", "semi_hard") for margin in (0.2, 0.5, 1.0)]
    with open(sys.argv[1], "w") as f:
        f.writelines(cases)


if __name__ == "__main__":
    main()
