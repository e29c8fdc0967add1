#!/usr/bin/python3
"""Two builds of our trainer, alternately: which is faster on the same training run?

  /usr/bin/python3 bench/ab.py BINARY_A BINARY_B [--rounds 6] [--ranks 1] [--threads 1] [--steps 150]

Each round runs A and B back to back on configs/fashion_mnist.ini with the data in memory, the side
that goes first alternating between rounds, and prints both rates (total images over total time of
the metrics records after the first), their final losses and the mean communication wait share;
then medians [min-max] and the median of the per-round B/A ratios. For judging a change on a
machine whose speed drifts: only ratios of runs taken side by side mean anything there.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(binary, args):
    out = tempfile.mkdtemp(prefix="mpicnn-ab-")
    command = [binary, "train", "--config", os.path.join(REPO, "configs/fashion_mnist.ini"),
               f"--data.path={os.path.join(REPO, 'data/fashion_mnist.h5')}", "--data.cache_mb=1024",
               "--data.eval_split=none", f"--train.max_steps={args.steps}", "--train.log_interval=30",
               "--train.progress=lines", f"--train.threads={args.threads}", "--output", out]
    if args.ranks > 1:
        command = ["mpirun", "-np", str(args.ranks)] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               MPICNN_THREADS=str(args.threads))
    try:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [r for r in map(json.loads, f) if r.get("kind") == "train"][1:]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not records:
        sys.exit(f"error: {binary}: no timed train records (raise --steps)")
    rate = len(records) / sum(1.0 / r["img_per_s"] for r in records)
    wait = statistics.median(r.get("comm_wait_share_mean", 0.0) for r in records)
    return rate, records[-1]["loss"], wait


def summary(values):
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    if args.steps < 60:
        parser.error("--steps must be at least 60 (the first 30-step record is skipped)")
    rates = {"A": [], "B": []}
    ratios = []
    for round_index in range(args.rounds):
        order = [("A", args.a), ("B", args.b)] if round_index % 2 == 0 else [("B", args.b), ("A", args.a)]
        results = {}
        for name, binary in order:
            results[name] = train(binary, args)
            rates[name].append(results[name][0])
        ratios.append(results["B"][0] / results["A"][0])
        print(f"round {round_index + 1}: " + "  ".join(
            f"{name} {rate:.0f} img/s (loss {loss:.6f}, wait {wait:.3f})"
            for name, (rate, loss, wait) in sorted(results.items())) + f"  B/A {ratios[-1]:.3f}", flush=True)
    print(f"A {summary(rates['A'])}  B {summary(rates['B'])}  B/A median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]")


if __name__ == "__main__":
    main()
