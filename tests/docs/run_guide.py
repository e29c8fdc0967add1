#!/usr/bin/env python3
"""Runs every command of a guide in docs/, as a user following it in one terminal would.

    run_guide.py GUIDE.md REPO_ROOT BUILD_DIR [--cleanup COMMAND]

The guide's ```sh blocks run in order in one `bash -euo pipefail` (so a variable exported in one
block is seen by the next), in a fresh folder that looks like a checkout of the repository
(build/, scripts/, configs/ and docs/ linked in): the commands are exactly what the guide shows
and their outputs stay out of the repository. A failing command fails the test; the guide's own
checks (Python asserts, grep -q) are what make a wrong result fail. Blocks marked ```text are
shown, not run. --cleanup runs afterwards in the same folder whatever happened (e.g. to stop a
cluster a failed guide left running).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def script_of(guide):
    with open(guide) as f:
        blocks = BLOCK.findall(f.read())
    if not blocks:
        sys.exit(f"{guide}: no ```sh block to run")
    parts = [f"echo '--- block {n} of {len(blocks)}' \"($(date +%T))\"\n{b}" for n, b in enumerate(blocks, 1)]
    return "\n".join(parts), len(blocks)


def checkout(repo, build):
    work = tempfile.mkdtemp(prefix="mpicnn-guide-")
    for name in ("scripts", "configs", "docs"):
        os.symlink(os.path.join(repo, name), os.path.join(work, name))
    os.symlink(os.path.abspath(build), os.path.join(work, "build"))
    return work


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("guide")
    parser.add_argument("repo")
    parser.add_argument("build")
    parser.add_argument("--cleanup", default="")
    a = parser.parse_args()
    script, count = script_of(a.guide)
    work = checkout(os.path.abspath(a.repo), a.build)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    print(f"running {count} blocks of {a.guide} in {work}", flush=True)
    start = time.time()
    # -x: each command is echoed before it runs, so the log shows which one failed.
    result = subprocess.run(["bash", "-euxo", "pipefail", "-c", script], cwd=work, env=env)
    if a.cleanup:
        subprocess.run(["bash", "-c", a.cleanup], cwd=work, env=env)
    if result.returncode != 0:
        sys.exit(f"{a.guide}: a command failed (exit {result.returncode}); its folder is kept: {work}")
    print(f"{a.guide}: {count} blocks passed in {time.time() - start:.0f} s")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
