#!/usr/bin/python3
"""mpicnn against PyTorch on the MedMNIST "(28)" ResNet-18, same run, alternating.

The network (issue 15's closing figure; issue 20 sets the targets): a 3x3 stride-1 pad-1 stem (64, no
bias) + bn + relu, no max pool, BasicBlocks [2,2,2,2] at 64/128/256/512 (1x1 stride-2 convolution +
bn shortcuts where the shape changes), global average pooling, dense(9); input 3x28x28, global batch
64, SGD momentum 0.9. Ours: `mpicnn train` with the spec below (--model.init=resnet); PyTorch:
bench/torch_resnet.py (torchvision's resnet18 with that stem and nn.Identity for the max pool).

In each round, for each configuration,

  1x1  1 process x 1 thread     ours vs torch.set_num_threads(1)
  1x2  1 process x 2 threads    ours vs torch.set_num_threads(2)
  2x1  2 ranks x 1 thread       `mpirun -np 2` (one core per rank) vs DDP over gloo, 2 processes x 1 thread

three runs go back to back: ours with train.reduction=exact (BatchNorm over micro-batches of 16),
PyTorch, ours with reduction=fast (BatchNorm over each rank's batch, as PyTorch's), the two ours
swapping places every round, so that each of ours and PyTorch goes first in every other round.

Rates: both sides train --warmup steps, then --steps measured steps, from the same data in memory
(our --data.cache_mb; the reference holds the set as a tensor). Ours: one metrics.jsonl record per
step (train.log_interval=1), the first --warmup records skipped (the first also holds start-up),
images over the records' time; PyTorch: the same steps timed with perf_counter. Also images per
CPU-second (process 0's CPU time over the measured steps, all its threads, times the process
count): on a machine others share, wall-clock rates move with their load, CPU time much less (at
2 threads and 2 ranks it includes spin-waiting, so it is a cross-check at 1x1 above all).
Peak RSS: ru_maxrss of the largest process of each launch (os.wait4 on the launcher: mpirun and
its ranks, or python and its DDP workers), the same measure on both sides.

Prints medians [min-max] over rounds and the median of the per-round paired ratios ours/PyTorch
(issue 20's target: >= 1.3x), our 2x1 over our 1x1 of the same round (target >= 1.85x), RSS, the
final losses and the load average. --probe-torch instead runs only PyTorch in its variants
(NCHW/channels_last, glibc malloc default/tuned, DDP processes pinned or not), alternating, to choose
its best settings per configuration (TORCH_BEST below, from such a probe here), which the comparison
uses unless --torch-channels-last, --torch-malloc or --torch-bind say otherwise.

Data: a generated MedMNIST-layout .npz (2048 RGB 28x28 train images of 9 classes: full batches of
64 and micro-batches of 16; val and test 256 each), converted by `mpicnn convert --format npz` to
data/resnet18_28_synthetic.h5 when missing; both sides read that HDF5 file.

  /usr/bin/python3 bench/resnet_bench.py [--rounds 3] [--only 1x1,1x2,2x1] [--reductions exact,fast]
                                         [--warmup 1] [--steps 4] [--json out.json]
  /usr/bin/python3 bench/resnet_bench.py --probe-torch [--rounds 3]
"""
import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from compare import ROOT_ENV, RunFailed, fmt, log, summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 9
DATA = "data/resnet18_28_synthetic.h5"
# glibc malloc tuned as issue 20 measured for PyTorch: large blocks stay on the heap instead of
# being mapped and unmapped (page faults) on every step.
TUNED_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
CONFIGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # processes, threads per process
# PyTorch's best settings per configuration from --probe-torch here (bench/README.md): (channels_last,
# malloc, pin DDP processes). Differences between the variants were within the machine's noise
# except at 1x1, where channels_last with tuned malloc did the most images per CPU-second (+12%).
TORCH_BEST = {"1x1": (True, "tuned", False), "1x2": (False, "tuned", False), "2x1": (True, "tuned", True)}


