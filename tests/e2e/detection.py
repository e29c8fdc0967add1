#!/usr/bin/env python3
"""Detection end to end (issue 17) on a generated canvas set (scripts/make_detection_dataset.py:
Fashion-MNIST items on 64x64 canvases, COCO JSON plus PNGs, through `mpicnn convert --format
coco`): a small one-level FCOS detector (BatchNorm, stride 8, 10 classes + 4 distances + centerness)
trained the same number of steps with the same global batch, crop and flip augmentation, on 1, 2
and 3 ranks. Passes when
- the three final checkpoints hold bitwise identical weights, BatchNorm statistics and Adam's
  moments (every dataset of /model, /state and /optimizer, read with h5py);
- `mpicnn eval --json` gives the identical report (loss, COCO and VOC figures per class and mean)
  on 1, 2 and 3 ranks;
- `mpicnn detect` on 2 ranks writes COCO results JSON (the canvases' COCO ids renumbered, so that
  image and category ids must be mapped back) that plain Python reads, and the tests' Python COCO
  reference (tests/core/coco/make_detection_eval_fixtures.py) on it, against the source test.json's
  boxes, gives every figure of eval; the .h5 output on 1 rank holds the same detections.

- the ONNX export's raw head outputs [N, 15, 8, 8] in onnxruntime (npm's onnxruntime-node,
  tests/io/run_onnx.js) are within 1e-4 of `mpicnn predict`'s, and README's decode of them (numpy
  and torchvision's batched_nms) finds the detections `mpicnn detect` wrote (99% at least, as
  float differences may reorder near-equal scores).

  detection.py MPICNN_EXE WORK_DIR MPIEXEC NODE_MODULES
"""
import json
import os
import shutil
import sys

import h5py
import numpy as np

from volumes3d import run, tensors  # noqa: E402 (this folder's own helpers)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "..", "scripts")
RUN_ONNX = os.path.join(HERE, "..", "io", "run_onnx.js")
TOLERANCE = 1e-4  # the export tests' (tests/io/export_tests.py)
SPEC = ("conv(8,3,pad=1,bias=false) bn relu maxpool(2) conv(16,3,pad=1,bias=false) bn relu maxpool(2) "
        "conv(16,3,pad=1) relu maxpool(2) conv(15,1)")
STEPS = 63  # 96 samples, batch 16: ten epochs and three steps
CATEGORY = lambda k: 100 + 7 * k  # noqa: E731
IMAGE = lambda n: 1000 + 3 * n  # noqa: E731


def renumber(path):
    """COCO ids need not be 1..N: categories become 100 + 7k and images 1000 + 3n, so that detect must
    map classes and samples back to the JSON's own ids."""
    with open(path) as f:
        coco = json.load(f)
    for c in coco["categories"]:
        c["id"] = CATEGORY(c["id"])
    for i in coco["images"]:
        i["id"] = IMAGE(i["id"])
    for a in coco["annotations"]:
        a["category_id"], a["image_id"] = CATEGORY(a["category_id"]), IMAGE(a["image_id"])
    with open(path, "w") as f:
        json.dump(coco, f)


def make_data(exe, work):
    canvases = os.path.join(work, "canvases")
    shutil.rmtree(canvases, ignore_errors=True)
    run(["/usr/bin/python3", os.path.join(SCRIPTS, "make_detection_dataset.py"), canvases, "--train", 96, "--test", 40,
         "--size", 64, "--seed", 5])
    for split in ("train", "test"):
        renumber(os.path.join(canvases, f"{split}.json"))
    data = os.path.join(work, "canvases.h5")
    run([exe, "convert", "--format", "coco", "--input",
         f"train={canvases}/train.json,test={canvases}/test.json", "--images", f"{canvases}/images", "--output", data])
    return canvases, data


