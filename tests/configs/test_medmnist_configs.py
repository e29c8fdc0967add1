#!/usr/bin/env python3
"""configs/medmnist_2d.ini and configs/medmnist_3d.ini (issue 16) as a user runs them: the convert
command of the config's header comment, run on a MedMNIST-layout .npz of the config's dataset from
scripts/make_medmnist.py (a handful of samples), then `mpicnn train --config` for one step with a
tiny batch (the recipe's own batch would take minutes on the 3D ResNet-18). Passes when the config
parses, its model builds on the converted file's shape and trains a step, the val split is
evaluated and the test split reported (MedMNIST's protocol), and the recipe's keys are those of the
paper (Adam 0.001, multistep at 50 and 75, 100 epochs, best by AUC) in the run's resolved config.

  test_medmnist_configs.py MPICNN_EXE WORK_DIR CONFIG
"""
import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
# config: (make_medmnist.py name, its batch size in the paper, the batch for the one step here)
CASES = {"medmnist_2d.ini": ("pathmnist", "128", 4), "medmnist_3d.ini": ("organmnist3d", "32", 2)}
RECIPE = {("optimizer", "name"): "adam", ("optimizer", "lr"): "0.001", ("schedule", "kind"): "multistep",
          ("schedule", "milestones"): "50,75", ("schedule", "gamma"): "0.1", ("train", "epochs"): "100",
          ("data", "eval_split"): "val", ("data", "test_split"): "test", ("checkpoint", "best_metric"): "auc"}


def run(command, cwd):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def header_convert_command(config):
    """The `build/mpicnn convert ...` line of the config's header comment, as a list of words."""
    with open(config) as f:
        lines = [l.lstrip("# ").strip() for l in f if l.startswith("#") and "mpicnn convert" in l]
    if len(lines) != 1:
        sys.exit(f"FAILED: {config}: expected one 'build/mpicnn convert' line in the header, found {len(lines)}")
    return shlex.split(lines[0])


def check_recipe(config, resolved, batch):
    for path, label in ((config, "config"), (resolved, "run's resolved config")):
        parsed = configparser.ConfigParser()
        parsed.read(path)
        for (section, key), value in RECIPE.items():
            if parsed.get(section, key, fallback=None) != value:
                sys.exit(f"FAILED: {label} {path}: [{section}] {key} = {parsed.get(section, key, fallback=None)}, "
                         f"expected {value}")
    parsed = configparser.ConfigParser()
    parsed.read(config)
    if parsed.get("train", "batch_size") != batch:
        sys.exit(f"FAILED: {config}: batch_size {parsed.get('train', 'batch_size')}, expected {batch}")


def figure(value):
    return "undefined (a class without samples)" if value is None else f"{value:.4f}"


def main():
    exe, work, name = sys.argv[1:4]
    config = os.path.join(REPO, "configs", name)
    dataset, batch, step_batch = CASES[name]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "data"))
    command = header_convert_command(config)
    if command[0] != "build/mpicnn" or command[1] != "convert":
        sys.exit(f"FAILED: {config}: the header's command is not build/mpicnn convert: {command}")
    npz = command[command.index("--input") + 1]
    run(["/usr/bin/python3", os.path.join(REPO, "scripts", "make_medmnist.py"), dataset, "--size", 28,
         "--counts", "8,3,3", "--output", npz], work)
    print(run([exe] + command[1:], work).strip())
    run([exe, "train", "--config", config, "--train.max_steps=1", f"--train.batch_size={step_batch}",
         "--train.progress", "lines", "--output", "run"], work)
    check_recipe(config, os.path.join(work, "run", "config.ini"), batch)
    with open(os.path.join(work, "run", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if r["kind"] == "eval"]
    tests = [r for r in records if r["kind"] == "test"]
    if not evals or "val_auc" not in evals[-1] or len(tests) != 1 or "test_auc" not in tests[0]:
        sys.exit(f"FAILED: expected val evaluations with val_auc and one test record, got {records}")
    shown = run([exe, "inspect", os.path.join("run", "best.h5")], work)
    params = next((l for l in shown.splitlines() if "parameters" in l.lower()), "").strip()
    print(f"[ figure ] {name}: one step trained on the converted {dataset} layout; val AUC {figure(evals[-1]['val_auc'])}, "
          f"test AUC {figure(tests[0]['test_auc'])}; {params}")


if __name__ == "__main__":
    main()