def basic_block(channels, downsample):
    stride = ",stride=2" if downsample else ""
    main = (f"conv({channels},3{stride},pad=1,bias=false) bn relu conv({channels},3,pad=1,bias=false) bn")
    shortcut = f" | conv({channels},1,stride=2,bias=false) bn" if downsample else ""
    return f"residual{{{main}{shortcut}}} relu"


def resnet18_28_spec(classes=CLASSES):
    blocks = ["conv(64,3,pad=1,bias=false) bn relu", "repeat(2){" + basic_block(64, False) + "}"]
    for channels in (128, 256, 512):
        blocks += [basic_block(channels, True), basic_block(channels, False)]
    return " ".join(blocks + ["globalavgpool flatten", f"dense({classes})"])


LOADS = []


def launch(command, timeout, env=None):
    """(stdout, peak RSS in MB of the largest process of the launch): wait4 reports the child's
    ru_maxrss including its waited-for descendants (mpirun's ranks, the DDP workers)."""
    LOADS.append(os.getloadavg()[0])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # its own session, so that a timeout ends the whole launch (DDP workers, mpirun's ranks)
        process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=out, stderr=err,
                                   text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                os.wait4(process.pid, 0)
                raise RunFailed(f"timed out after {timeout}s: {' '.join(command)}")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-8:])
        raise RunFailed(f"exit status {process.returncode}: {' '.join(command)}\n{tail}")
    return stdout, usage.ru_maxrss / 1024.0


def ensure_data(binary, path):
    """Writes a MedMNIST-layout .npz (keys {train,val,test}_{images,labels}, images (N,28,28,3) uint8,
    labels (N,1)) and converts it with `mpicnn convert --format npz`. Each class is a disc of its own
    colour and radius at a random place on noise: learnable, so both losses fall as in real training."""
    if os.path.exists(path):
        return
    import numpy as np
    rng = np.random.default_rng(15)
    rows, cols = np.mgrid[0:28, 0:28]

    def split(count):
        labels = rng.integers(0, CLASSES, count)
        images = np.empty((count, 28, 28, 3), np.uint8)
        for i, label in enumerate(labels):
            cy, cx = rng.uniform(7, 21, 2)
            disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= (3 + 2 * (label % 3)) ** 2
            image = rng.normal(90, 30, (28, 28, 3))
            colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float64)
            image[disc] = 0.6 * colour + 0.4 * image[disc]
            images[i] = np.clip(image, 0, 255)
        return images, labels.astype(np.uint8).reshape(-1, 1)

    arrays = {}
    for name, count in (("train", 2048), ("val", 256), ("test", 256)):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(count)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        npz = os.path.join(scratch, "resnet18_28_synthetic.npz")
        np.savez_compressed(npz, **arrays)
        log(f"converting a generated MedMNIST-layout {npz} to {path}")
        launch([binary, "convert", "--format", "npz", "--layout", "channels_last", "--input", npz, "--output", path], 300)


