#!/usr/bin/env python3
"""Fault tests of `mpicnn train` under `mpirun -np 2`, one scenario per run:

  faults.py --mpicnn BIN --workdir DIR SCENARIO

kill_rank               SIGKILL to rank 1 mid-training: the job ends within 10 s, the last checkpoint
                        loads (`mpicnn inspect`) and training resumes from the run folder.
checkpoint_write_fails  a file-size limit (RLIMIT_FSIZE, `ulimit -f`) below the checkpoint's size: the
                        write fails with EFBIG, the error says so, the previous checkpoint is intact.
checkpoint_write_error_one_line  the same, and the reason ("File too large") is on the one error line.
sharded_checkpoint_write_fails  the same with train.classifier = sharded, whose rows rank 1 sends to rank 0.
nan_loss                optimizer.lr=1e6 after a good checkpoint: the run stops naming the step and the
                        first layer holding non-finite values; the good checkpoint is kept.
hang_detector           SIGSTOP to rank 1 mid-epoch with train.collective_timeout=5: the job ends
                        within 20 s saying which rank has "not arrived".
hang_detector_in_evaluation  the same with rank 1 stopped during the evaluation after an epoch.
sharded_resume_misshapen_state  a sharded resume whose classifier state has the wrong width: one line, no read past it.
sharded_hang_detector   the same under train.classifier = sharded (the classifier's exchange).
rank_fails_alone        one sample of the training split holds a NaN: the one rank that reads it fails
                        mid-epoch while the other waits in the step's allreduce (hang detector off);
                        it names the sample, and MPI_Abort ends the job within 20 s.
checkpoint_without_class_names  a dataset without class names: its checkpoints load.
empty_option_value      `--data.eval_split=` (the help's "'' = none") is accepted on the command line.
best_metric_on_resume   best.h5 names the metric that chose it, with that metric's own value; a resumed
                        run carries the best over (an older writer's minus-loss score too), and one
                        resumed with another checkpoint.best_metric says so and chooses best.h5 anew.
"""
import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CRASH_PATTERNS, MPIRUN_EXIT_NOTE, Failure, check, core_files, fresh_dir, hash_files,  # noqa: E402
                    kill_group, mpicnn_env, rank_pids, run, split_mpirun_blocks, wait_gone, write_dataset)

SPEC = "conv(8,3) relu maxpool(2) flatten dense(3)"
STEPS_PER_EPOCH = 128  # 2048 samples, global batch 16


def train_args(**overrides):
    options = {"data.path": "data.h5", "model.spec": SPEC, "train.batch_size": "16", "train.epochs": "1000",
               "train.log_interval": "50", "checkpoint.every_steps": "50", "checkpoint.keep": "3", "output": "run",
               "data.eval_split": "test"}
    for key, value in overrides.items():
        options[key.replace("__", ".")] = value
    return ["train"] + [f"--{k}={v}" for k, v in options.items() if v is not None]


def latest_step(run_dir):
    try:
        with open(os.path.join(run_dir, "latest")) as f:
            return int(re.search(r"ckpt-(\d+)\.h5", f.read()).group(1))
    except (OSError, AttributeError):
        return None


def latest_file(run_dir):
    return os.path.join(run_dir, f"ckpt-{latest_step(run_dir):09d}.h5")


def inspect(binary, workdir, path):
    result = run([binary, "inspect", path], workdir, 30)
    check(result.returncode == 0 and "mpicnn checkpoint" in result.stdout,
          f"`mpicnn inspect {path}` failed: {result.describe()}")
    return result.stdout


def checkpoint_weights_finite(path):
    with h5py.File(path, "r") as f:
        for name, dataset in f["model"].items():
            if isinstance(dataset, h5py.Dataset) and not np.all(np.isfinite(dataset[()])):
                return False
    return True


