#!/usr/bin/python3
"""Memory of train.classifier = sharded per rank (README "The sharded classifier"): 100,000
identities x 512 dimensions behind a small backbone, a few steps of ArcFace with Adam on 1, 2 and
4 ranks; prints each rank's classifier weights and optimizer state (from the start line) and its
peak RSS (GNU time's %M around every rank). Not a test: it takes minutes and about 2 GB per run.

    /usr/bin/python3 bench/sharded_memory.py [--build build] [--ranks 1,2,4] [--steps 2] [--classifier sharded]
"""
import argparse
import os
import re
import subprocess
import tempfile

import h5py
import numpy as np

IDENTITIES, DIM = 100_000, 512


def make_dataset(path, samples=64):
    rng = np.random.default_rng(18)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "mpicnn-dataset"
        f.attrs["format_version"] = 1
        f.attrs["num_classes"] = IDENTITIES
        f.attrs["mean"] = np.array([0.5])
        f.attrs["std"] = np.array([0.25])
        train = f.create_group("train")
        train.create_dataset("images", data=rng.integers(0, 256, (samples, 1, 12, 12), dtype=np.uint8))
        train.create_dataset("labels", data=rng.integers(0, IDENTITIES, samples, dtype=np.int32))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--classifier", default="sharded", help="replicated: the same run with the whole matrix per rank")
    args = parser.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "ids.h5")
        make_dataset(data)
        for ranks in [int(r) for r in args.ranks.split(",")]:
            command = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), "/usr/bin/time", "-f",
                       "peak_rss_kb %M", os.path.join(args.build, "mpicnn"), "train", "--data.path=" + data,
                       f"--model.spec=conv(8,3) relu maxpool(2) flatten dense({DIM}) cosine({IDENTITIES})",
                       "--loss.kind=arcface", "--train.classifier=" + args.classifier, "--data.eval_split=none",
                       "--optimizer.name=adam", "--optimizer.lr=0.001", "--train.batch_size=16",
                       "--train.micro_batch=8", "--train.threads=1", "--train.progress=lines",
                       f"--train.max_steps={args.steps}", "--output", os.path.join(work, f"run{ranks}")]
            out = subprocess.run(command, env=env, capture_output=True, text=True)
            text = out.stdout + out.stderr
            if out.returncode != 0:
                raise SystemExit(text)
            state = re.search(r"state (\d+) bytes", text)
            peaks = sorted(int(kb) for kb in re.findall(r"peak_rss_kb (\d+)", text))
            held = f"classifier weights + Adam state {int(state.group(1)) / 1e6:.1f} MB per rank; " if state else ""
            print(f"{ranks} ranks, {args.classifier}: {held}"
                  f"peak RSS per rank {', '.join(f'{kb / 1024:.0f}' for kb in peaks)} MB")


if __name__ == "__main__":
    main()