class Ours:
    def __init__(self, args, scratch):
        self.args, self.scratch, self.count = args, scratch, 0
        self.binary = os.path.join(REPO, args.build, "mpicnn")
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"error: {self.binary} not found: build first (cmake --build {args.build} --target mpicnn)")
        self.mpirun = shutil.which("mpirun")

    def train(self, processes, threads, reduction, spec=None, data=None, launcher=None):
        """One training run (ResNet-18 (28) on --data unless `spec` and `data` say otherwise). `launcher`,
        when given, turns the trainer's command into the launch of `processes` ranks (bench/two_nodes.py)."""
        self.count += 1
        out = os.path.join(self.scratch, f"ours-{self.count}")
        steps = self.args.warmup + self.args.steps
        command = [self.binary, "train", f"--data.path={data or self.args.data}", "--data.eval_split=none",
                   "--data.cache_mb=1024", f"--model.spec={spec or resnet18_28_spec()}", "--model.init=resnet",
                   "--optimizer.name=sgd", f"--optimizer.lr={self.args.lr}", "--optimizer.momentum=0.9",
                   f"--train.batch_size={self.args.batch}", f"--train.max_steps={steps}", "--train.log_interval=1",
                   f"--train.threads={threads}", f"--train.reduction={reduction}", "--train.progress=lines",
                   "--output", out, *self.args.trainer_arg]
        env = {"MPICNN_THREADS": str(threads)}
        if launcher:
            command = launcher(command)
            env.update(ROOT_ENV if os.geteuid() == 0 else {})
        elif processes > 1:
            if not self.mpirun:
                raise RunFailed("mpirun not found (apt-get install openmpi-bin)")
            command = [self.mpirun, "-np", str(processes)] + command
            if os.geteuid() == 0:
                env.update(ROOT_ENV)
        _, rss = launch(command, self.args.timeout, env)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [r for r in map(json.loads, f) if r.get("kind") == "train"]
        shutil.rmtree(out, ignore_errors=True)
        if len(records) != steps:
            raise RunFailed(f"{len(records)} train records for {steps} steps in {out}")
        timed = records[self.args.warmup:]  # one record per step; the first also holds start-up
        images = self.args.batch * len(timed)
        seconds = sum(self.args.batch / r["img_per_s"] for r in timed)
        cpu = timed[-1]["cpu_s"] - records[self.args.warmup - 1]["cpu_s"] if self.args.warmup else None
        return {"img_per_s": images / seconds, "cpu_img_per_s": images / (cpu * processes) if cpu else None,
                "peak_rss_mb": rss, "peak_rss_mb_rank0": max(r["peak_rss_mb"] for r in records),
                "loss": timed[-1]["loss"],
                "comm_wait_share": statistics.median(r.get("comm_wait_share", 0.0) for r in timed)}


class Torch:
    def __init__(self, args):
        self.args = args

    def settings(self, name):
        """(channels_last, malloc, bind) for a configuration: the probed best unless the options say."""
        best = TORCH_BEST[name]
        return tuple(best[i] if given is None else given
                     for i, given in enumerate((self.args.torch_channels_last, self.args.torch_malloc, self.args.torch_bind)))

    def train(self, processes, threads, channels_last, malloc, bind):
        command = [self.args.torch_python, os.path.join(REPO, "bench", "torch_resnet.py"), "--data", self.args.data,
                   "--processes", str(processes), "--threads", str(threads), "--batch-size", str(self.args.batch),
                   "--warmup", str(self.args.warmup), "--measure-steps", str(self.args.steps), "--lr", str(self.args.lr)]
        command += ["--channels-last"] if channels_last else []
        command += ["--bind"] if bind and processes > 1 else []
        env = {"GLIBC_TUNABLES": TUNED_MALLOC} if malloc == "tuned" else {}
        stdout, rss = launch(command, self.args.timeout, env)
        result = json.loads(stdout.strip().splitlines()[-1])
        images = self.args.batch * self.args.steps
        return {"img_per_s": result["img_per_s"], "cpu_img_per_s": images / (result["cpu_s"] * processes),
                "peak_rss_mb": rss, "peak_rss_mb_own": result["peak_rss_mib_per_process"], "loss": result["loss"]}


def attempt(failures, label, function):
    try:
        return function()
    except (RunFailed, OSError, ValueError, KeyError, ZeroDivisionError) as e:
        failures.append(f"{label}: {e}")
        log(f"  {label} FAILED: {str(e).splitlines()[0]}")
        return None


def ratio(a, b, key="img_per_s"):
    return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def torch_label(channels_last, malloc, bind=False):
    return f"{'channels_last' if channels_last else 'NCHW'}, malloc {malloc}" + (", pinned" if bind else "")


