#!/usr/bin/python3
"""Tests of scripts/plot.py, one case per CTest test (tests/scripts/CMakeLists.txt):

  test_plot.py --list                               case names, one a line (CMake reads them)
  test_plot.py --mpicnn EXE [--mpiexec MPIRUN] --work DIR setup   a real run folder and fixtures
  test_plot.py --work DIR CASE                      one case (exit 0 = pass)

The setup trains a small CNN on 2 ranks (a generated 3-class dataset of 8x8 images whose class is
the row of a bright band), writes `mpicnn eval --json` and `mpicnn predict` (.h5 and .csv) into
the run folder, and trains a second run (another optimizer and schedule, 1 rank) for the
comparison charts, into whose folder it writes the inputs of future tasks in the formats README.md
documents: embeddings.h5 (detection pictures: test_detection_plot.py). Each picture case checks that the PNG exists, is a PNG of 1200x800 pixels (signature,
IHDR, IEND) and holds the colours of what it must draw; the maths behind the curves is checked
against hand-computed values and against mpicnn eval's own ROC AUC. Each error case checks one line
on stderr, `error: <file>: ...` with the culprit and what was expected, exit status 1 and no PNG.
"""
import argparse
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np  # h5py is imported where needed: most cases do not use it

HERE = os.path.dirname(os.path.abspath(__file__))
PLOT = os.path.join(HERE, "..", "..", "scripts", "plot.py")
PYTHON = "/usr/bin/python3"
SPEC = "conv(4,3) relu maxpool(2) flatten dense(3)"
CLASS_NAMES = ["top", "middle", "bottom"]
# matplotlib's first two tab10 colours: run 1 and run 2, class 0 and class 1.
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
GREEN_BOX, RED_BOX = (0x00, 0xFF, 0x00), (0xFF, 0x00, 0x00)  # "lime" true boxes, "red" predicted


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def load_plot_module():
    spec = importlib.util.spec_from_file_location("plot", PLOT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot(*args, cwd=None):
    result = subprocess.run([PYTHON, PLOT, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    print("$ plot.py", " ".join(args), f"-> {result.returncode}")
    print(result.stdout + result.stderr, end="")
    return result


# ---------------------------------------------------------------- setup

def write_band_dataset(path, seed=0, n_train=512, n_test=256):
    import h5py
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 3, n).astype(np.int32)
        images = rng.normal(100, 40, (n, 1, 8, 8))
        for i, label in enumerate(labels):
            images[i, 0, 2 * label + 1:2 * label + 3, :] += rng.uniform(20, 90)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "mpicnn-dataset", "format_version": 1, "num_classes": 3, "mean": [0.45],
                        "std": [0.2], "class_names": CLASS_NAMES})
        for name, n in (("train", n_train), ("test", n_test)):
            images, labels = split(n)
            f[f"{name}/images"], f[f"{name}/labels"] = images, labels


