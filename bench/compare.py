#!/usr/bin/python3
"""mpicnn against PyTorch, same model, batch and thread count, run alternately.

Runs our trainer (build/mpicnn train) and the PyTorch references (bench/torch_reference.py,
bench/torch_ddp.py) in rounds; inside a round each configuration runs ours and PyTorch's back to
back, the side that goes first alternating between rounds, so that a change in the machine's load
hits both. Prints medians, ranges and paired ratios for:

  1x1   1 process x 1 thread       ours vs torch (1 thread)                    target >= 1.3
  1x2   1 process x 2 threads      ours vs torch (2 threads)                   target >= 1.3
  2x1   2 ranks x 1 thread         ours vs our 1x1 (same round)                target >= 1.85
                                   ours vs torch DDP/gloo 2x1                  target >= 1.3
Next to the 2x1 runs, two ceilings the machine sets: two unrelated 1x1 trainings at once, one per
core (what the cores give together), and bench/lockstep_bench at 1 and 2 ranks (fixed arithmetic
per step and a one-number allreduce: what any synchronous 2-rank job can get while the machine
runs one core slower than the other for a while); our 2x1 scaling is also given over the latter.
And, once per round for a few rounds: HDF5 streaming (no cache) against in-memory data at 2 ranks x
1 thread (no core left for the prefetch thread: the hard case; target >= 0.97), the
communication wait share at 2 ranks, peak RSS per rank, and at the end a 4-rank oversubscribed run
whose loss must equal a 1-rank run's (the exact gradient sum makes them bitwise the same).

Our throughput is taken from the "train" records of metrics.jsonl (the first record is warm-up and
skipped; the rest are combined as total images over total time). Data are in memory on both sides
(--data.cache_mb for ours; the references hold the whole set as a tensor).

Run from anywhere with Debian's python (torch lives there):  /usr/bin/python3 bench/compare.py
--torch-arg=--channels-last runs PyTorch in its NHWC layout, faster on CPU than its default NCHW.
Default settings take about 6-9 minutes. --quick: 2 rounds, fewer steps. --json FILE saves all samples.
"""
import argparse
import configparser
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


class RunFailed(RuntimeError):
    pass


def log(message):
    print(message, file=sys.stderr, flush=True)


LOADS = []  # 1-minute load average before every run: how busy the machine was


