#!/usr/bin/env python3
"""Writes a small regression dataset in the mpicnn format (datasets/README.md): 32x32 grey images
of one bright disc on noise, with targets (radius, centre row, centre column) scaled to [0, 1].
Usage: /usr/bin/python3 scripts/make_disc_dataset.py OUTPUT.h5 [TRAIN_COUNT] [TEST_COUNT]"""
import sys

import h5py
import numpy as np


def make_split(rng, count, size=32):
    rows, cols = np.mgrid[0:size, 0:size]
    images = np.empty((count, 1, size, size), np.uint8)
    targets = np.empty((count, 3), np.float32)
    for i in range(count):
        radius = rng.uniform(3, 10)
        cy, cx = rng.uniform(radius, size - radius, 2)
        disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
        image = rng.normal(40, 20, (size, size)) + 150 * disc
        images[i, 0] = np.clip(image, 0, 255).astype(np.uint8)
        targets[i] = (radius / 10, cy / size, cx / size)
    return images, targets


def main():
    path = sys.argv[1]
    train_count = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    test_count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        for split, count in (("train", train_count), ("test", test_count)):
            images, targets = make_split(rng, count)
            group = f.create_group(split)
            group.create_dataset("images", data=images, chunks=(min(256, count), 1, 32, 32), compression="gzip")
            group.create_dataset("targets", data=targets)
            if split == "train":
                pixels = images.astype(np.float64) / 255
                f.attrs["mean"] = np.array([pixels.mean()])
                f.attrs["std"] = np.array([pixels.std()])
        f.attrs["format"] = "mpicnn-dataset"
        f.attrs["format_version"] = 1
        f.attrs["num_classes"] = 0
    print(f"wrote {path}: {train_count} train, {test_count} test discs")


if __name__ == "__main__":
    main()