def train(exe, launcher, data, out, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    run(launcher + [exe, "train", "--data.path", data, "--model.spec", SPEC, "--loss.kind", "detection",
                    "--data.random_flip", "true", "--data.random_crop_pad", 4, "--train.batch_size", 16,
                    "--train.micro_batch", 4, "--train.epochs", 11, f"--train.max_steps={STEPS}", "--optimizer.name", "adam",
                    "--optimizer.lr", 0.003, "--train.threads", 1, "--train.progress", "lines", "--output", out, *extra])


def final_checkpoint(out):
    path = os.path.join(out, f"ckpt-{STEPS:09d}.h5")
    if not os.path.exists(path):
        sys.exit(f"FAILED: no checkpoint of step {STEPS} in {out}: {sorted(os.listdir(out))}")
    return path


def check_bitwise(checkpoints):
    one = checkpoints[1]
    for ranks in sorted(set(checkpoints) - {1}):
        for group in ("model", "state", "optimizer"):
            a, b = tensors(one, group), tensors(checkpoints[ranks], group)
            if sorted(a) != sorted(b):
                sys.exit(f"FAILED: /{group} names differ: {sorted(a)} vs {sorted(b)}")
            differing = [n for n in a if a[n].dtype != b[n].dtype or a[n].tobytes() != b[n].tobytes()]
            values = sum(np.size(v) for v in a.values())
            print(f"[ figure ] /{group}: {len(a)} tensors, {values} values; bitwise different on 1 and {ranks} ranks: "
                  f"{len(differing)} tensors")
            if differing:
                sys.exit(f"FAILED: /{group} differs between 1 and {ranks} ranks: {differing}")
    with h5py.File(one, "r") as f:
        first = f["model/0.weight"][()]
    with h5py.File(os.path.join(os.path.dirname(one), "ckpt-000000060.h5"), "r") as f:
        if np.array_equal(f["model/0.weight"][()], first):
            sys.exit("FAILED: the weights did not change between step 60 and the last step")


def check_eval(exe, mpiexec, checkpoint, data):
    """The whole `mpicnn eval --json` report (loss, COCO and VOC figures per class and mean)."""
    reports = [json.loads(run([mpiexec, "--oversubscribe", "-np", n, exe, "eval", "--checkpoint", checkpoint,
                               "--data", data, "--split", "test", "--json"])) for n in (1, 2, 3)]
    differing = [n for n, report in zip((2, 3), reports[1:]) if report != reports[0]]
    if differing:
        sys.exit(f"FAILED: eval on {differing} ranks differs from 1 rank:\n{reports}")
    reports = {1: reports[0]}
    m = reports[1]["metrics"]
    per_class = [name for name in m if name.startswith("ap50_")]
    if len(per_class) != 10 or "voc_ap50" not in m or "ar100" not in m:
        sys.exit(f"FAILED: eval reports no per-class and mean COCO figures: {sorted(m)}")
    print(f"[ figure ] test split ({reports[1]['samples']} images), identical on 1, 2, 3 ranks: AP {m['ap']:.4f}, "
          f"AP50 {m['ap50']:.4f}, AP75 {m['ap75']:.4f}, AR100 {m['ar100']:.4f}, VOC AP50 {m['voc_ap50']:.4f}, "
          f"loss {reports[1]['loss']:.6f}, {len(m)} figures")
    return m


def coco_reference():
    """evaluate(truth, dets, classes) of tests/core/coco/make_detection_eval_fixtures.py: COCOeval's and
    VOC's rules written in Python for the tests."""
    sys.path.insert(0, os.path.join(HERE, "..", "core", "coco"))
    from make_detection_eval_fixtures import evaluate
    return evaluate


FIGURES = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small", "ar_medium",
           "ar_large", "voc_ap50"]


