#!/usr/bin/env python3
"""A recipe in configs/ still parses and trains: one step of CONFIG on a small generated file of the
layout it expects (random uint8 images of C,H,W with labels below CLASSES, converted with
`mpicnn convert --format npz`), then `mpicnn embed` on that run when the config's task has embeddings.
Fails when a key was renamed or removed, a layer spec no longer parses, or the layout does not fit.
--default_run_folder trains as the config's header says, without --output, from WORK_DIR, and
expects the run in WORK_DIR/runs/<config name>, the documented default.

  config_one_step.py MPICNN_EXE CONFIG WORK_DIR --shape C,H,W --classes N [--embed] [--default_run_folder]
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np


def run(command, cwd=None):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("exe")
    parser.add_argument("config")
    parser.add_argument("work")
    parser.add_argument("--shape", required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--embed", action="store_true")
    parser.add_argument("--default_run_folder", action="store_true")
    a = parser.parse_args()
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    channels, height, width = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(18)

    def split(count):
        images = rng.integers(0, 256, size=(count, height, width, channels), dtype=np.uint8)
        labels = np.arange(count) % a.classes  # every class present
        return (images[..., 0] if channels == 1 else images), labels[:, None]

    train_images, train_labels = split(4 * a.classes * 4)
    test_images, test_labels = split(4 * a.classes)
    npz = os.path.join(a.work, "small.npz")
    np.savez(npz, train_images=train_images, train_labels=train_labels,
             test_images=test_images, test_labels=test_labels)
    data = os.path.join(a.work, "small.h5")
    run([a.exe, "convert", "--format", "npz", "--input", npz, "--output", data])
    train = [os.path.abspath(a.exe), "train", "--config", os.path.abspath(a.config), "--data.path", data,
             "--train.max_steps", 1, "--train.threads", 1]
    if a.default_run_folder:
        out = os.path.join(a.work, "runs", os.path.splitext(os.path.basename(a.config))[0])
        shutil.rmtree(out, ignore_errors=True)  # a checkpoint left by an earlier run would be resumed
        run(train, cwd=a.work)
    else:
        out = os.path.join(a.work, "run")
        run(train + ["--output", out])
    if not os.path.isdir(out) or not any(name.startswith("ckpt-") for name in os.listdir(out)):
        sys.exit(f"FAILED: no checkpoint in {out} after one step")
    if a.embed:
        print(run([a.exe, "embed", "--checkpoint", out, "--data", data,
                   "--output", os.path.join(a.work, "embeddings.h5")]).strip())
    print(f"{os.path.basename(a.config)}: one step on {a.shape} x {a.classes} classes passed")


if __name__ == "__main__":
    main()
