#!/usr/bin/python3
"""Writes the references tests/core/test_pytorch_detection.cpp reads, at test time: the one-level
FCOS loss of core/detection_head.hpp computed with torchvision.ops' own losses in float64, as
torchvision.models.detection.FCOSHead.compute_loss combines them:
    (sigmoid_focal_loss(cls, onehot, alpha, gamma, "sum")
     + generalized_box_iou_loss(decoded[fg], gt[fg], "sum")
     + binary_cross_entropy_with_logits(centerness[fg], centerness_target[fg], "sum")) / max(1, positives)
with the targets assigned here from the rule as the header of core/detection_head.hpp states it:
cell (i, j) looks at p = ((j + .5) s, (i + .5) s); a non-crowd box takes a cell when p is strictly
inside it and within 1.5 s of its centre on both axes, or when the cell holds its centre; the cell
keeps the candidate of least area, the lower index on ties. Decoded box: p -/+ s exp(r).

    /usr/bin/python3 make_detection_loss_fixtures.py OUTPUT.txt

Text layout, one case per block:
  case <name> <N> <classes> <grid_h> <grid_w> <stride> <centerness 0|1> <gamma> <alpha>
  outputs   N*channels*grid_h*grid_w values (float32 inputs printed exactly), NCHW
  boxes     M*7 values: image x1 y1 x2 y2 class crowd
  assigned  N*cells box indices within the image, -1 for background
  loss      the mean
  grad      d(mean)/d(outputs), NCHW
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

RADIUS = 1.5


def line(name, values):
    return name + " " + " ".join(repr(float(v)) for v in np.ravel(values)) + "\n"


def assign(boxes, grid_h, grid_w, stride):
    """boxes: list of (x1, y1, x2, y2, class, crowd) of one image; returns per cell a box index or -1."""
    assigned = []
    for i in range(grid_h):
        for j in range(grid_w):
            px, py = (j + 0.5) * stride, (i + 0.5) * stride
            best = -1
            for m, (x1, y1, x2, y2, _, crowd) in enumerate(boxes):
                if crowd:
                    continue
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                inside = x1 < px < x2 and y1 < py < y2
                near = abs(px - cx) < RADIUS * stride and abs(py - cy) < RADIUS * stride
                holds_centre = (min(grid_w - 1, int(np.floor(cx / stride))) == j and
                                min(grid_h - 1, int(np.floor(cy / stride))) == i)
                if not ((inside and near) or holds_centre):
                    continue
                area = (x2 - x1) * (y2 - y1)
                if best < 0 or area < (boxes[best][2] - boxes[best][0]) * (boxes[best][3] - boxes[best][1]):
                    best = m
            assigned.append(best)
    return assigned


def reference(outputs, images, classes, grid_h, grid_w, stride, centerness, gamma, alpha):
    n = outputs.shape[0]
    cells = grid_h * grid_w
    out = torch.tensor(outputs, dtype=torch.float64, requires_grad=True)
    cls = out[:, :classes].permute(0, 2, 3, 1).reshape(n, cells, classes)
    reg = out[:, classes:classes + 4].permute(0, 2, 3, 1).reshape(n, cells, 4)
    jj, ii = np.meshgrid(np.arange(grid_w), np.arange(grid_h))
    px = torch.tensor((jj.ravel() + 0.5) * stride, dtype=torch.float64)
    py = torch.tensor((ii.ravel() + 0.5) * stride, dtype=torch.float64)
    d = stride * torch.exp(reg)
    decoded = torch.stack([px - d[..., 0], py - d[..., 1], px + d[..., 2], py + d[..., 3]], dim=-1)
    onehot = torch.zeros(n, cells, classes, dtype=torch.float64)
    fg = torch.zeros(n, cells, dtype=torch.bool)
    gt = torch.zeros(n, cells, 4, dtype=torch.float64)
    assigned_all = []
    for k, boxes in enumerate(images):
        assigned = assign(boxes, grid_h, grid_w, stride)
        assigned_all += assigned
        for q, m in enumerate(assigned):
            if m >= 0:
                fg[k, q] = True
                onehot[k, q, boxes[m][4]] = 1
                gt[k, q] = torch.tensor(boxes[m][:4], dtype=torch.float64)
    positives = int(fg.sum())
    loss = sigmoid_focal_loss(cls, onehot, alpha=alpha, gamma=gamma, reduction="sum")
    loss = loss + generalized_box_iou_loss(decoded[fg], gt[fg], reduction="sum")
    if centerness:
        ctr = out[:, classes + 4].reshape(n, cells)
        left, top = px - gt[..., 0], py - gt[..., 1]
        right, bottom = gt[..., 2] - px, gt[..., 3] - py
        lr = torch.stack([left, right], -1)
        tb = torch.stack([top, bottom], -1)
        target = torch.sqrt(lr.min(-1).values.clamp(min=0) / lr.max(-1).values *
                            tb.min(-1).values.clamp(min=0) / tb.max(-1).values)
        loss = loss + F.binary_cross_entropy_with_logits(ctr[fg], target[fg], reduction="sum")
    mean = loss / max(1, positives)
    mean.backward()
    return mean.item(), out.grad.numpy(), assigned_all


def random_box(rng, height, width, small=False):
    w = rng.uniform(1.5, 5) if small else rng.uniform(4, width * 0.7)
    h = rng.uniform(4, height * 0.7)
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [float(np.float32(x1)), float(np.float32(y1)), float(np.float32(x1 + w)), float(np.float32(y1 + h))]


def case(rng, name, n, classes, grid_h, grid_w, stride, centerness, gamma=2.0, alpha=0.25, empty=False):
    channels = classes + 4 + int(centerness)
    outputs = rng.normal(0, 1.5, size=(n, channels, grid_h, grid_w)).astype(np.float32)
    outputs[:, classes:classes + 4] = rng.normal(0, 0.6, size=(n, 4, grid_h, grid_w)).astype(np.float32)
    height, width = grid_h * stride, grid_w * stride
    images = []
    for k in range(n):
        count = 0 if empty or (k == n - 1 and n > 2) else int(rng.integers(1, 5))  # the last of a large batch has none
        boxes = []
        for m in range(count):
            box = random_box(rng, height, width, small=(m == 1))  # one narrower than the stride
            boxes.append(box + [int(rng.integers(0, classes)), int(m == 2)])  # the third is crowd
        if count >= 2:  # a box inside the first one: the smaller wins their shared cells
            x1, y1, x2, y2 = boxes[0][:4]
            boxes.append([x1 + (x2 - x1) / 4, y1 + (y2 - y1) / 4, x2 - (x2 - x1) / 4, y2 - (y2 - y1) / 4,
                          int(rng.integers(0, classes)), 0])
            boxes[-1][:4] = [float(np.float32(v)) for v in boxes[-1][:4]]
        images.append(boxes)
    mean, grad, assigned = reference(outputs, images, classes, grid_h, grid_w, stride, centerness, gamma, alpha)
    flat = [[k] + b[:4] + b[4:] for k, boxes in enumerate(images) for b in boxes]
    return (f"case {name} {n} {classes} {grid_h} {grid_w} {stride} {int(centerness)} {gamma!r} {alpha!r}\n" +
            line("outputs", outputs) + line("boxes", flat) + line("assigned", assigned) + line("loss", [mean]) +
            line("grad", grad))


def main():
    rng = np.random.default_rng(17)
    cases = [case(rng, "centerness", 3, 3, 6, 6, 8, True),
             case(rng, "no_centerness", 2, 2, 5, 7, 4, False),
             case(rng, "focal_options", 4, 4, 4, 4, 16, True, gamma=1.5, alpha=0.6),
             case(rng, "one_class", 2, 1, 8, 6, 6, True),
             case(rng, "empty", 1, 2, 3, 3, 8, True, empty=True)]
    with open(sys.argv[1], "w") as f:
        f.writelines(cases)


if __name__ == "__main__":
    main()
