"""Shared helpers of the reliability tests: small datasets written with h5py (datasets/README.md
schema), running mpicnn alone or under mpirun with a deadline, and the checks every failure must
pass (one `error:` line, non-zero exit, no signal, no core file, no rank left behind)."""
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np

# The model every fixture is trained with: fits (1,8,8) images and 3 classes.
SPEC = "conv(4,3) relu maxpool(2) flatten dense(3)"

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           # Two ranks on two cores while ctest may run other MPI tests beside this one.
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}

# What a crash looks like in the output of mpicnn or mpirun (exit by signal, sanitizer report).
CRASH_PATTERNS = re.compile(
    r"exited on signal|terminated with signal|Segmentation fault|core dumped|"
    r"AddressSanitizer|LeakSanitizer|runtime error:|terminate called|std::bad_alloc|Assertion .* failed")


def write_dataset(path, n_train=64, n_test=32, shape=(1, 8, 8), classes=3, dtype=np.uint8, seed=0,
                  attrs=None, drop=(), splits=None):
    """A dataset file in the mpicnn schema. `attrs` overrides root attributes (None deletes one),
    `drop` removes objects ("train/labels"), `splits` replaces the split contents entirely:
    {"train": {"images": array, "labels": array}}."""
    rng = np.random.default_rng(seed)
    c = shape[0]
    root = {"format": "mpicnn-dataset", "format_version": 1, "num_classes": classes,
            "mean": np.full(c, 0.5), "std": np.full(c, 0.25), "class_names": [f"class{i}" for i in range(classes)]}
    root.update(attrs or {})
    if splits is None:
        splits = {}
        for name, n in (("train", n_train), ("test", n_test)):
            if np.dtype(dtype) == np.uint8:
                images = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
            else:
                images = rng.random((n,) + tuple(shape)).astype(dtype)
            splits[name] = {"images": images, "labels": rng.integers(0, classes, n).astype(np.int32)}
    with h5py.File(path, "w") as f:
        for key, value in root.items():
            if value is not None:
                f.attrs[key] = value
        for name, objects in splits.items():
            group = f.create_group(name)
            for key, value in objects.items():
                group[key] = value
        for name in drop:
            del f[name]
    return path


def mpicnn_env():
    env = dict(os.environ)
    env.update(MPI_ENV)
    return env


def _limits(core_zero=True, fsize=None, memory=None):
    def apply():
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if core_zero:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        os.setsid()  # own process group: a timeout kills mpirun and every rank it started
    return apply


class Run:
    def __init__(self, returncode, stdout, stderr, seconds, timed_out):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.seconds, self.timed_out = seconds, timed_out

    def error_lines(self):
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def describe(self):
        return (f"exit {self.returncode} after {self.seconds:.1f} s{' (TIMED OUT)' if self.timed_out else ''}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


def run(argv, cwd, timeout, ranks=0, env=None, fsize=None, memory=None):
    """Runs argv alone (ranks=0) or under `mpirun -np ranks`. On timeout the whole process group is
    killed and the run is reported as timed out."""
    if ranks:
        argv = ["mpirun", "-np", str(ranks), "--oversubscribe"] + argv
    start = time.monotonic()
    process = subprocess.Popen(argv, cwd=cwd, env=env or mpicnn_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace",
                               preexec_fn=_limits(fsize=fsize, memory=memory))
    timed_out = False
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(process.pid)
        out, err = process.communicate()
    return Run(process.returncode, out, err, time.monotonic() - start, timed_out)


# Open MPI's mpirun (4.1) adds a note of its own whenever a rank ends with a non-zero status, even
# after MPI_Finalize ("Primary job terminated normally, but 1 process returned a non-zero exit
# code", "mpirun detected that one or more processes exited with non-zero status"); `mpirun -q`
# leaves it out. Each of its messages is a block between two rulers of dashes.
MPIRUN_EXIT_NOTE = re.compile(r"returned\s+a non-zero exit code|returned\s+non-zero exit codes|exited with non-zero status")
RULER = re.compile(r"^-{20,}$")


def split_mpirun_blocks(stderr):
    """(the lines of stderr outside Open MPI's ruled message blocks, the blocks' texts)."""
    lines, blocks, block = [], [], None
    for line in stderr.splitlines():
        if RULER.match(line.strip()):
            if block is None:
                block = []
            else:
                blocks.append("\n".join(block))
                block = None
        elif block is not None:
            block.append(line)
        elif line.strip():
            lines.append(line)
    if block is not None:  # an unclosed block: its lines stay visible
        lines.extend(line for line in block if line.strip())
    return lines, blocks


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_in(directory):
    """PIDs of live processes whose working directory is inside `directory` (ranks left behind)."""
    directory = os.path.realpath(directory)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == directory or cwd.startswith(directory + "/")):
            found.append(int(entry))
    return found


def rank_pids(directory, binary):
    """{rank: pid} of the mpicnn ranks running in `directory` (from OMPI_COMM_WORLD_RANK)."""
    ranks = {}
    for pid in processes_in(directory):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/environ", "rb") as environ:
                variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if os.path.realpath(exe) == os.path.realpath(binary) and b"OMPI_COMM_WORLD_RANK" in variables:
            ranks[int(variables[b"OMPI_COMM_WORLD_RANK"])] = pid
    return ranks


def core_files(directory):
    return [os.path.join(root, name) for root, _, names in os.walk(directory)
            for name in names if name == "core" or name.startswith("core.")]


def hash_files(directory, pattern=r"\.h5$|^latest$|^config\.ini$"):
    """{relative path: sha256} of the files under `directory` whose name matches `pattern`."""
    hashes = {}
    for root, _, names in os.walk(directory):
        for name in names:
            if re.search(pattern, name):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    hashes[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def check_failed_cleanly(result, workdir, label, deadline=10):
    """The checks every failing run must pass, alone or under mpirun."""
    check(not result.timed_out, f"{label}: did not end in time: {result.describe()}")
    check(result.returncode != 0, f"{label}: exit status 0 for a bad input: {result.describe()}")
    check(result.returncode > 0 and result.returncode < 128,
          f"{label}: ended by a signal (status {result.returncode}): {result.describe()}")
    crash = CRASH_PATTERNS.search(result.stdout + result.stderr)
    check(crash is None, f"{label}: crash in the output ({crash.group(0) if crash else ''}): {result.describe()}")
    check(not core_files(workdir), f"{label}: core file left: {core_files(workdir)}")
    # A rank may outlive mpirun by a moment while it exits (slowly under a sanitizer's exit checks);
    # it must still be gone within the same deadline the job had.
    left = wait_gone(workdir, max(1.0, deadline - result.seconds))
    check(not left, f"{label}: processes still running {deadline} s after the start: {left}")


def wait_gone(directory, seconds):
    """Polls until no process runs in `directory` or `seconds` pass; returns those still running."""
    end = time.monotonic() + seconds
    while True:
        left = processes_in(directory)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)
