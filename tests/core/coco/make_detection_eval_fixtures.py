#!/usr/bin/python3
"""Writes the references tests/core/test_detection_eval.cpp reads, at test time: detection metrics
by COCO's rules (pycocotools' COCOeval, iouType "bbox", default parameters) and VOC's all-points
AP@.5, computed by an implementation of those rules written here for the tests (pycocotools is not
in Debian 12), from the rules as cocoeval.py states them:
  - per image and category: detections sorted by score (stable), the first 100 kept;
  - IoU in double from x1,y1,x2,y2 (no +1); crowd ground truth: intersection over the detection's area;
  - per IoU threshold np.linspace(.5, .95, 10): each detection in score order takes, among ground
    truth not yet taken (crowd may be taken again), the one of highest IoU >= the threshold, eligible
    ground truth (not crowd, area inside the range) preferred to ignored ground truth; matched to
    ignored ground truth, or unmatched with its area outside the range: ignored;
  - per category, area range and maxDets (1, 10, 100): each image's first maxDets detections over
    the split, stable-sorted by score; precision tp / (tp + fp + eps), made non-increasing from the
    right, read at np.linspace(0, 1, 101) with searchsorted(left), 0 past the last recall; recall the
    last one; categories without eligible ground truth are undefined (-1, written as nan);
  - summaries as COCOeval.summarize (means over every defined entry of the (T, R, K) block).
  - VOC: all detections of a class over the split by score (stable, images in id order); each takes
    the ground truth of highest IoU in its image (any, taken or not); IoU > 0.5: crowd -> neither,
    taken -> false positive, else true positive; IoU <= 0.5 -> false positive; AP = area under the
    precision envelope, recall from 0 to 1 (the devkit's voc_ap with use_07_metric=False).

    /usr/bin/python3 make_detection_eval_fixtures.py OUTPUT.txt

Text layout, one case per block:
  case <name> <classes> <G> <D>
  truth   G*7: image x1 y1 x2 y2 class crowd
  dets    D*7: image x1 y1 x2 y2 class score
  class   13 figures of class k (one line per class, k = 0..classes-1), nan where undefined
  mean    13 figures over the classes
Figures in order: ap ap50 ap75 ap_small ap_medium ap_large ar1 ar10 ar100 ar_small ar_medium ar_large voc_ap50
"""
import sys

import numpy as np

IOU_THRESHOLDS = np.linspace(.5, 0.95, 10)
RECALL_POINTS = np.linspace(.0, 1.00, 101)
MAX_DETS = (1, 10, 100)
AREAS = ((0.0, 1e10), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e10))


