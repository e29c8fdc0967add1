#!/usr/bin/python3
"""Writes a detection set in COCO's format from real Fashion-MNIST items (Debian's
dataset-fashion-mnist): each canvas (96x96 grey by default, black) holds 1-6 items, each resized
(bilinear, PIL) by a random scale in [0.6, 2.0] (17-56 pixels a side) and pasted at a random
position inside the canvas; overlaps are allowed (the brighter pixel wins). Train canvases take
items from Fashion-MNIST's train images, test canvases from its t10k images. A box is the tight
box of the item's non-zero pixels after resizing, in COCO's [x, y, width, height] with pixel
edges (a one-pixel item is [x, y, 1, 1]). Fixed seed: the same command writes the same files.

    /usr/bin/python3 scripts/make_detection_dataset.py OUT_DIR [--train 4000] [--test 1000]
        [--size 96] [--seed 17]

Writes OUT_DIR/train.json, OUT_DIR/test.json (COCO: images, annotations with iscrowd 0 and area,
categories 1-10 with Fashion-MNIST's names) and OUT_DIR/images/{train,test}/NNNNNN.png, ready for
    mpicnn convert --format coco --input train=OUT_DIR/train.json,test=OUT_DIR/test.json \\
                   --images OUT_DIR/images --output canvas.h5
"""
import argparse
import gzip
import json
import os

import numpy as np
from PIL import Image

SOURCE = "/usr/share/datasets/fashion-mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(name):
    with gzip.open(os.path.join(SOURCE, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def make_canvas(rng, items, labels, size):
    canvas = np.zeros((size, size), np.uint8)
    boxes = []
    for _ in range(rng.integers(1, 7)):
        k = int(rng.integers(0, len(items)))
        side = int(round(28 * rng.uniform(0.6, 2.0)))
        item = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR))
        rows, cols = np.nonzero(item)
        if len(rows) == 0:
            continue
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], item)
        x1, y1 = x + int(cols.min()), y + int(rows.min())
        boxes.append(([x1, y1, x + int(cols.max()) + 1 - x1, y + int(rows.max()) + 1 - y1], int(labels[k]) + 1))
    return canvas, boxes


def write_split(rng, split, count, items, labels, out, size, first_annotation):
    os.makedirs(os.path.join(out, "images", split), exist_ok=True)
    images, annotations = [], []
    for n in range(count):
        canvas, boxes = make_canvas(rng, items, labels, size)
        file_name = f"{split}/{n + 1:06d}.png"
        Image.fromarray(canvas).save(os.path.join(out, "images", file_name))
        images.append({"id": n + 1, "file_name": file_name, "width": size, "height": size})
        for bbox, category in boxes:
            annotations.append({"id": first_annotation + len(annotations), "image_id": n + 1, "category_id": category,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(NAMES)]
    with open(os.path.join(out, f"{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return len(annotations)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if args.size < 56:
        parser.error(f"--size {args.size}: expected at least 56 (the largest item)")
    rng = np.random.default_rng(args.seed)
    boxes = write_split(rng, "train", args.train, read_idx("train-images-idx3-ubyte.gz"),
                        read_idx("train-labels-idx1-ubyte.gz"), args.out, args.size, 1)
    boxes += write_split(rng, "test", args.test, read_idx("t10k-images-idx3-ubyte.gz"),
                         read_idx("t10k-labels-idx1-ubyte.gz"), args.out, args.size, boxes + 1)
    print(f"wrote {args.out}: {args.train} train and {args.test} test canvases of {args.size}x{args.size}, {boxes} boxes")


if __name__ == "__main__":
    main()
