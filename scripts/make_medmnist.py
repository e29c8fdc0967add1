#!/usr/bin/python3
"""Writes a MedMNIST-layout .npz of a real MedMNIST dataset's shapes, for tests (the real data cannot be
downloaded here). The layout is the published one: keys train_images, val_images, test_images and
train_labels, val_labels, test_labels; images uint8 (N,H,W) grey, (N,H,W,3) RGB or (N,D,H,W) 3D;
labels uint8 (N,1) class indices, or (N,14) 0/1 for ChestMNIST. Pixels are noise with a bright block
whose place depends on the class (or on each positive label), so a small network can learn them.
The same name, size, counts and seed always give the same bytes.

    /usr/bin/python3 scripts/make_medmnist.py chestmnist --size 28 --counts 64,16,32 --output chest.npz
"""
import argparse
import sys

import numpy as np

# name: (channels 1 or 3, 3D?, label columns, classes per column, MedMNIST's task)
DATASETS = {
    "pathmnist": (3, False, 1, 9, "multi-class"),
    "chestmnist": (1, False, 14, 2, "multi-label, binary-class"),
    "dermamnist": (3, False, 1, 7, "multi-class"),
    "octmnist": (1, False, 1, 4, "multi-class"),
    "pneumoniamnist": (1, False, 1, 2, "binary-class"),
    "retinamnist": (3, False, 1, 5, "ordinal-regression"),
    "breastmnist": (1, False, 1, 2, "binary-class"),
    "bloodmnist": (3, False, 1, 8, "multi-class"),
    "tissuemnist": (1, False, 1, 8, "multi-class"),
    "organamnist": (1, False, 1, 11, "multi-class"),
    "organcmnist": (1, False, 1, 11, "multi-class"),
    "organsmnist": (1, False, 1, 11, "multi-class"),
    "organmnist3d": (1, True, 1, 11, "multi-class"),
    "nodulemnist3d": (1, True, 1, 2, "binary-class"),
    "adrenalmnist3d": (1, True, 1, 2, "binary-class"),
    "fracturemnist3d": (1, True, 1, 3, "multi-class"),
    "vesselmnist3d": (1, True, 1, 2, "binary-class"),
    "synapsemnist3d": (1, True, 1, 2, "binary-class"),
}
SIZES_2D, SIZES_3D = (28, 64, 128, 224), (28, 64)


def split(rng, name, size, count):
    channels, volume, columns, classes, _ = DATASETS[name]
    shape = (count,) + ((size,) * 3 if volume else (size, size)) + ((3,) if channels == 3 else ())
    images = rng.integers(0, 120, size=shape, dtype=np.int32)
    if columns == 1:
        labels = rng.integers(0, classes, size=(count, 1))
    else:
        labels = (rng.random((count, columns)) < 0.3).astype(np.int64)
    block = max(2, size // 4)
    for i in range(count):
        marks = [int(labels[i, 0])] if columns == 1 else [k for k in range(columns) if labels[i, k]]
        for k in marks:  # the class (or each positive label) brightens its own place
            r = (k * 5) % (size - block)
            c = (k * 3 + 1) % (size - block)
            if volume:
                images[i, r:r + block, c:c + block, r:r + block] += 120
            else:
                images[i, r:r + block, c:c + block] += 120
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("--size", type=int, default=28, help="28, 64, 128 or 224 (3D: 28 or 64)")
    parser.add_argument("--counts", default="64,16,32", help="train,val,test sample counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    o = parser.parse_args(argv)
    volume = DATASETS[o.name][1]
    if o.size not in (SIZES_3D if volume else SIZES_2D):
        parser.error(f"--size {o.size}: {o.name} comes in sizes {SIZES_3D if volume else SIZES_2D}")
    counts = [int(c) for c in o.counts.split(",")]
    if len(counts) != 3 or min(counts) < 1:
        parser.error(f"--counts {o.counts}: expected three positive counts train,val,test")
    rng = np.random.default_rng(o.seed)
    arrays = {}
    for name, count in zip(("train", "val", "test"), counts):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(rng, o.name, o.size, count)
    np.savez_compressed(o.output, **arrays)
    print(f"{o.output}: {o.name} layout ({DATASETS[o.name][4]}), " +
          ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
