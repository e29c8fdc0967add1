#!/usr/bin/python3
"""Two builds of our trainer, alternately: which is faster on the same training run?

  /usr/bin/python3 bench/ab.py BUILD_A BUILD_B [--rounds 6] [--ranks 1] [--threads 1] [--steps 150]
                               [--a-arg=--train.OPTION=VALUE ...] [--b-arg=...]

BUILD_A and BUILD_B are build folders holding mpicnn (e.g. one of an older commit: git worktree add
../before <commit>, then cmake there). Each round runs A and B back to back as compare.py runs ours
(configs/fashion_mnist.ini, data in memory), the side that goes first alternating between rounds,
(with each side's --a-arg / --b-arg trainer options: one build against itself compares two
settings) and prints both rates, final losses and, at 2 ranks or more, the mean communication wait share;
then medians [min-max] and the median of the per-round B/A ratios. For judging a change on a
machine whose speed drifts: only ratios of runs taken side by side mean anything there.
"""
import argparse
import os
import shutil
import statistics
import tempfile

from compare import Ours, RunFailed


def trainer(build, extra_args, args, scratch):
    """compare.py's runner of our trainer, for the mpicnn in `build`."""
    return Ours(argparse.Namespace(build=os.path.abspath(build), config="configs/fashion_mnist.ini", steps=args.steps,
                                   log_interval=30, trainer_arg=extra_args, timeout=600, mpirun_always=False), scratch)


def summary(values):
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="build folder A")
    parser.add_argument("b", help="build folder B")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--a-arg", action="append", default=[], help="a trainer option for side A (repeatable)")
    parser.add_argument("--b-arg", action="append", default=[], help="a trainer option for side B (repeatable)")
    args = parser.parse_args()
    if args.steps < 60:
        parser.error("--steps must be at least 60 (the first 30-step record is skipped)")
    scratch = tempfile.mkdtemp(prefix="mpicnn-ab-")
    try:
        sides = {"A": trainer(args.a, args.a_arg, args, scratch), "B": trainer(args.b, args.b_arg, args, scratch)}
        rates, ratios = {"A": [], "B": []}, []
        for round_index in range(args.rounds):
            order = ["A", "B"] if round_index % 2 == 0 else ["B", "A"]
            results = {name: sides[name].train(args.ranks, args.threads) for name in order}
            for name in rates:
                rates[name].append(results[name]["img_per_s"])
            ratios.append(results["B"]["img_per_s"] / results["A"]["img_per_s"])
            cells = []
            for name in ("A", "B"):
                r = results[name]
                wait = r["comm_wait_share_mean"]
                cells.append(f"{name} {r['img_per_s']:.0f} img/s (loss {r['loss']:.6f}"
                             + (f", wait {wait:.3f})" if args.ranks > 1 and wait is not None else ")"))
            print(f"round {round_index + 1}: {'  '.join(cells)}  B/A {ratios[-1]:.3f}", flush=True)
    except RunFailed as e:
        raise SystemExit(f"error: {e}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"A {summary(rates['A'])}  B {summary(rates['B'])}  B/A median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]")


if __name__ == "__main__":
    main()