def run(command, timeout, env=None):
    """stdout of `command`; raises RunFailed with the tail of its output on failure or timeout."""
    LOADS.append(os.getloadavg()[0])
    full_env = dict(os.environ, **(env or {}))
    try:
        done = subprocess.run(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RunFailed(f"timed out after {timeout}s: {' '.join(command)}") from e
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise RunFailed(f"exit status {done.returncode}: {' '.join(command)}\n{tail}")
    return done.stdout


class Ours:
    """Our trainer: one run = one output folder, throughput from its metrics.jsonl."""

    def __init__(self, args, scratch):
        self.args, self.scratch, self.count = args, scratch, 0
        self.binary = os.path.join(REPO, args.build, "mpicnn")
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"error: {self.binary} not found: build first (cmake --build {args.build} --target mpicnn)")
        self.ensure_data()
        help_text = run([self.binary, "train", "--help"], 60)
        # The key that turns evaluation off moved between versions; use whichever this build knows.
        self.no_eval = ["--data.eval_split=none"] if "data.eval_split" in help_text else ["--train.eval_split="]
        self.mpirun = shutil.which("mpirun")

    def ensure_data(self):
        """Converts Debian's Fashion-MNIST to the quick start's data file when the config names it
        and it is missing (as scripts/quickstart.sh does): the benchmark then also runs on a machine
        that has only run the tests."""
        config = configparser.ConfigParser()
        config.read(os.path.join(REPO, self.args.config))
        relative = config.get("data", "path", fallback="")
        path = os.path.join(REPO, relative)
        if relative != "data/fashion_mnist.h5" or os.path.exists(path):
            return
        log(f"converting Fashion-MNIST to {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        run([self.binary, "convert", "--format", "idx", "--input", "/usr/share/datasets/fashion-mnist", "--output", path,
             "--names", "fashion-mnist"], 300)

    def command(self, threads, cache, steps, extra=()):
        """The trainer's command line and its output folder."""
        self.count += 1
        out = os.path.join(self.scratch, f"ours-{self.count}")
        command = [self.binary, "train", "--config", self.args.config, f"--data.cache_mb={1024 if cache else 0}",
                   f"--train.max_steps={steps or self.args.steps}", f"--train.log_interval={self.args.log_interval}",
                   *self.no_eval, "--train.progress=lines", f"--train.threads={threads}", "--output", out,
                   *self.args.trainer_arg, *extra]
        return command, out

    def train(self, ranks=1, threads=1, cache=True, steps=None, oversubscribe=False, extra=()):
        command, out = self.command(threads, cache, steps, extra)
        env = {"MPICNN_THREADS": str(threads)}
        if ranks > 1 or self.args.mpirun_always:
            if not self.mpirun:
                raise RunFailed("mpirun not found (apt-get install openmpi-bin)")
            launcher = [self.mpirun, "-np", str(ranks)] + (["--oversubscribe"] if oversubscribe else [])
            command = launcher + command
            if os.geteuid() == 0:
                env.update(ROOT_ENV)
        started = time.monotonic()
        run(command, self.args.timeout, env)
        result = self.result(out)
        result["wall_s"] = time.monotonic() - started
        return result

    def independent_pair(self):
        """Two unrelated 1-rank, 1-thread trainings at once, one pinned to each core: what the two
        cores give together when nothing is shared but the machine (the ceiling for 2x1)."""
        (first, out_a), (second, out_b) = self.command(1, True, None), self.command(1, True, None)
        script = 'taskset -c 0 "${@:2:$1}" & a=$!; taskset -c 1 "${@:$(($1 + 2))}" & b=$!; wait $a && wait $b'
        run(["bash", "-c", script, "pair", str(len(first)), *first, *second], self.args.timeout, {"MPICNN_THREADS": "1"})
        a, b = self.result(out_a), self.result(out_b)
        return {"img_per_s": a["img_per_s"] + b["img_per_s"], "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"])}

    def result(self, out):
        records = []
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                if record.get("kind") == "train":
                    records.append(record)
        shutil.rmtree(out, ignore_errors=True)
        if len(records) < 2:
            raise RunFailed(f"only {len(records)} train record(s) in {out}: raise --steps or lower --log-interval")
        timed = records[1:]  # the first window holds start-up and warm-up
        # Every window has log_interval steps of the same global batch: total images / total time.
        rate = len(timed) / sum(1.0 / r["img_per_s"] for r in timed)
        return {"img_per_s": rate, "comm_wait_share": statistics.median(r.get("comm_wait_share", 0.0) for r in timed),
                "comm_wait_share_mean": (statistics.median(r["comm_wait_share_mean"] for r in timed)
                                         if all("comm_wait_share_mean" in r for r in timed) else None),
                "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in records), "loss": records[-1].get("loss"),
                "steps": records[-1].get("global_step")}


class Lockstep:
    """bench/lockstep_bench: the reference CNN's forward and backward passes of 4 micro-batches of
    16 per step split over the ranks, then an allreduce of one number. Its 2-rank against 1-rank
    rate is what this machine allows a synchronous trainer of this model in the same minutes (its
    loss below 2x is one core running slower than the other for a while); our trainer adds the
    gradient sum, the optimizer and the reader to it."""

    def __init__(self, args):
        self.args = args
        self.binary = os.path.join(REPO, args.build, "bench", "lockstep_bench")
        self.mpirun = shutil.which("mpirun")
        if not os.access(self.binary, os.X_OK):
            log(f"note: {self.binary} not built: the lockstep ceiling is not measured "
                f"(cmake --build {args.build} --target lockstep_bench)")
            self.binary = None

    def run(self, ranks):
        if not self.mpirun:
            raise RunFailed("mpirun not found (apt-get install openmpi-bin)")
        env = ROOT_ENV if os.geteuid() == 0 else {}
        command = [self.mpirun, "-np", str(ranks), "--bind-to", "core", self.binary, "--work", "model", "--steps", "250"]
        result = json.loads(run(command, self.args.timeout, env).strip().splitlines()[-1])
        return {"img_per_s": result["img_per_s"], "wait_share_mean": result["wait_share_mean"]}


