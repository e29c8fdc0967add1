#!/usr/bin/python3
"""Writes the box references tests/core/test_boxes.cpp reads, at test time, with Debian's
python3-torchvision (torchvision.ops.box_iou, nms, batched_nms on CPU, float32):

    /usr/bin/python3 make_box_fixtures.py OUTPUT.txt

Boxes are random (float corners), on a coarse integer grid (many exact IoU values, some exactly at
the threshold) or with duplicated rows; scores are continuous, quantised to a few levels (ties:
which tied box survives depends on the sort order, a stable one in torchvision's kernel; torch's
default unstable sort differs from it past 16 values) or all equal. batched_nms stays at or under 1000 boxes:
above that torchvision switches to a per-class loop whose output orders ties differently.

Text layout, one case per block (values printed exactly: float32 widened to double):
  case <name> <N> <iou_threshold>
  boxes    N*4 x1 y1 x2 y2
  scores   N
  classes  N
  order    N   torch.sort(scores, descending=True, stable=True) indices
  nms      kept indices of torchvision.ops.nms
  batched  kept indices of torchvision.ops.batched_nms
  iou      R*N torchvision.ops.box_iou(boxes[:R], boxes), R = min(N, 12)
  class_scores  N*3 per-class scores (row-major), quantised in "levels"/"equal" cases
  select   kept flat indices n*3+k of the detection post-processing torchvision's detectors use
           (as FCOS/RetinaNet postprocess_detections without per-level top-k): candidates with
           score > 0.3 in flat order, batched_nms per class at the case's threshold, the best 20
           (above 1000 candidates per-class ops.nms in a stable score order: see per_class_nms)
"""
import sys

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou, nms


def line(name, values):
    return name + "".join(" " + repr(float(v)) for v in np.ravel(values)) + "\n"


def int_line(name, values):
    return name + "".join(" " + str(int(v)) for v in np.ravel(values)) + "\n"


def make_boxes(rng, kind, n):
    if kind == "grid":
        corners = rng.integers(0, 12, size=(n, 2))
        sizes = rng.integers(1, 6, size=(n, 2))
    else:
        corners = rng.uniform(0, 100, size=(n, 2))
        sizes = rng.uniform(1, 40, size=(n, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)
    if kind == "dup" and n > 1:
        copies = rng.integers(0, n, size=n // 2)
        boxes[rng.integers(0, n, size=n // 2)] = boxes[copies]
    return boxes


def make_scores(rng, kind, n):
    if kind == "levels":
        return (rng.integers(0, 4, size=n) / 4).astype(np.float32)
    if kind == "equal":
        return np.full(n, 0.5, dtype=np.float32)
    return rng.random(n).astype(np.float32)


def per_class_nms(boxes, scores, classes, threshold):
    """batched_nms; above 1000 boxes torchvision's own loop (_batched_nms_vanilla) orders equal
    scores by torch's unstable sort, so there the same per-class ops.nms calls are ordered by a
    stable sort of the scores, as torchvision's coordinate-offset path below 1000 boxes orders them."""
    if len(boxes) <= 1000:
        return batched_nms(boxes, scores, classes, threshold)
    kept = torch.cat([torch.where(classes == k)[0][nms(boxes[classes == k], scores[classes == k], threshold)]
                      for k in torch.unique(classes)])
    kept = torch.sort(kept)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]]


def case(rng, boxes_kind, scores_kind, n, threshold):
    boxes = make_boxes(rng, boxes_kind, n)
    scores = make_scores(rng, scores_kind, n)
    classes = rng.integers(0, 4, size=n).astype(np.int32)
    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    rows = min(n, 12)
    class_scores = np.stack([make_scores(rng, scores_kind, n) for _ in range(3)], axis=1).reshape(-1)
    flat = torch.from_numpy(class_scores)
    candidates = torch.where(flat > 0.3)[0]
    kept = per_class_nms(b[candidates // 3], flat[candidates], candidates % 3, threshold)[:20]
    return (f"case {boxes_kind}-{scores_kind} {n} {threshold!r}\n" + line("boxes", boxes) + line("scores", scores) +
            int_line("classes", classes) + int_line("order", torch.sort(s, descending=True, stable=True)[1].numpy()) +
            int_line("nms", nms(b, s, threshold).numpy()) +
            int_line("batched", batched_nms(b, s, torch.from_numpy(classes).long(), threshold).numpy()) +
            line("iou", box_iou(b[:rows], b).numpy()) + line("class_scores", class_scores) +
            int_line("select", candidates[kept].numpy()))


def main():
    rng = np.random.default_rng(17)
    cases = []
    for seed_round in range(6):
        for boxes_kind in ("float", "grid", "dup"):
            for scores_kind in ("float", "levels", "equal"):
                for n in (0, 1, 7, 17, 60, 250, 1000):
                    threshold = (0.5, 0.3, 0.7, 0.0, 0.5, 0.9)[seed_round]
                    if n > 60 and seed_round > 2:
                        continue
                    cases.append(case(rng, boxes_kind, scores_kind, n, threshold))
    with open(sys.argv[1], "w") as f:
        f.writelines(cases)


if __name__ == "__main__":
    main()