def write_embeddings(path, rng, identities=6, per_identity=40, dimensions=16):
    import h5py
    centres = rng.normal(0, 3, (identities, dimensions))
    vectors = np.concatenate([c + rng.normal(0, 1, (per_identity, dimensions)) for c in centres]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["embeddings"] = vectors
        f["labels"] = np.repeat(np.arange(identities), per_identity).astype(np.int32)
        f.attrs["class_names"] = [f"person {i}" for i in range(identities)]


def setup(mpicnn, mpiexec, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    data = os.path.join(work, "bands.h5")
    write_band_dataset(data)

    def mpicnn_run(*args, ranks=2, stdout=None):
        command = ([mpiexec, "-np", str(ranks)] if ranks > 1 else []) + [mpicnn, *args]
        result = subprocess.run(command, env=env, cwd=work, stdout=stdout or subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=120)
        check(result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}")

    common = [f"--data.path={data}", f"--model.spec={SPEC}", "--train.epochs=4", "--train.batch_size=16",
              "--train.log_interval=4", "--train.progress=lines"]
    mpicnn_run("train", *common, "--optimizer.lr=0.05", "--output=run")
    mpicnn_run("train", *common, "--optimizer.name=adam", "--optimizer.lr=0.01", "--schedule.kind=cosine",
               "--schedule.warmup_epochs=0.5", "--output=run2", ranks=1)
    run = os.path.join(work, "run")
    with open(os.path.join(run, "eval.json"), "w") as out:
        mpicnn_run("eval", "--checkpoint=run", f"--data={data}", "--json", stdout=out)
    mpicnn_run("predict", "--checkpoint=run", f"--data={data}", "--output=run/predictions.h5")
    mpicnn_run("predict", "--checkpoint=run", f"--data={data}", "--output=run/predictions.csv", ranks=1)
    rng = np.random.default_rng(1)
    run2 = os.path.join(work, "run2")
    write_embeddings(os.path.join(run2, "embeddings.h5"), rng)
    print("setup: run folders", run, run2)


# ---------------------------------------------------------------- checks

def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature and the IEND chunk."""
    check(os.path.isfile(path), f"{path}: not written")
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: no PNG signature")
    length, kind = struct.unpack(">I4s", data[8:16])
    check(kind == b"IHDR" and length == 13, f"{path}: first chunk is {kind!r}, not IHDR")
    check(data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", f"{path}: does not end with an IEND chunk (truncated?)")
    return struct.unpack(">II", data[16:24])


def pixels_of(path, rgb, tolerance=8):
    # Pillow (a dependency of python3-matplotlib) loads in a tenth of matplotlib's time.
    from PIL import Image
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    return int(np.sum(np.all(np.abs(pixels - np.array(rgb)) <= tolerance, axis=-1)))


def check_picture(path, colours=(), at_least=200):
    size = png_size(path)
    check(size == (1200, 800), f"{path}: {size[0]}x{size[1]} pixels, expected 1200x800")
    for rgb in colours:
        found = pixels_of(path, rgb)
        check(found >= at_least, f"{path}: {found} pixels of colour {rgb}, expected at least {at_least} (not drawn?)")
    print("ok:", path, "1200x800", "colours", list(colours))


def check_written(result, out_dir, names, colours=()):
    check(result.returncode == 0, f"plot.py exited {result.returncode}")
    listed = sorted(os.path.relpath(line[len("wrote "):], out_dir) for line in result.stdout.splitlines()
                    if line.startswith("wrote "))
    check(listed == sorted(names), f"wrote {listed}, expected {sorted(names)}")
    for name in names:
        check_picture(os.path.join(out_dir, name), colours.get(name, ()) if isinstance(colours, dict) else colours)


# The classification task evaluates AUC too (test only: steps log accuracy and loss).
TRAINING = ["loss_per_step.png", "loss_per_epoch.png", "accuracy_per_step.png", "accuracy_per_epoch.png",
            "auc_per_step.png", "auc_per_epoch.png", "learning_rate.png", "throughput.png"]
EVALUATION = ["confusion_counts.png", "confusion_normalised.png", "roc.png", "precision_recall.png"]
FUTURE = ["embeddings_pca.png"]  # detection pictures: test_detection_plot.py


def fresh(work, name):
    out = os.path.join(work, "out", name)
    shutil.rmtree(out, ignore_errors=True)
    return out


# ---------------------------------------------------------------- picture cases

def plot_in_process(*args):
    """plot.py's main() in this process, keeping every figure it saves: (result, {file name: lines}),
    lines being {legend label without its "(last ...)": (x, y)}, vertical marks under "marks"."""
    import contextlib
    import io
    module = load_plot_module()
    drawn, save = {}, module.save

    def keep(figure, path, written):
        lines = {}
        for axes in figure.axes:
            for line in axes.get_lines():
                label = line.get_label().split(" (last ")[0]
                x, y = list(line.get_xdata()), list(line.get_ydata())
                if line.get_linestyle() == ":" and len(set(x)) == 1:  # an axvline
                    lines.setdefault("marks", []).append(x[0])
                elif not label.startswith("_"):
                    lines[label] = (x, y)
        drawn[os.path.basename(path)] = lines
        save(figure, path, written)

    module.save = keep
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = module.main(list(args))
    print("$ plot.py (in this process)", " ".join(args), f"-> {code}\n" + stdout.getvalue(), end="")
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), ""), drawn


def case_training(work):
    """Each chart draws what metrics.jsonl holds: every train record at its step, the evaluations
    at theirs, the epoch records and the end-of-epoch evaluations per epoch."""
    out = fresh(work, "training")
    result, drawn = plot_in_process("training", os.path.join(work, "run"), "-o", out)
    check_written(result, out, TRAINING, [BLUE])
    records = [json.loads(line) for line in open(os.path.join(work, "run", "metrics.jsonl"))]

    def column(kind, field, position="global_step"):
        return ([r[position] for r in records if r["kind"] == kind], [r[field] for r in records if r["kind"] == kind])

    expected = {
        "loss_per_step.png": {"run train": column("train", "loss"), "run test": column("eval", "test_loss")},
        "accuracy_per_step.png": {"run train": column("train", "accuracy"),
                                  "run test": column("eval", "test_accuracy")},
        "loss_per_epoch.png": {"run train": column("epoch", "train_loss", "epoch"),
                               "run test": column("eval", "test_loss", "epoch")},
        "accuracy_per_epoch.png": {"run train": column("epoch", "train_accuracy", "epoch"),
                                   "run test": column("eval", "test_accuracy", "epoch")},
        "auc_per_step.png": {"run test": column("eval", "test_auc")},
        "auc_per_epoch.png": {"run test": column("eval", "test_auc", "epoch")},
        "learning_rate.png": {"run": column("train", "lr")},
        "throughput.png": {"run": column("train", "img_per_s"), "marks": column("eval", "global_step")[0]},
    }
    for name, lines in expected.items():
        check(drawn[name] == lines, f"{name} draws\n{drawn[name]}\nexpected\n{lines}")
    check(column("eval", "epoch", "epoch")[0] == [1, 2, 3, 4], "the fixture run evaluates after each of 4 epochs")
    accuracy = column("eval", "test_accuracy")[1][-1]
    check(accuracy > 0.8, f"the small CNN did not learn (test accuracy {accuracy}): is the fixture right?")


def case_all(work):
    """Every picture the run folders hold inputs for: two runs on each training chart (both
    colours on each), each run's other pictures in a folder of its own."""
    out = fresh(work, "all")
    result = plot("all", os.path.join(work, "run"), os.path.join(work, "run2"), "-o", out)
    check_written(result, out, TRAINING + [f"run/{name}" for name in EVALUATION] + [f"run2/{name}" for name in FUTURE],
                  {name: [BLUE, ORANGE] for name in TRAINING})


def case_confusion(work):
    out = fresh(work, "confusion")
    check_written(plot("confusion", os.path.join(work, "run", "eval.json"), "-o", out), out,
                  ["confusion_counts.png", "confusion_normalised.png"], [(0x08, 0x30, 0x6B)])  # Blues' darkest


def case_roc(work):
    """From the .h5 and the .csv predictions; each class's AUC equals mpicnn eval's (Mann-Whitney
    in C++, printed with 6 digits), and hand-computed values, ties counting half."""
    for source in ("predictions.h5", "predictions.csv"):
        out = fresh(work, "roc_" + source)
        check_written(plot("roc", os.path.join(work, "run", source), "-o", out), out, ["roc.png"],
                      [BLUE, ORANGE])
    module = load_plot_module()
    report = json.load(open(os.path.join(work, "run", "eval.json")))
    for source in ("predictions.h5", "predictions.csv"):
        probabilities, labels = module.load_predictions(os.path.join(work, "run", source))
        for k, name in enumerate(CLASS_NAMES):
            _, _, auc = module.roc_curve(probabilities[:, k], labels == k)
            expected = report["per_class"][name]["roc_auc"]
            check(abs(auc - expected) <= 5e-6, f"{source}: class {name}: AUC {auc}, mpicnn eval {expected}")
    fpr, tpr, auc = module.roc_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]))
    check(abs(auc - 0.75) < 1e-12 and list(fpr) == [0, 0, 0.5, 0.5, 1] and list(tpr) == [0, 0.5, 0.5, 1, 1],
          f"hand-computed ROC: fpr {fpr}, tpr {tpr}, AUC {auc}; expected AUC 0.75")
    _, _, auc = module.roc_curve(np.array([0.5, 0.5, 0.2]), np.array([True, False, False]))
    check(abs(auc - 0.75) < 1e-12, f"a tie counts half: AUC {auc}, expected 0.75")