def probe_torch(args, wanted):
    """PyTorch alone in each of its variants, the order rotating every round: which is fastest here."""
    torch, failures, results = Torch(args), [], {}
    started = time.monotonic()
    for rnd in range(args.rounds):
        log(f"probe round {rnd + 1}/{args.rounds}, {time.monotonic() - started:.0f}s")
        for name in wanted:
            processes, threads = CONFIGS[name]
            variants = list(itertools.product((False, True), ("default", "tuned"), (False, True) if processes > 1 else (False,)))
            shift = rnd % len(variants)
            for channels_last, malloc, bind in variants[shift:] + variants[:shift]:
                key = (name, torch_label(channels_last, malloc, bind))
                result = attempt(failures, f"torch {key}",
                                 lambda: torch.train(processes, threads, channels_last, malloc, bind))
                results.setdefault(key, []).append(result)
                if result:
                    log(f"  {name} {key[1]}: {result['img_per_s']:.1f} img/s, {result['cpu_img_per_s']:.1f} img/CPU-s")
    rows = []
    for (name, label), samples in results.items():
        ok = [s for s in samples if s]
        rows.append((name, label, fmt(summary([s["img_per_s"] for s in ok]), 1),
                     fmt(summary([s["cpu_img_per_s"] for s in ok]), 1), fmt(summary([s["peak_rss_mb"] for s in ok]), 0, " MB")))
    print(f"\nPyTorch ResNet-18 (28) variants, batch {args.batch}, {args.warmup} warm-up + {args.steps} measured steps, "
          f"{args.rounds} rounds; median [min-max]\n")
    table(rows, ("config", "variant", "img/s", "img per CPU-s", "peak RSS"))
    print_footer(started, failures)
    return 1 if failures else 0