def check_detect(exe, mpiexec, checkpoint, data, canvases, work, metrics):
    """`mpicnn detect` writes COCO results JSON that plain Python reads; the Python COCO reference on
    it, against the source test.json's own boxes, gives eval's figures."""
    out = os.path.join(work, "dets.json")
    run([mpiexec, "--oversubscribe", "-np", 2, exe, "detect", "--checkpoint", checkpoint, "--data", data,
         "--split", "test", "--output", out])
    with open(out) as f:
        results = json.load(f)
    with open(os.path.join(canvases, "test.json")) as f:
        coco = json.load(f)
    categories = sorted(c["id"] for c in coco["categories"])
    images = {i["id"] for i in coco["images"]}
    for r in results:
        if sorted(r) != ["bbox", "category_id", "image_id", "score"] or r["image_id"] not in images or \
                r["category_id"] not in categories or len(r["bbox"]) != 4 or min(r["bbox"][2:]) < 0 or \
                not 0 < r["score"] <= 1:
            sys.exit(f"FAILED: {out}: not a COCO result of this split: {r}")
    truth = [(a["image_id"], [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
              categories.index(a["category_id"]), bool(a.get("iscrowd", 0))) for a in coco["annotations"]]
    dets = [(r["image_id"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
             categories.index(r["category_id"]), r["score"]) for r in results]
    per_class, mean = coco_reference()(truth, dets, len(categories))
    worst = 0.0
    for name, value in zip(FIGURES, mean):
        ours = metrics[name]
        same = (ours is None and np.isnan(value)) or (ours is not None and abs(ours - value) <= 1e-12)
        if not same:
            sys.exit(f"FAILED: {name}: eval {ours}, the Python reference on {out} {value}")
        worst = max(worst, 0.0 if ours is None else abs(ours - value))
    for k, row in enumerate(per_class):
        for name, value in zip(FIGURES, row):
            ours = metrics[f"{name}_{k}"]
            if not ((ours is None and np.isnan(value)) or (ours is not None and abs(ours - value) <= 1e-12)):
                sys.exit(f"FAILED: {name}_{k}: eval {ours}, the Python reference on {out} {value}")
    print(f"[ figure ] detect: {len(results)} COCO results in {len(images)} images (2 ranks); the Python COCO "
          f"reference on them gives eval's {len(FIGURES)} figures per class and mean (largest difference {worst:.2g})")
    h5_out = os.path.join(work, "dets.h5")
    run([exe, "detect", "--checkpoint", checkpoint, "--data", data, "--split", "test", "--output", h5_out])
    with h5py.File(h5_out, "r") as f:
        boxes, scores, ids = f["boxes"][()], f["scores"][()], f["image_ids"][()]
        offsets = f["offsets"][()]
    if len(boxes) != len(results) or offsets[-1] != len(results) or len(offsets) != len(images) + 1:
        sys.exit(f"FAILED: {h5_out} holds {len(boxes)} detections, offsets {offsets[-1]}, the JSON {len(results)}")
    for r, b, s, i in zip(results, boxes, scores, ids):
        if r["image_id"] != i or abs(r["score"] - s) > 1e-7 or abs(r["bbox"][0] - b[0]) > 1e-4:
            sys.exit(f"FAILED: {h5_out} (1 rank) and {out} (2 ranks) differ: {r} vs {b} {s} {i}")


def check_onnx(exe, checkpoint, data, work, node_modules):
    """The exported graph's raw head outputs [N, K+5, H/s, W/s] in onnxruntime against `mpicnn predict`'s."""
    model = os.path.join(work, "detector.onnx")
    run([exe, "export", "--checkpoint", checkpoint, "--format", "onnx", "--output", model])
    predictions = os.path.join(work, "predict.h5")
    run([exe, "predict", "--checkpoint", checkpoint, "--data", data, "--split", "test", "--output", predictions])
    with h5py.File(predictions, "r") as f:
        ours = f["outputs"][()]
    with h5py.File(data, "r") as f:
        images = f["test/images"][()]
    x = images.astype(np.float32) / np.float32(255)  # what the exported model takes (tests/io)
    inputs = os.path.join(work, "inputs.f32")
    x.tofile(inputs)
    prefix = os.path.join(work, "ort_")
    shown = json.loads(run(["node", RUN_ONNX, model, inputs, ",".join(map(str, x.shape)), 16, prefix],
                           env=dict(os.environ, NODE_PATH=node_modules)))
    dims = shown["dims"]["logits"]
    if dims != [x.shape[0], 15, 8, 8]:
        sys.exit(f"FAILED: the ONNX output 'logits' has dims {dims}, expected [{x.shape[0]}, 15, 8, 8]")
    theirs = np.fromfile(prefix + "logits.f32", dtype=np.float32).reshape(ours.shape)
    diff = float(np.max(np.abs(theirs.astype(np.float64) - ours.astype(np.float64))))
    scale = float(np.max(np.abs(ours)))
    print(f"[ figure ] onnxruntime vs mpicnn predict on {x.shape[0]} canvases: raw head outputs {dims[1:]}, max "
          f"|difference| {diff:.3g} (largest |output| {scale:.3g}; tolerance {TOLERANCE:g})")
    if diff > TOLERANCE:
        sys.exit(f"FAILED: onnxruntime differs from mpicnn predict by {diff:.3g}")
    return theirs.reshape(dims)


def readme_decode(y, height, width):
    """README's decode of the ONNX outputs, with torchvision's batched_nms: per image a list of
    (class, x1, y1, x2, y2, score)."""
    import torch
    from torchvision.ops import batched_nms
    sigmoid = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    k = y.shape[1] - 5
    h, w = y.shape[2:]
    s = height // h
    px, py = (np.arange(w) + 0.5) * s, (np.arange(h) + 0.5) * s
    d = s * np.exp(y[:, k:k + 4].astype(np.float64))
    boxes = np.stack([px - d[:, 0], py[:, None] - d[:, 1], px + d[:, 2], py[:, None] + d[:, 3]], -1)
    scores = np.sqrt(sigmoid(y[:, :k]) * sigmoid(y[:, k + 4:k + 5]))
    found = []
    for n in range(len(y)):
        flat = scores[n].reshape(k, h * w).T.ravel()  # (cell, class), cell-major
        cell_boxes = np.clip(boxes[n].reshape(h * w, 4), 0, [width, height, width, height])
        keep = np.nonzero(flat > 0.05)[0]
        keep = keep[np.argsort(-flat[keep], kind="stable")][:1000]
        b = torch.tensor(cell_boxes[keep // k], dtype=torch.float32)
        kept = batched_nms(b, torch.tensor(flat[keep], dtype=torch.float32), torch.tensor(keep % k), 0.6)[:100]
        found.append([(int(keep[i] % k), *cell_boxes[keep[i] // k], flat[keep[i]]) for i in kept.numpy()])
    return found


def check_readme_decode(theirs, dets_json, canvases, height, width):
    """README's decode of onnxruntime's outputs finds the detections `mpicnn detect` wrote."""
    with open(dets_json) as f:
        results = json.load(f)
    with open(os.path.join(canvases, "test.json")) as f:
        coco = json.load(f)
    order = sorted(i["id"] for i in coco["images"])
    categories = sorted(c["id"] for c in coco["categories"])
    ours = {}
    for r in results:
        x, y, w, h = r["bbox"]
        ours.setdefault(order.index(r["image_id"]), []).append((categories.index(r["category_id"]), x, y, x + w, y + h))
    found, matched = readme_decode(theirs, height, width), 0
    total = sum(len(f) for f in found)
    for n, detections in enumerate(found):
        for c, x1, y1, x2, y2, _ in detections:
            matched += any(c == o[0] and max(abs(x1 - o[1]), abs(y1 - o[2]), abs(x2 - o[3]), abs(y2 - o[4])) < 1e-3
                           for o in ours.get(n, []))
    print(f"[ figure ] README's decode of the ONNX outputs (numpy + torchvision's batched_nms): {total} detections, "
          f"{matched} of them among mpicnn detect's {len(results)}")
    if total != len(results) or matched < 0.99 * total:
        sys.exit(f"FAILED: README's decode finds {total} detections, {matched} matching detect's {len(results)}")


def main():
    exe, work, mpiexec, node_modules = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    canvases, data = make_data(exe, work)
    outs = {ranks: os.path.join(work, f"run{ranks}") for ranks in (1, 2, 3)}
    checkpoints = {}
    for ranks in (1, 2, 3):
        train(exe, [mpiexec, "--oversubscribe", "-np", ranks] if ranks > 1 else [], data, outs[ranks])
        checkpoints[ranks] = final_checkpoint(outs[ranks])
    check_bitwise(checkpoints)
    # Global-batch BatchNorm's layer-synchronous pass: every micro-batch's loss still gets its rows' boxes.
    synced = {}
    for ranks in (1, 2):
        out = os.path.join(work, f"run{ranks}_global_bn")
        train(exe, [mpiexec, "-np", ranks] if ranks > 1 else [], data, out, ["--model.bn_statistics", "global_batch"])
        synced[ranks] = final_checkpoint(out)
    check_bitwise(synced)
    metrics = check_eval(exe, mpiexec, checkpoints[2], data)
    check_detect(exe, mpiexec, checkpoints[2], data, canvases, work, metrics)
    theirs = check_onnx(exe, checkpoints[2], data, work, node_modules)
    check_readme_decode(theirs, os.path.join(work, "dets.json"), canvases, 64, 64)


if __name__ == "__main__":
    main()