def case_pr(work):
    out = fresh(work, "pr")
    check_written(plot("pr", os.path.join(work, "run", "predictions.h5"), "-o", out), out,
                  ["precision_recall.png"], [BLUE, ORANGE])
    module = load_plot_module()
    # Ranked: positive, negative, positive, negative. Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1;
    # AP = 1/2 x 1 + 1/2 x 2/3; the last negative (below full recall) is not drawn.
    recall, precision, ap = module.precision_recall(np.array([0.9, 0.8, 0.7, 0.6]),
                                                    np.array([True, False, True, False]), 2)
    check(abs(ap - 5 / 6) < 1e-12 and list(recall) == [0, 0.5, 0.5, 1.0] and len(precision) == 4,
          f"hand-computed precision-recall: recall {recall}, precision {precision}, AP {ap}; expected AP 5/6")
    # A tie is one threshold: at 0.5 both tied samples count, precision 2/3 at recall 1.
    recall, precision, ap = module.precision_recall(np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), 2)
    check(abs(ap - 5 / 6) < 1e-12 and list(recall) == [0, 0.5, 1.0],
          f"tied scores: recall {recall}, precision {precision}, AP {ap}; expected AP 5/6")


def case_embeddings(work):
    out = fresh(work, "embeddings")
    check_written(plot("embeddings", os.path.join(work, "run2", "embeddings.h5"), "-o", out), out,
                  ["embeddings_pca.png"], [BLUE, ORANGE])