class Torch:
    def __init__(self, args):
        self.args = args
        self.python = args.torch_python

    def single(self, threads):
        out = run([self.python, os.path.join(REPO, "bench", "torch_reference.py"), "--threads", str(threads),
                   "--measure-steps", str(self.args.torch_steps), "--warmup", "10", *self.args.torch_arg],
                  self.args.timeout)
        result = json.loads(out.strip().splitlines()[-1])
        return {"img_per_s": result["img_per_s"], "peak_rss_mb": result["peak_rss_mib"]}

    def ddp(self, processes, threads):
        out = run([self.python, os.path.join(REPO, "bench", "torch_ddp.py"), "--processes", str(processes),
                   "--threads", str(threads), "--measure-steps", str(self.args.torch_steps), "--warmup", "10",
                   *self.args.torch_arg], self.args.timeout)
        result = json.loads(out.strip().splitlines()[-1])
        return {"img_per_s": result["img_per_s"], "peak_rss_mb": result["peak_rss_mib_per_process"]}


def pair(first, second, swap):
    """Runs two callables back to back, in the given or the swapped order; returns both results."""
    if swap:
        b = second()
        a = first()
    else:
        a = first()
        b = second()
    return a, b


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s, digits=0, unit=""):
    if s is None:
        return "failed"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="build folder holding mpicnn (default: build)")
    parser.add_argument("--config", default="configs/fashion_mnist.ini")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the alternating comparison (default 5)")
    parser.add_argument("--steps", type=int, default=180, help="training steps per run of ours (default 180)")
    parser.add_argument("--log-interval", type=int, default=30, help="steps per metrics record (default 30)")
    parser.add_argument("--torch-steps", type=int, default=120, help="measured steps per PyTorch run (default 120)")
    parser.add_argument("--stream-rounds", type=int, default=2, help="rounds of streaming vs cache (default 2)")
    parser.add_argument("--only", default="1x1,1x2,2x1,stream,4x1",
                        help="comma-separated subset of 1x1,1x2,2x1,stream,4x1 (default: all)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per run (default 300)")
    parser.add_argument("--torch-python", default="/usr/bin/python3", help="interpreter that imports torch")
    parser.add_argument("--trainer-arg", action="append", default=[], help="extra option for our trainer (repeatable)")
    parser.add_argument("--torch-arg", action="append", default=[], help="extra option for the PyTorch scripts")
    parser.add_argument("--mpirun-always", action="store_true", help="start 1-process runs under mpirun -np 1 too")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 90 steps: a smoke test of this script")
    parser.add_argument("--json", help="write every sample and the summary to this file")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.torch_steps, args.stream_rounds, args.log_interval = 2, 90, 60, 1, 15
    wanted = set(args.only.split(","))
    unknown = wanted - {"1x1", "1x2", "2x1", "stream", "4x1"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (known: 1x1, 1x2, 2x1, stream, 4x1)")
    if args.steps < 2 * args.log_interval:
        parser.error("--steps must be at least twice --log-interval (the first record is skipped)")
    if "2x1" in wanted:
        wanted.add("1x1")  # the 2-rank scaling is measured against the same round's 1x1

    scratch = tempfile.mkdtemp(prefix="mpicnn-compare-")
    ours, torch, lockstep = Ours(args, scratch), Torch(args), Lockstep(args)
    samples = {key: [] for key in ("ours_1x1", "torch_1x1", "ours_1x2", "torch_1x2", "ours_2x1", "torch_ddp_2x1",
                                   "ours_stream", "ours_cache", "ours_pair", "lockstep_1", "lockstep_2")}
    ratios = {key: [] for key in ("1x1", "1x2", "2x1_vs_ours", "2x1_vs_ddp", "stream", "pair_vs_ours", "2x1_vs_pair",
                                   "lockstep", "2x1_vs_lockstep")}
    failures = []
    started = time.monotonic()

    def attempt(label, function):
        try:
            return function()
        except (RunFailed, OSError, ValueError, KeyError) as e:
            failures.append(f"{label}: {e}")
            log(f"  {label} FAILED: {str(e).splitlines()[0]}")
            return None

    def ratio(a, b):
        return a["img_per_s"] / b["img_per_s"] if a and b else None

    try:
        for rnd in range(args.rounds):
            swap = rnd % 2 == 1
            log(f"round {rnd + 1}/{args.rounds} ({'PyTorch' if swap else 'ours'} first), {time.monotonic() - started:.0f}s")
            o11 = None
            if "1x1" in wanted:
                o11, t11 = pair(lambda: attempt("ours 1x1", lambda: ours.train(1, 1)),
                                lambda: attempt("torch 1x1", lambda: torch.single(1)), swap)
                samples["ours_1x1"].append(o11), samples["torch_1x1"].append(t11)
                ratios["1x1"].append(ratio(o11, t11))
            if "1x2" in wanted:
                o12, t12 = pair(lambda: attempt("ours 1x2", lambda: ours.train(1, 2)),
                                lambda: attempt("torch 1x2", lambda: torch.single(2)), swap)
                samples["ours_1x2"].append(o12), samples["torch_1x2"].append(t12)
                ratios["1x2"].append(ratio(o12, t12))
            if "2x1" in wanted:
                o21, d21 = pair(lambda: attempt("ours 2x1", lambda: ours.train(2, 1)),
                                lambda: attempt("torch DDP 2x1", lambda: torch.ddp(2, 1)), swap)
                samples["ours_2x1"].append(o21), samples["torch_ddp_2x1"].append(d21)
                ratios["2x1_vs_ours"].append(ratio(o21, o11))
                ratios["2x1_vs_ddp"].append(ratio(o21, d21))
                pair_rate = attempt("ours 2 independent 1x1", ours.independent_pair)
                samples["ours_pair"].append(pair_rate)
                ratios["pair_vs_ours"].append(ratio(pair_rate, o11))
                ratios["2x1_vs_pair"].append(ratio(o21, pair_rate))
                if lockstep.binary:
                    l1, l2 = pair(lambda: attempt("lockstep 1 rank", lambda: lockstep.run(1)),
                                  lambda: attempt("lockstep 2 ranks", lambda: lockstep.run(2)), swap)
                    samples["lockstep_1"].append(l1), samples["lockstep_2"].append(l2)
                    ceiling, own = ratio(l2, l1), ratios["2x1_vs_ours"][-1]
                    ratios["lockstep"].append(ceiling)
                    ratios["2x1_vs_lockstep"].append(own / ceiling if own and ceiling else None)
            if "stream" in wanted and rnd < args.stream_rounds:
                streamed, cached = pair(lambda: attempt("ours streaming", lambda: ours.train(2, 1, cache=False)),
                                        lambda: attempt("ours cached", lambda: ours.train(2, 1, cache=True)), swap)
                samples["ours_stream"].append(streamed), samples["ours_cache"].append(cached)
                ratios["stream"].append(ratio(streamed, cached))
        smoke = None
        if "4x1" in wanted:
            log(f"4 ranks oversubscribed against 1 rank, {time.monotonic() - started:.0f}s")
            steps = 2 * args.log_interval
            four = attempt("ours 4x1 oversubscribed", lambda: ours.train(4, 1, steps=steps, oversubscribe=True))
            one = attempt("ours 1x1 reference for 4x1", lambda: ours.train(1, 1, steps=steps))
            smoke = {"four": four, "one": one}
    except KeyboardInterrupt:
        log("interrupted: summarising what ran")
        smoke = None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def rates(key):
        return summary([s["img_per_s"] for s in samples[key] if s])

    table = []

    def row(name, ours_key, ref_key, ratio_key, target):
        ratio_summary = summary(ratios[ratio_key])
        verdict = ""
        if ratio_summary is not None and target:
            verdict = "meets" if ratio_summary["median"] >= target else "MISSES"
        table.append((name, fmt(rates(ours_key)), fmt(rates(ref_key)) if ref_key else "",
                      fmt(ratio_summary, 2, "x"), f">= {target}x {verdict}" if target else ""))

    if "1x1" in wanted:
        row("1 process x 1 thread vs torch 1 thread", "ours_1x1", "torch_1x1", "1x1", 1.3)
    if "1x2" in wanted:
        row("1 process x 2 threads vs torch 2 threads", "ours_1x2", "torch_1x2", "1x2", 1.3)
    if "2x1" in wanted:
        row("2 ranks x 1 thread vs our 1x1", "ours_2x1", "ours_1x1", "2x1_vs_ours", 1.85)
        row("2 ranks x 1 thread vs torch DDP gloo 2x1", "ours_2x1", "torch_ddp_2x1", "2x1_vs_ddp", 1.3)
        row("machine ceiling: 2 independent 1x1 at once vs our 1x1", "ours_pair", "ours_1x1", "pair_vs_ours", None)
        row("2 ranks x 1 thread vs that ceiling", "ours_2x1", "ours_pair", "2x1_vs_pair", None)
        if ratios["lockstep"]:
            table.append(("lockstep ceiling: the model's passes alone, 2 ranks vs 1", fmt(rates("lockstep_2")),
                          fmt(rates("lockstep_1")), fmt(summary(ratios["lockstep"]), 2, "x"), ""))
            table.append(("our 2x1 scaling (2x1 vs 1x1) over that ceiling", "", "",
                          fmt(summary(ratios["2x1_vs_lockstep"]), 2, "x"), ""))
    if "stream" in wanted:
        row("HDF5 streaming (no cache) vs in memory, 2x1", "ours_stream", "ours_cache", "stream", 0.97)

    widths = [max(len(str(r[i])) for r in table + [("configuration", "ours img/s", "reference img/s", "ratio", "target")])
              for i in range(5)]
    header = ("configuration", "ours img/s", "reference img/s", "ratio", "target")
    print(f"\nmpicnn vs PyTorch {args.config}, global batch from the config, {args.rounds} alternating rounds; "
          "median [min-max] over rounds; ratio = median of the per-round paired ratios\n")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))

    extras = []
    if samples["ours_2x1"]:
        extras.append(("communication wait share at 2 ranks, not hidden by backward (least over ranks; median of the run medians)",
                       fmt(summary([s["comm_wait_share"] for s in samples["ours_2x1"] if s]), 3)))
        extras.append(("communication wait share at 2 ranks, mean over ranks (adds waiting for the slower rank)",
                       fmt(summary([s["comm_wait_share_mean"] for s in samples["ours_2x1"] if s]), 3)))  # None: older build
    if any(samples["lockstep_2"]):
        extras.append(("lockstep ceiling's wait share, mean over its 2 ranks (the machine's imbalance alone)",
                       fmt(summary([s["wait_share_mean"] for s in samples["lockstep_2"] if s]), 3)))
    for key, label in (("ours_1x1", "ours 1x1"), ("ours_1x2", "ours 1x2"), ("ours_2x1", "ours 2x1 (rank 0)"),
                       ("ours_stream", "ours 2x1 streaming (rank 0)"), ("torch_1x1", "torch 1 thread"),
                       ("torch_ddp_2x1", "torch DDP 2x1 (largest process)")):
        if any(samples[key]):
            extras.append((f"peak RSS per rank, {label}", fmt(summary([s["peak_rss_mb"] for s in samples[key] if s]), 0, " MB")))
    if smoke:
        four, one = smoke["four"], smoke["one"]
        if four and one:
            same = four["loss"] == one["loss"]
            extras.append(("4 ranks x 1 thread oversubscribed", f"{four['img_per_s']:.0f} img/s, comm wait "
                           f"{four['comm_wait_share']:.2f}, loss after {four['steps']} steps {four['loss']:.6f} vs 1 rank "
                           f"{one['loss']:.6f}: {'identical' if same else 'DIFFERENT'}"))
        else:
            extras.append(("4 ranks x 1 thread oversubscribed", "failed"))
    print()
    for name, value in extras:
        print(f"{name}: {value}")
    if LOADS:
        cores = os.cpu_count() or 1
        # The benchmarks' own previous run adds 1-2 to the 1-minute average; more means other work.
        print(f"\nload average before the runs: median {statistics.median(LOADS):.1f} [{min(LOADS):.1f}-{max(LOADS):.1f}] "
              f"on {cores} cores" + ("  (busy machine: other work shares the cores, figures are noisy)"
                                     if statistics.median(LOADS) > cores else ""))
    print(f"{time.monotonic() - started:.0f}s; ours: {' '.join(ours.no_eval)} --data.cache_mb=1024 (streaming: 0) "
          f"--train.max_steps={args.steps} --train.log_interval={args.log_interval}"
          f"{' ' + ' '.join(args.trainer_arg) if args.trainer_arg else ''}; torch: {args.torch_steps} steps after 10 warm-up")
    if failures:
        print(f"\n{len(failures)} run(s) failed:")
        for f in failures:
            print("  " + f.replace("\n", "\n    "))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "samples": samples, "ratios": ratios, "smoke": smoke, "table": table,
                       "extras": extras, "failures": failures, "load_averages": LOADS}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