def print_footer(started, failures):
    if LOADS:
        print(f"\nload average before the runs: median {statistics.median(LOADS):.1f} "
              f"[{min(LOADS):.1f}-{max(LOADS):.1f}] on {os.cpu_count()} cores")
    print(f"{time.monotonic() - started:.0f}s")
    if failures:
        print(f"\n{len(failures)} run(s) failed:")
        for f in failures:
            print("  " + f.replace("\n", "\n    "))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="build folder holding mpicnn (default: build)")
    parser.add_argument("--data", default=DATA, help=f"HDF5 dataset (default {DATA}, generated when missing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="1x1,1x2,2x1", help="comma-separated subset of 1x1,1x2,2x1")
    parser.add_argument("--reductions", default="exact,fast", help="our train.reduction values (default exact,fast)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the measured ones (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (default 4)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per run (default 900)")
    parser.add_argument("--torch-python", default="/usr/bin/python3", help="interpreter that imports torch")
    parser.add_argument("--torch-channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="PyTorch in NHWC or NCHW in every configuration (default: the probed best of each)")
    parser.add_argument("--torch-malloc", choices=("default", "tuned"), default=None,
                        help=f"glibc malloc for PyTorch: tuned = GLIBC_TUNABLES={TUNED_MALLOC} (default: probed best)")
    parser.add_argument("--torch-bind", action=argparse.BooleanOptionalAction, default=None,
                        help="pin DDP process r to cpu r, as mpirun binds our ranks (default: probed best)")
    parser.add_argument("--trainer-arg", action="append", default=[], help="extra option for our trainer (repeatable)")
    parser.add_argument("--probe-torch", action="store_true", help="only PyTorch, in each of its variants")
    parser.add_argument("--json", help="write every sample and the summary to this file")
    args = parser.parse_args()
    wanted = [c for c in CONFIGS if c in args.only.split(",")]
    if not wanted or set(args.only.split(",")) - set(CONFIGS):
        parser.error(f"--only: choose from {', '.join(CONFIGS)}")
    reductions = args.reductions.split(",")
    if set(reductions) - {"exact", "fast"} or not reductions:
        parser.error("--reductions: exact, fast or both")
    if args.warmup < 1 or args.steps < 1 or args.batch % 2:
        parser.error("--warmup and --steps must be >= 1 (the first record holds start-up), --batch even")
    binary = os.path.join(REPO, args.build, "mpicnn")
    if not os.path.isabs(args.data):
        args.data = os.path.join(REPO, args.data)
    ensure_data(binary, args.data)
    if args.probe_torch:
        return probe_torch(args, wanted)

    scratch = tempfile.mkdtemp(prefix="mpicnn-resnet-")
    ours, torch, failures = Ours(args, scratch), Torch(args), []
    samples = {(c, side): [] for c in wanted for side in reductions + ["torch"]}
    started = time.monotonic()
    try:
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}, {time.monotonic() - started:.0f}s")
            order = reductions[:1] + ["torch"] + reductions[1:]
            if rnd % 2:
                order.reverse()
            for name in wanted:
                processes, threads = CONFIGS[name]
                for side in order:
                    if side == "torch":
                        result = attempt(failures, f"torch {name}",
                                         lambda: torch.train(processes, threads, *torch.settings(name)))
                    else:
                        result = attempt(failures, f"ours {name} {side}", lambda: ours.train(processes, threads, side))
                    samples[(name, side)].append(result)
                    if result:
                        log(f"  {name} {side}: {result['img_per_s']:.1f} img/s, {result['cpu_img_per_s']:.1f} img/CPU-s, "
                            f"{result['peak_rss_mb']:.0f} MB, loss {result['loss']:.4f}")
    except KeyboardInterrupt:
        log("interrupted: summarising what ran")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def values(key, field="img_per_s"):
        return [s[field] if s else None for s in samples.get(key, [])]

    def paired(a, b, field="img_per_s"):
        return summary([x / y if x and y else None for x, y in zip(values(a, field), values(b, field))])

    names = {"1x1": "1 process x 1 thread", "1x2": "1 process x 2 threads", "2x1": "2 ranks x 1 thread"}
    torch_names = {"1x1": "torch 1 thread", "1x2": "torch 2 threads", "2x1": "torch DDP gloo 2x1"}
    rows = []
    for field, unit in (("img_per_s", "img/s"), ("cpu_img_per_s", "img per CPU-s")):
        for name in wanted:
            for reduction in reductions:
                r = paired((name, reduction), (name, "torch"), field)
                verdict = ("meets" if r and r["median"] >= 1.3 else "MISSES") if field == "img_per_s" and r else ""
                rows.append((f"{names[name]}, {reduction}, vs {torch_names[name]}", unit,
                             fmt(summary(values((name, reduction), field)), 1),
                             fmt(summary(values((name, "torch"), field)), 1), fmt(r, 2, "x"),
                             f">= 1.3x {verdict}" if verdict else ""))
        if "1x1" in wanted and "2x1" in wanted:
            for reduction in reductions:
                r = paired(("2x1", reduction), ("1x1", reduction), field)
                verdict = ("meets" if r and r["median"] >= 1.85 else "MISSES") if field == "img_per_s" and r else ""
                rows.append((f"2 ranks x 1 thread, {reduction}, vs our 1x1 {reduction}", unit,
                             fmt(summary(values(("2x1", reduction), field)), 1),
                             fmt(summary(values(("1x1", reduction), field)), 1), fmt(r, 2, "x"),
                             f">= 1.85x {verdict}" if verdict else ""))
            r = paired(("2x1", "torch"), ("1x1", "torch"), field)
            rows.append(("torch DDP 2x1 vs torch 1 thread", unit, fmt(summary(values(("2x1", "torch"), field)), 1),
                         fmt(summary(values(("1x1", "torch"), field)), 1), fmt(r, 2, "x"), ""))
    print(f"\nmpicnn vs PyTorch, ResNet-18 (28), 3x28x28, global batch {args.batch}, {args.warmup} warm-up + "
          f"{args.steps} measured steps per run, {args.rounds} alternating rounds; median [min-max] over rounds; "
          "ratio = median of the per-round paired ratios\n")
    table(rows, ("configuration", "rate", "ours", "reference", "ratio", "target"))
    print("\nPyTorch settings: " + "; ".join(f"{name} {torch_label(*torch.settings(name))}" for name in wanted) +
          "; torch.set_num_threads = our threads per process\n")
    rss_rows = []
    for name in wanted:
        for side in reductions + ["torch"]:
            ok = [s for s in samples[(name, side)] if s]
            label = f"{names[name]}, ours {side}" if side != "torch" else torch_names[name]
            rss_rows.append((label, fmt(summary([s["peak_rss_mb"] for s in ok]), 0, " MB"),
                             fmt(summary([s["loss"] for s in ok]), 4)))
    table(rss_rows, ("run", "peak RSS, largest process", f"loss at step {args.warmup + args.steps}"))
    print_footer(started, failures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "samples": {f"{k[0]} {k[1]}": v for k, v in samples.items()},
                       "rows": rows, "rss": rss_rows, "failures": failures, "load_averages": LOADS}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