def case_resumed(work):
    """A run resumed from an earlier checkpoint writes some steps again: the later records win,
    and an unfinished last line (a training still writing) is not an error."""
    folder = os.path.join(work, "resumed")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    # Epochs of 20 steps. Killed at step 60 after its checkpoint of step 40 failed to write, the
    # run is resumed from step 20 with train.max_steps = 30: steps 40-60 and epoch 2 never happened.
    records = [("train", 10, 1.0), ("train", 20, 0.8), ("eval", 20, 0.7), ("epoch", 1, 0.9), ("train", 30, 0.6),
               ("train", 40, 0.5), ("eval", 40, 0.45), ("epoch", 2, 0.55), ("train", 50, 0.4), ("train", 60, 0.3),
               ("train", 30, 0.65), ("eval", 30, 0.6)]
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for kind, position, loss in records:
            if kind == "epoch":
                record = {"kind": kind, "epoch": position, "train_loss": loss, "train_accuracy": None}
            elif kind == "eval":
                record = {"kind": kind, "epoch": (position + 19) // 20, "global_step": position, "test_loss": loss}
            else:
                record = {"kind": kind, "epoch": 1 + (position - 1) // 20, "step": position, "global_step": position,
                          "loss": loss, "accuracy": None, "img_per_s": 1000.0, "lr": 0.1}
            f.write(json.dumps(record) + "\n")
        f.write('{"kind": "train", "global_st')
    run = load_plot_module().load_run("resumed", folder)
    for series, expected in (((("train", "loss"),), ([10, 20, 30], [1.0, 0.8, 0.65])),
                             ((("eval", "test_loss"),), ([20, 30], [0.7, 0.6])),
                             ((("eval", "test_loss"), True), ([1], [0.7])),  # step 30 ends no epoch
                             ((("epoch", "train_loss"),), ([1], [0.9]))):
        found = run.series(*series[0], *series[1:])
        check(found == expected, f"{series}: {found} after the resume, expected {expected}")
    # Into RUN/plots by default; accuracy null as in a regression run: no accuracy charts.
    pictures = ["loss_per_step.png", "loss_per_epoch.png", "learning_rate.png", "throughput.png"]
    check_written(plot("all", folder), os.path.join(folder, "plots"), pictures,
                  {name: [BLUE] for name in pictures if "epoch" not in name})  # per epoch: two points


def case_help(work):
    result = plot("--help")
    check(result.returncode == 0 and all(c in result.stdout for c in
                                         ("all", "training", "confusion", "roc", "pr", "boxes", "embeddings")),
          "plot.py --help does not list every command")
    for command in ("all", "training", "confusion", "roc", "pr", "boxes", "embeddings"):
        result = plot(command, "--help")
        check(result.returncode == 0 and "--output" in result.stdout, f"plot.py {command} --help")
    result = plot()
    check(result.returncode == 2 and "COMMAND" in result.stderr, "plot.py without a command: usage, exit 2")


# ---------------------------------------------------------------- bad inputs

def write(folder, name, content):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    return path


def bad_h5(path, **datasets):
    import h5py
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def error_cases():
    """name -> (setup(work, folder) returning the arguments, substrings of the error line)."""
    run = lambda work: os.path.join(work, "run")  # noqa: E731

    def metrics(content):
        return lambda work, d: ["training", os.path.dirname(write(d, "metrics.jsonl", content))]

    def eval_json(content):
        return lambda work, d: ["confusion", write(d, "eval.json", content)]

    return {
        "missing_run_folder": (lambda work, d: ["all", os.path.join(d, "no_such_run")],
                               ["no_such_run: no such run folder", "mpicnn train"]),
        "empty_run_folder": (lambda work, d: ["all", d], [": no metrics.jsonl", "expected a run folder"]),
        "empty_metrics": (metrics(""), ["metrics.jsonl: empty", "expected"]),
        "metrics_not_json": (metrics('{"kind": "train", "global_step": 1, "loss": 1}\nnot json\n{}\n'),
                             ["metrics.jsonl: line 2: not JSON", "one JSON record per line"]),
        "metrics_record_without_step": (metrics('{"kind": "train", "loss": 1}\n'),
                                        ["metrics.jsonl: line 1", "'global_step'"]),
        "several_runs_without_output": (lambda work, d: ["all", run(work), os.path.join(work, "run2")],
                                        ["several run folders", "--output"]),
        "eval_not_json": (eval_json('{"samples": 10, "confusion_matrix": [[1, 2], [3'),
                          ["eval.json: not JSON", "mpicnn eval --json"]),
        "eval_of_regression": (eval_json('{"samples": 64, "loss": 0.12}'),
                               ["eval.json: no 'confusion_matrix'", "classifier"]),
        "eval_matrix_not_square": (eval_json('{"confusion_matrix": [[1, 2], [3]]}'),
                                   ["eval.json: 'confusion_matrix' is not a square"]),
        "predictions_missing": (lambda work, d: ["roc", os.path.join(d, "predictions.h5")],
                                ["predictions.h5: no such file", "mpicnn predict"]),
        "predictions_not_hdf5": (lambda work, d: ["roc", write(d, "predictions.h5", "index,label\n")],
                                 ["predictions.h5: not an HDF5 file", "mpicnn predict"]),
        "predictions_of_regression": (lambda work, d: ["roc", bad_h5(os.path.join(d, "p.h5"),
                                                                     outputs=np.zeros((4, 3), np.float32))],
                                      ["p.h5: regression outputs", "classifier"]),
        "predictions_without_labels": (lambda work, d: ["pr", bad_h5(os.path.join(d, "p.h5"),
                                                                     probabilities=np.full((4, 2), 0.5))],
                                       ["p.h5: no 'labels'", "labelled"]),
        "predictions_label_out_of_range": (lambda work, d: ["roc", bad_h5(os.path.join(d, "p.h5"),
                                                                          probabilities=np.full((2, 2), 0.5),
                                                                          labels=np.array([0, 2], np.int32))],
                                           ["p.h5: labels outside 0..1"]),
        "predictions_csv_damaged": (lambda work, d: ["roc", write(d, "p.csv", "index,label,predicted,p0,p1\n"
                                                                             "0,1,1,0.2,0.8\n1,0,0,0.9,x\n")],
                                    ["p.csv: line 3: not numbers"]),
        "predictions_csv_header_only": (lambda work, d: ["roc", write(d, "p.csv", "index,label,predicted,p0,p1\n")],
                                        ["p.csv: no samples"]),
        "names_count": (lambda work, d: ["roc", os.path.join(run(work), "predictions.h5"), "--names", "a,b"],
                        ["predictions.h5: 3 classes, but --names gives 2"]),
        "embeddings_without_labels": (lambda work, d: ["embeddings", bad_h5(os.path.join(d, "e.h5"),
                                                                            embeddings=np.zeros((5, 3)))],
                                      ["e.h5: no 'embeddings' or 'labels'"]),
        "embeddings_one_dimension": (lambda work, d: ["embeddings", bad_h5(os.path.join(d, "e.h5"),
                                                                           embeddings=np.zeros((5, 1)),
                                                                           labels=np.zeros(5, np.int32))],
                                     ["e.h5: embeddings (5, 1)", "D >= 2"]),
        "iou_out_of_range": (lambda work, d: ["pr", os.path.join(run(work), "predictions.h5"), "--iou", "1.5"],
                             ["--iou 1.5: expected an overlap in (0, 1]"]),
        "unknown_command": (lambda work, d: ["pictures", run(work)], ["invalid choice: 'pictures'", "--help"]),
        "output_not_writable": (lambda work, d: ["confusion", os.path.join(run(work), "eval.json"), "-o",
                                                 os.path.join(write(d, "file", "x"), "plots")],
                                ["file/plots: cannot be created", "file is not a writable folder"]),
    }


def run_error_case(work, name):
    setup_case, expected = error_cases()[name]
    folder = os.path.join(work, "errors", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    args = setup_case(work, folder)
    result = plot(*args, cwd=folder)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    check(result.returncode == 1, f"exit status {result.returncode}, expected 1")
    check(len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line on stderr, got {lines}")
    missing = [text for text in expected if text not in lines[0]]
    check(not missing, f"the error line lacks {missing}")
    pictures = [os.path.join(r, f) for r, _, files in os.walk(folder) for f in files if f.endswith(".png")]
    check(not pictures, f"pictures written despite the error: {pictures}")


CASES = {"training": case_training, "all": case_all, "confusion": case_confusion, "roc": case_roc,
         "pr": case_pr, "embeddings": case_embeddings,
         "resumed": case_resumed, "help": case_help}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--mpicnn")
    parser.add_argument("--mpiexec", default="mpirun")
    parser.add_argument("--work")
    parser.add_argument("case", nargs="?")
    args = parser.parse_args()
    if args.list:
        print("\n".join(list(CASES) + ["error." + name for name in error_cases()]))
        return 0
    work = os.path.abspath(args.work)
    try:
        if args.case == "setup":
            setup(os.path.abspath(args.mpicnn), args.mpiexec, work)
        elif args.case.startswith("error."):
            run_error_case(work, args.case[len("error."):])
        else:
            CASES[args.case](work)
    except Failure as failure:
        print("FAILED:", failure)
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