def start(binary, workdir, args, ranks=2, fsize=None):
    def limits():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        os.setsid()
    argv = ["mpirun", "-np", str(ranks), "--oversubscribe", binary] + args
    return subprocess.Popen(argv, cwd=workdir, env=mpicnn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", preexec_fn=limits)


def wait_for(predicate, seconds, what, process=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise Failure(f"training ended before {what}: exit {process.returncode}\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.05)
    raise Failure(f"timed out after {seconds} s waiting for {what}")


def finish_within(process, seconds, what):
    """Waits for the job; kills it and fails when it outlives `seconds`. Returns (code, out, err, elapsed)."""
    begin = time.monotonic()
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        out, err = process.communicate()
        raise Failure(f"{what}: the job did not end within {seconds} s\n{out[-2000:]}\n{err[-3000:]}")
    return process.returncode, out, err, time.monotonic() - begin


def check_no_leftovers(workdir, what):
    check(not core_files(workdir), f"{what}: core file left: {core_files(workdir)}")
    left = wait_gone(workdir, 2)
    check(not left, f"{what}: processes still running after the job ended: {left}")


def prepare(workdir, n_train=2048, n_test=64):
    fresh_dir(workdir)
    write_dataset(os.path.join(workdir, "data.h5"), n_train=n_train, n_test=n_test, shape=(1, 16, 16))


def good_run(binary, workdir, steps):
    result = run([binary] + train_args(train__max_steps=str(steps)), workdir, 60, ranks=2)
    check(result.returncode == 0, "the first, good training run failed: " + result.describe())
    check(latest_step(os.path.join(workdir, "run")) == steps, f"no checkpoint of step {steps}: " + result.describe())


def kill_rank(binary, workdir):
    prepare(workdir)
    run_dir = os.path.join(workdir, "run")
    job = start(binary, workdir, train_args())
    try:
        wait_for(lambda: (latest_step(run_dir) or 0) >= 150, 60, "the checkpoint of step 150", job)
        ranks = rank_pids(workdir, binary)
        check(set(ranks) == {0, 1}, f"expected ranks 0 and 1 running, found {ranks}")
        os.kill(ranks[1], signal.SIGKILL)
        print(f"SIGKILL to rank 1 (pid {ranks[1]}) at checkpoint step {latest_step(run_dir)}")
        code, out, err, seconds = finish_within(job, 10, "after SIGKILL to rank 1")
    finally:
        kill_group(job.pid)
    print(f"the job ended {seconds:.1f} s after the kill, exit {code}")
    check(code != 0, "exit status 0 after a rank was killed")
    check_no_leftovers(workdir, "after SIGKILL")
    step = latest_step(run_dir)
    for name in sorted(os.listdir(run_dir)):
        if re.fullmatch(r"ckpt-\d{9}\.h5", name):
            inspect(binary, workdir, os.path.join("run", name))
    summary = inspect(binary, workdir, latest_file(run_dir))
    check(f"global step {step}" in summary, f"inspect of the latest checkpoint does not say global step {step}:\n{summary}")
    resumed = run([binary] + train_args(train__max_steps=str(step + 20)), workdir, 60, ranks=2)
    check(resumed.returncode == 0, "resuming failed: " + resumed.describe())
    check(f"resuming from run/ckpt-{step:09d}.h5" in resumed.stdout,
          f"the resumed run does not say it resumed from step {step}: " + resumed.describe())
    check(latest_step(run_dir) == step + 20, f"the resumed run did not checkpoint step {step + 20}")
    print(f"resumed from step {step} and reached step {step + 20}")


def checkpoint_write_fails(binary, workdir, one_line=False, options=None):
    # The limit is put on the ranks once training runs (prlimit, what `ulimit -f` sets at start): a
    # limit from the start would also hit mpirun's and MPI_Init's own files (shared-memory segments).
    prepare(workdir)
    run_dir = os.path.join(workdir, "run")
    # checkpoint.keep large: no checkpoint is rotated away while the limit is being put in place.
    job = start(binary, workdir, train_args(checkpoint__keep="1000", **(options or {})))
    try:
        wait_for(lambda: (latest_step(run_dir) or 0) >= 100, 60, "the checkpoint of step 100", job)
        size = os.path.getsize(latest_file(run_dir))
        limit = size // 2
        ranks = rank_pids(workdir, binary)
        check(set(ranks) == {0, 1}, f"expected ranks 0 and 1 running, found {ranks}")
        for pid in ranks.values():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
        before = hash_files(run_dir, r"^ckpt-\d{9}\.h5$|^best\.h5$")
        limited_at = latest_step(run_dir)
        print(f"checkpoint size {size} bytes; file-size limit {limit} bytes from step {limited_at}")
        code, out, err, seconds = finish_within(job, 20, "with a failing checkpoint write")
    finally:
        kill_group(job.pid)
    print(f"exit {code} {seconds:.1f} s after the limit")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    print("\n".join(errors))
    check(code != 0, "exit status 0 although the checkpoint could not be written")
    check(not CRASH_PATTERNS.search(out + err) and "signal" not in err, f"crash or signal:\n{err[-3000:]}")
    check(any(re.search(r"cannot write checkpoint '.*(ckpt-\d{9}|best)\.h5'", line) and "previous checkpoint is kept" in line
              for line in errors), f"no error line saying the checkpoint write failed:\n{err[-3000:]}")
    check("File too large" in err, f"the error does not give the reason, 'File too large':\n{err[-3000:]}")
    if one_line:
        check(any("cannot write checkpoint" in line and "File too large" in line for line in errors),
              f"the reason 'File too large' is not on the error line (a multi-line message?):\n{err[-3000:]}")
        # Rank 0 writes; the others learn the outcome from it, so all end together with its one line.
        lines, blocks = split_mpirun_blocks(err)
        check(len(errors) == 1 and not [line for line in lines if not line.startswith(("error:", "warning:"))]
              and all(MPIRUN_EXIT_NOTE.search(block) for block in blocks),
              f"expected rank 0's one error line and nothing else but mpirun's note of the exit status:\n{err[-3000:]}")
    check_no_leftovers(workdir, "after the failed write")
    after = hash_files(run_dir, r"^ckpt-\d{9}\.h5$|^best\.h5$")
    changed = [name for name in before if after.get(name) != before[name]]
    check(not changed, f"existing checkpoints changed or removed: {changed}")
    temps = [name for name in os.listdir(run_dir) if ".tmp" in name]
    check(not temps, f"temporary files left in the run folder: {temps}")
    # A write already under way when the limit came may still have completed: `latest` may be newer
    # than the step the limit was set at, but never the step whose write failed.
    failed = [int(m.group(1)) for m in (re.search(r"cannot write checkpoint '.*ckpt-(\d{9})\.h5'", e) for e in errors) if m]
    check(latest_step(run_dir) >= limited_at, f"`latest` went back to step {latest_step(run_dir)}")
    check(all(step > latest_step(run_dir) for step in failed), f"`latest` names the checkpoint whose write failed")
    for name in os.listdir(run_dir):
        if name.endswith(".h5"):
            inspect(binary, workdir, os.path.join("run", name))


def checkpoint_write_error_one_line(binary, workdir):
    checkpoint_write_fails(binary, workdir, one_line=True)


def sharded_checkpoint_write_fails(binary, workdir):
    # train.classifier = sharded: rank 1 sends its classifier rows to rank 0 for every checkpoint;
    # when rank 0's write fails it still receives them, so both ranks end with its one line (rows of
    # 4096 floats: more than MPI sends without a matching receive).
    checkpoint_write_fails(binary, workdir, one_line=True, options={
        "model.spec": "conv(8,3) relu maxpool(2) flatten dense(4096) cosine(3)", "loss.kind": "arcface",
        "train.classifier": "sharded", "data.eval_split": "none"})


def sharded_resume_misshapen_state(binary, workdir):
    # A resume under train.classifier = sharded reads each rank's rows of the classifier and of its
    # optimizer state: a state matrix of the wrong width is refused naming the file, not read past.
    prepare(workdir)
    sharded = dict(model__spec="conv(8,3) relu maxpool(2) flatten dense(8) cosine(3)", loss__kind="arcface",
                   train__classifier="sharded", data__eval_split="none", optimizer__momentum="0.9")
    first = run([binary] + train_args(train__max_steps="50", **sharded), workdir, 60, ranks=2)
    check(first.returncode == 0, "the first, good sharded run failed: " + first.describe())
    ckpt = latest_file(os.path.join(workdir, "run"))
    with h5py.File(ckpt, "r+") as f:
        name = next(n for n, d in f["model"].items() if d.shape == (3, 8))  # the cosine(3) rows
        for state in f["optimizer"].values():
            if isinstance(state, h5py.Group) and name in state:
                del state[name]
                state[name] = np.zeros((3, 16), np.float32)
    result = run([binary] + train_args(train__max_steps="60", **sharded), workdir, 30, ranks=2)
    errors = result.error_lines()
    print("\n".join(errors))
    check(result.returncode == 1 and not result.timed_out, "the misshapen state was not refused: " + result.describe())
    check(not CRASH_PATTERNS.search(result.stdout + result.stderr), "crash: " + result.describe())
    check(any(os.path.basename(ckpt) in e and "has shape (3,16)" in e and "the spec needs (3,8)" in e for e in errors),
          "no error line naming the file and both shapes: " + result.describe())


def nan_loss(binary, workdir):
    prepare(workdir)
    run_dir = os.path.join(workdir, "run")
    good_run(binary, workdir, 50)
    before = hash_files(run_dir)
    result = run([binary] + train_args(train__max_steps="400", optimizer__lr="1e6"), workdir, 30, ranks=2)
    errors = result.error_lines()
    print("\n".join(errors))
    check(result.returncode != 0 and not result.timed_out, "NaN loss did not stop the run: " + result.describe())
    check(not CRASH_PATTERNS.search(result.stdout + result.stderr), "crash: " + result.describe())
    pattern = re.compile(r"step (\d+) .*loss is .*(nan|inf).*layer (\d+) '[^']+'")
    found = [pattern.search(line) for line in errors if pattern.search(line)]
    check(found, "no error line naming the step, the non-finite loss and the layer: " + result.describe())
    check(int(found[0].group(1)) > 50, f"the step named ({found[0].group(1)}) is not after the resumed step 50")
    check_no_leftovers(workdir, "after NaN")
    after = hash_files(run_dir)
    changed = [name for name in before if name != "config.ini" and after.get(name) != before[name]]
    check(not changed, f"existing checkpoints changed: {changed}")
    for name in os.listdir(run_dir):
        if name.endswith(".h5"):
            check(checkpoint_weights_finite(os.path.join(run_dir, name)), f"{name} holds non-finite weights")
    inspect(binary, workdir, latest_file(run_dir))


def stop_rank_and_expect_report(binary, workdir, args, ready, what):
    """Starts training, waits for `ready(run_dir)`, stops rank 1 with SIGSTOP and expects the job to
    end within 20 s with a message saying rank 1 has not arrived."""
    run_dir = os.path.join(workdir, "run")
    job = start(binary, workdir, args)
    stopped = None
    try:
        wait_for(lambda: ready(run_dir), 60, what, job)
        ranks = rank_pids(workdir, binary)
        check(set(ranks) == {0, 1}, f"expected ranks 0 and 1 running, found {ranks}")
        stopped = ranks[1]
        os.kill(stopped, signal.SIGSTOP)
        print(f"SIGSTOP to rank 1 (pid {stopped}) after {what}")
        code, out, err, seconds = finish_within(job, 20, "with rank 1 stopped")
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kill_group(job.pid)
    print(f"the job ended {seconds:.1f} s after SIGSTOP, exit {code}")
    print("\n".join(line for line in err.splitlines() if line.startswith("error:")))
    check(code != 0, "exit status 0 with a stopped rank")
    # "not arrived" (rank 1 stopped before the collective) or "not responding" (stopped inside it,
    # found by the detector's pings), naming rank 1 either way.
    check(any(re.search(r"not (arrived|responding)", line) and re.search(r"\b1\b", line) for line in err.splitlines()),
          f"no message saying rank 1 has not arrived:\n{err[-3000:]}")
    check_no_leftovers(workdir, "after the hang")


def hang_detector(binary, workdir):
    # 1024 steps per epoch: rank 1 is stopped in the middle of an epoch's steps, far from its end.
    prepare(workdir, n_train=16384)
    stop_rank_and_expect_report(binary, workdir, train_args(train__collective_timeout="5"),
                                lambda run_dir: (latest_step(run_dir) or 0) >= 100, "the checkpoint of step 100")


def sharded_hang_detector(binary, workdir):
    # train.classifier = sharded: the other rank waits mostly in the classifier's exchange of the
    # embeddings and sums, which goes through the detector as the gradient sum does.
    prepare(workdir, n_train=16384)
    stop_rank_and_expect_report(binary, workdir, train_args(
        train__collective_timeout="5", model__spec="conv(8,3) relu maxpool(2) flatten dense(8) cosine(3)",
        loss__kind="arcface", train__classifier="sharded", data__eval_split="none"),
        lambda run_dir: (latest_step(run_dir) or 0) >= 100, "the checkpoint of step 100")


def hang_detector_in_evaluation(binary, workdir):
    # 32 steps per epoch and a test split of 40000 samples: most of the time goes to the evaluation
    # after each epoch, where rank 1 is stopped.
    prepare(workdir, n_train=512, n_test=40000)
    eval_started = lambda run_dir: (latest_step(run_dir) or 0) >= 32 and (time.sleep(0.3) or True)
    stop_rank_and_expect_report(binary, workdir, train_args(train__collective_timeout="5", train__eval_batch="64"),
                                eval_started, "the first epoch's checkpoint and 0.3 s of the next")


def rank_fails_alone(binary, workdir):
    fresh_dir(workdir)
    path = write_dataset(os.path.join(workdir, "data.h5"), n_train=2048, n_test=64, shape=(1, 16, 16),
                         dtype=np.float32)
    with h5py.File(path, "r+") as f:
        f["train/images"][1000, 0, 0, 0] = np.nan
    # train.collective_timeout=0: the waiting rank waits without the hang detector's limit, and only
    # the failed rank's MPI_Abort can end it.
    result = run([binary] + train_args(train__collective_timeout="0", train__max_steps="128"), workdir, 20, ranks=2)
    print(f"exit {result.returncode} after {result.seconds:.1f} s")
    print("\n".join(result.error_lines()))
    check(not result.timed_out, "the job did not end within 20 s: " + result.describe())
    check(result.returncode != 0, "exit status 0 although a rank failed: " + result.describe())
    check(not CRASH_PATTERNS.search(result.stdout + result.stderr), "crash: " + result.describe())
    check(any("sample 1000" in line and "NaN" in line for line in result.error_lines()),
          "no error line naming sample 1000: " + result.describe())
    _, blocks = split_mpirun_blocks(result.stderr)
    check(not any(MPIRUN_EXIT_NOTE.search(block) for block in blocks),
          "the ranks ended normally, although only one met the error (expected MPI_Abort): " + result.describe())
    check_no_leftovers(workdir, "after the failure")


def checkpoint_without_class_names(binary, workdir):
    fresh_dir(workdir)
    write_dataset(os.path.join(workdir, "data.h5"), n_train=64, n_test=16, shape=(1, 16, 16),
                  attrs={"class_names": None})
    result = run([binary] + train_args(train__epochs="1"), workdir, 60, ranks=2)
    check(result.returncode == 0, "training failed: " + result.describe())
    inspect(binary, workdir, latest_file(os.path.join(workdir, "run")))


def empty_option_value(binary, workdir):
    prepare(workdir)
    result = run([binary] + train_args(train__max_steps="10", data__eval_split=""), workdir, 60, ranks=2)
    check(result.returncode == 0, "`--data.eval_split=` was rejected: " + result.describe())


def best_of(path):
    """(global step, best_metric_name, best_metric, the /metrics attributes) of a checkpoint."""
    with h5py.File(path, "r") as f:
        trainer = f["trainer"].attrs
        name = trainer["best_metric_name"]
        return (int(trainer["global_step"]), name.decode() if isinstance(name, bytes) else str(name),
                float(trainer["best_metric"]), dict(f["metrics"].attrs))


def best_metric_on_resume(binary, workdir):
    prepare(workdir)
    run_dir = os.path.join(workdir, "run")
    keep_all = {"checkpoint__keep": "20"}
    first = run([binary] + train_args(train__epochs="1", **keep_all), workdir, 60, ranks=2)
    check(first.returncode == 0, "the 1-epoch run failed: " + first.describe())
    step, name, value, metrics = best_of(os.path.join(run_dir, "best.h5"))
    check((step, name, value) == (STEPS_PER_EPOCH, "accuracy", metrics["test_accuracy"]),
          f"after epoch 1 best.h5 holds step {step}, {name} {value}; expected {STEPS_PER_EPOCH}, accuracy "
          f"{metrics['test_accuracy']}")
    # The epoch's checkpoint as writers before best_metric_name was set left it after a loss run.
    epoch_end = os.path.join(run_dir, f"ckpt-{STEPS_PER_EPOCH:09d}.h5")
    with h5py.File(epoch_end, "r+") as f:
        first_loss = float(f["metrics"].attrs["test_loss"])
        f["trainer"].attrs.modify("best_metric", -first_loss)
    second = run([binary] + train_args(train__epochs="2", checkpoint__best_metric="loss", **keep_all), workdir, 60, ranks=2)
    check(second.returncode == 0, "the resumed run failed: " + second.describe())
    check("chooses it anew" not in second.stderr, "an older loss run's best was not recognised: " + second.describe())
    _, name, value, _ = best_of(os.path.join(run_dir, f"ckpt-{STEPS_PER_EPOCH + 22:09d}.h5"))
    check((name, value) == ("loss", first_loss),
          f"the step checkpoint after the resume holds best {name} {value}; expected loss {first_loss}, carried over")
    third = run([binary] + train_args(train__epochs="3", checkpoint__best_metric="accuracy", **keep_all), workdir, 60,
                ranks=2)
    check(third.returncode == 0, "the second resumed run failed: " + third.describe())
    check("the next evaluation chooses it anew" in third.stderr,
          "no warning that checkpoint.best_metric changed: " + third.describe())
    step, name, value, metrics = best_of(os.path.join(run_dir, "best.h5"))
    check((step, name, value) == (3 * STEPS_PER_EPOCH, "accuracy", metrics["test_accuracy"]),
          f"after epoch 3 best.h5 holds step {step}, {name} {value}; expected {3 * STEPS_PER_EPOCH}, accuracy "
          f"{metrics['test_accuracy']} (the first evaluation under the new metric)")
    shown = inspect(binary, workdir, os.path.join(run_dir, "best.h5"))
    check(f"best.h5: test accuracy {value:.6g}" in shown, f"`mpicnn inspect` does not show the best: {shown}")


SCENARIOS = {f.__name__: f for f in (kill_rank, checkpoint_write_fails, checkpoint_write_error_one_line,
                                     sharded_checkpoint_write_fails, sharded_resume_misshapen_state, nan_loss,
                                     hang_detector, sharded_hang_detector, hang_detector_in_evaluation, rank_fails_alone,
                                     checkpoint_without_class_names, empty_option_value, best_metric_on_resume)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--mpicnn", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    workdir = os.path.abspath(os.path.join(args.workdir, args.scenario))
    try:
        SCENARIOS[args.scenario](os.path.abspath(args.mpicnn), workdir)
    except Failure as failure:
        print("FAILED:", failure)
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