def area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(det, gt, crowd):
    w = min(det[2], gt[2]) - max(det[0], gt[0])
    h = min(det[3], gt[3]) - max(det[1], gt[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (area(det) if crowd else area(det) + area(gt) - inter)


def stable_by_score(items, score):
    return sorted(items, key=lambda x: -score(x))  # Python's sort is stable


def match_cell(gts, dets, area_range):
    """gts: list of (box, crowd); dets: score-sorted list of (box, score). Returns per threshold the
    (matched, ignored) flags of each detection, and the number of eligible ground truth."""
    lo, hi = area_range
    ignore = [crowd or not (lo <= area(box) <= hi) for box, crowd in gts]
    gts = [gts[i] for i in sorted(range(len(gts)), key=lambda i: ignore[i])]
    ignore = sorted(ignore)
    result = []
    for t in IOU_THRESHOLDS:
        taken = [False] * len(gts)
        flags = []
        for box, _ in dets:
            best, chosen = min(t, 1 - 1e-10), None
            for g, (gt_box, crowd) in enumerate(gts):
                if taken[g] and not crowd:
                    continue
                if chosen is not None and not ignore[chosen] and ignore[g]:
                    break
                value = iou(box, gt_box, crowd)
                if value >= best:
                    best, chosen = value, g
            if chosen is None:
                flags.append((False, not (lo <= area(box) <= hi)))
            else:
                taken[chosen] = True
                flags.append((True, ignore[chosen]))
        result.append(flags)
    return result, ignore.count(False)


def coco_class(cells, area_range, max_dets):
    """cells: per image in id order, (gts, score-sorted dets cut at 100). Returns (precision (T,R),
    recall (T)) or None when no eligible ground truth."""
    entries, eligible = [], 0
    per_cell = [match_cell(gts, dets, area_range) for gts, dets in cells]
    for (gts, dets), (flags, count) in zip(cells, per_cell):
        eligible += count
        for d in range(min(max_dets, len(dets))):
            entries.append((dets[d][1], [flags[t][d] for t in range(len(IOU_THRESHOLDS))]))
    if eligible == 0:
        return None
    entries = stable_by_score(entries, lambda e: e[0])
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        tp = np.cumsum([m and not ig for _, f in entries for m, ig in [f[t]]]).astype(float)
        fp = np.cumsum([not m and not ig for _, f in entries for m, ig in [f[t]]]).astype(float)
        rc = tp / eligible
        pr = tp / (tp + fp + np.spacing(1))
        recall[t] = rc[-1] if len(rc) else 0.0
        envelope = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
        at = np.searchsorted(rc, RECALL_POINTS, side="left")
        precision[t] = np.where(at < len(rc), envelope[np.minimum(at, max(len(rc) - 1, 0))] if len(rc) else 0.0, 0.0)
    return precision, recall


def voc_class(cells):
    positives = sum(not crowd for gts, _ in cells for _, crowd in gts)
    if positives == 0:
        return float("nan")
    dets = stable_by_score([(c, box, score) for c, (_, ds) in enumerate(cells) for box, score in ds], lambda d: d[2])
    taken = [[False] * len(gts) for gts, _ in cells]
    tp, fp = [], []
    for c, box, _ in dets:
        gts = cells[c][0]
        overlaps = [iou(box, g, False) for g, _ in gts]
        g = int(np.argmax(overlaps)) if overlaps else -1
        if g >= 0 and overlaps[g] > 0.5:
            if gts[g][1]:
                continue
            hit = not taken[c][g]
            taken[c][g] = True
        else:
            hit = False
        tp.append(float(hit))
        fp.append(float(not hit))
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = np.concatenate([[0.0], tp / positives, [1.0]])
    prec = np.concatenate([[0.0], tp / np.maximum(tp + fp, np.finfo(np.float64).eps), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.where(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1]))


def evaluate(truth, dets, classes):
    """truth: (image, box, class, crowd); dets: (image, box, class, score). Returns per-class rows
    and the mean row, COCO's way (means over every defined entry)."""
    blocks = {}  # (area index, maxDets index) -> list over classes of (precision, recall) or None
    voc, cells_of = [], []
    for k in range(classes):
        images = sorted({t[0] for t in truth if t[2] == k} | {d[0] for d in dets if d[2] == k})
        cells = []
        for image in images:
            gts = [(t[1], t[3]) for t in truth if t[0] == image and t[2] == k]
            ds = stable_by_score([(d[1], d[3]) for d in dets if d[0] == image and d[2] == k], lambda d: d[1])
            cells.append((gts, ds))
        voc.append(voc_class(cells))
        cells_of.append([(g, d[:100]) for g, d in cells])
    for a, area_range in enumerate(AREAS):
        for m, max_dets in enumerate(MAX_DETS):
            blocks[a, m] = [coco_class(cells_of[k], area_range, max_dets) for k in range(classes)]

    def ap(a, ks, t=None):
        values = [blocks[a, 2][k][0] if t is None else blocks[a, 2][k][0][t] for k in ks if blocks[a, 2][k] is not None]
        return float(np.mean(np.array(values))) if values else float("nan")

    def ar(a, m, ks):
        values = [blocks[a, m][k][1] for k in ks if blocks[a, m][k] is not None]
        return float(np.mean(np.array(values))) if values else float("nan")

    def row(ks):
        figures = [ap(0, ks), ap(0, ks, 0), ap(0, ks, 5), ap(1, ks), ap(2, ks), ap(3, ks),
                   ar(0, 0, ks), ar(0, 1, ks), ar(0, 2, ks), ar(1, 2, ks), ar(2, 2, ks), ar(3, 2, ks)]
        defined = [voc[k] for k in ks if not np.isnan(voc[k])]
        return figures + [float(np.mean(defined)) if defined else float("nan")]

    return [row([k]) for k in range(classes)], row(list(range(classes)))


def random_box(rng, small=False):
    x, y = rng.uniform(0, 150, size=2)
    w, h = rng.uniform(3, 25, size=2) if small else rng.uniform(3, 140, size=2)
    return np.array([x, y, x + w, y + h], dtype=np.float32).astype(np.float64)


def jitter(rng, box, amount):
    w, h = box[2] - box[0], box[3] - box[1]
    moved = box + rng.normal(0, amount, size=4) * np.array([w, h, w, h])
    x1, y1 = min(moved[0], moved[2] - 1), min(moved[1], moved[3] - 1)
    return np.array([x1, y1, max(moved[2], x1 + 1), max(moved[3], y1 + 1)], dtype=np.float32).astype(np.float64)


def random_case(rng, classes, images, crowd_rate, crowded_image):
    image_ids = rng.choice(1000, size=images, replace=False)
    truth, dets = [], []
    for image in image_ids:
        crowded = crowded_image and image == image_ids[0]
        image_truth = []
        for _ in range(rng.integers(3 if crowded else 0, 7)):
            box = random_box(rng, small=rng.random() < 0.3)
            k = int(rng.integers(0, classes))
            image_truth.append((int(image), box, k, bool(rng.random() < crowd_rate)))
            for _ in range(rng.integers(0, 3)):
                dets.append((int(image), jitter(rng, box, rng.choice([0.02, 0.08, 0.2])), k, rng.random()))
        truth += image_truth
        for _ in range(rng.integers(0, 4)):
            dets.append((int(image), random_box(rng, small=rng.random() < 0.3), int(rng.integers(0, classes)), rng.random()))
        # More than 100 detections of one class in one image, hits ranked low: COCO keeps the best 100.
        for _ in range(130 if crowded else 0):
            _, box, k, _ = image_truth[int(rng.integers(0, len(image_truth)))]
            hit = rng.random() < 0.2
            dets.append((int(image), jitter(rng, box, 0.05) if hit else random_box(rng), k,
                         rng.uniform(0, 0.4) if hit else rng.uniform(0.3, 1)))
    quantised = rng.random() < 0.4  # ties between scores
    dets = [(i, b, k, float(np.float32(round(s * 4) / 4 if quantised else s))) for i, b, k, s in dets]
    order = rng.permutation(len(dets))
    return truth, [dets[i] for i in order]


def write_case(name, truth, dets, classes):
    per_class, mean = evaluate(truth, dets, classes)
    text = f"case {name} {classes} {len(truth)} {len(dets)}\n"
    text += "truth" + "".join(f" {i} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r} {k} {int(c)}" for i, b, k, c in truth) + "\n"
    text += "dets" + "".join(f" {i} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r} {k} {s!r}" for i, b, k, s in dets) + "\n"
    for values in per_class:
        text += "class" + "".join(f" {v!r}" for v in values) + "\n"
    return text + "mean" + "".join(f" {v!r}" for v in mean) + "\n"


def main():
    rng = np.random.default_rng(2017)
    cases = []
    for seed in range(40):
        classes = int(rng.integers(1, 5))
        truth, dets = random_case(rng, classes, images=int(rng.integers(1, 12)), crowd_rate=[0, 0.1, 0.3][seed % 3],
                                  crowded_image=seed % 5 == 0)
        cases.append(write_case(f"random{seed}", truth, dets, classes))
    with open(sys.argv[1], "w") as f:
        f.writelines(cases)


if __name__ == "__main__":
    main()
