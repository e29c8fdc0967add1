#!/usr/bin/python3
"""Pictures of mpicnn runs: PNG files of 1200x800 pixels (matplotlib, Agg backend).

  plot.py all RUN_DIR [RUN_DIR ...] [-o DIR]       every picture the run folders have inputs for
  plot.py training RUN_DIR|metrics.jsonl [...]     loss, accuracy (every metric logged), lr, img/s
  plot.py confusion EVAL_JSON                      confusion matrix, counts and normalised
  plot.py roc PREDICTIONS                          ROC curves per class (one-vs-rest)
  plot.py pr PREDICTIONS                           precision-recall curves per class
  plot.py pr DETECTIONS --data FILE.h5 [--split]   detection precision-recall (COCO's AP) per class
  plot.py boxes DETECTIONS --data FILE.h5          test images with true and predicted boxes
  plot.py embeddings EMBEDDINGS_H5                 2D PCA projection coloured by identity

Inputs (README.md, "Pictures", has the full formats):
  metrics.jsonl    written by `mpicnn train` in the run folder
  eval.json        `mpicnn eval --json` output
  predictions.h5   `mpicnn predict --output` (.h5: probabilities, labels; .csv: index,label,predicted,p0..)
  dets.json|.h5    `mpicnn detect --output` (COCO results or HDF5); truth, names, images from --data
  embeddings.h5    datasets embeddings (N,D) and labels (N), optional attribute class_names

A bad input ends with one line, `error: <file>: <what was expected>`, and exit status 1.
Run with Debian's /usr/bin/python3 (python3-matplotlib, python3-numpy, python3-h5py).
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np

WIDTH, HEIGHT, DPI = 1200, 800, 100

# metrics.jsonl fields that place a record or describe the machine, not the model.
POSITION_FIELDS = {"kind", "epoch", "step", "global_step", "elapsed_s", "cpu_s", "samples"}
PER_LABEL = re.compile(r"_[0-9]+$")  # "<metric>_<label index>", as mpicnn names per-label figures
SYSTEM_FIELDS = {"img_per_s", "lr", "comm_wait_share", "comm_wait_share_mean", "peak_rss_mb"}


class InputError(Exception):
    """A file or folder that is not what was expected: `<path>: <what was expected>`."""


# ---------------------------------------------------------------- figures

def new_figure():
    """A figure of its own on the Agg canvas: no pyplot, so no global state and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure, path, written):
    """Written atomically: a picture is either the old one or the new one, never half."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = path + ".tmp"
    figure.savefig(temporary, format="png", dpi=DPI)
    os.replace(temporary, path)
    written.append(path)
    print("wrote", path, flush=True)


def colours(count):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def number(value):
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def file_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def title_words(metric):
    return metric.replace("_", " ")


# ---------------------------------------------------------------- metrics.jsonl

class Run:
    """One run's records of metrics.jsonl, after resumes: a train record of a step at or before the
    last one (an evaluation of a step before the last one) means the run restarted from an earlier
    checkpoint, and the records of the steps it does again are dropped."""

    def __init__(self, name, path):
        self.name, self.path = name, path
        self.train, self.eval, self.epoch = {}, {}, {}  # global step (epoch: its last step) -> record

    def rewind(self, step):
        for records in (self.train, self.eval, self.epoch):
            for key in [k for k in records if k >= step]:
                del records[key]

    def add(self, record, line_number):
        kind = record.get("kind")
        if kind == "epoch":
            self.epoch[max(self.train, default=0)] = record
            return
        if kind not in ("train", "eval"):
            return  # a kind written by a later version: not drawn, not an error
        step = record.get("global_step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            raise InputError(f"{self.path}: line {line_number}: a '{kind}' record without a numeric 'global_step'")
        step = int(step)
        if kind == "train" and self.train and step <= max(self.train):
            self.rewind(step)
        if kind == "eval" and self.eval and step < max(self.eval):
            self.rewind(step)
        (self.train if kind == "train" else self.eval)[step] = record

    def series(self, kind, field, by_epoch=False):
        """(x, y) of one field: x the global step, or the epoch for by_epoch; None values (NaN
        when written) skipped."""
        if kind == "epoch":
            records = [(r.get("epoch"), r) for _, r in sorted(self.epoch.items())]
        elif by_epoch:
            # Test figures of the evaluations taken at the end of an epoch (not at train.max_steps).
            records = [(r.get("epoch"), r) for step, r in sorted(self.eval.items()) if step in self.epoch]
        else:
            records = sorted((self.train if kind == "train" else self.eval).items())
        x, y = [], []
        for position, record in records:
            value = record.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and isinstance(position, (int, float)):
                x.append(position)
                y.append(value)
        return x, y

    def eval_split(self):
        """The split the evaluations were taken on: their figures are named `<split>_X`
        (data.eval_split; `test` unless the run chose another, e.g. `val`)."""
        for record in self.eval.values():
            for key in record:
                if key.endswith("_loss"):
                    return key[:-len("_loss")]
        return "test"

    def fields(self):
        """Metric names: train records' own fields, `train_X` of epoch records, `<split>_X` of evaluations."""
        names = []
        for record in self.train.values():
            names += [k for k in record if k not in POSITION_FIELDS | SYSTEM_FIELDS]
        for records, prefix in ((self.epoch, "train_"), (self.eval, self.eval_split() + "_")):
            for record in records.values():
                names += [k[len(prefix):] for k in record if k.startswith(prefix)]
        # Per-label figures ("auc_3") are left to the ROC pictures: 14 labels x 4 metrics of charts would bury the rest.
        return [n for n in dict.fromkeys(names) if not PER_LABEL.search(n)]


def metrics_path(run_dir):
    if os.path.isfile(run_dir):
        return run_dir
    if not os.path.isdir(run_dir):
        raise InputError(f"{run_dir}: no such run folder (expected a folder written by mpicnn train)")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"{run_dir}: no metrics.jsonl (expected a run folder written by mpicnn train)")
    return path


def load_run(name, run_dir):
    path = metrics_path(run_dir)
    run = Run(name, path)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    records = 0
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if line_number == len(lines):
                continue  # the last line without its newline: being written by a running training
            raise InputError(f"{path}: line {line_number}: not JSON (expected one JSON record per line)") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {line_number}: not a JSON object (expected one record per line)")
        run.add(record, line_number)
        records += 1
    if records == 0:
        raise InputError(f"{path}: empty (expected the JSON records mpicnn train writes)")
    if not run.train and not run.eval:
        raise InputError(f"{path}: no 'train' or 'eval' record (expected the records mpicnn train writes)")
    return run


def run_names(paths):
    """Folder names, or the paths as given when two folders share a name."""
    def folder(p):
        p = os.path.normpath(p)
        return os.path.basename(os.path.dirname(p)) if os.path.isfile(p) else os.path.basename(p)
    names = [folder(p) or p for p in paths]
    return names if len(set(names)) == len(names) else [os.path.normpath(p) for p in paths]


def plot_training(runs, out_dir, written):
    palette = colours(len(runs))
    metrics = list(dict.fromkeys(m for run in runs for m in run.fields()))
    metrics.sort(key=lambda m: m != "loss")  # the loss first, the rest as logged

    def chart(path, title, xlabel, ylabel, lines, log_y=False, marks=()):
        """marks: (x values, label) drawn as faint vertical lines."""
        from matplotlib import ticker
        drawn = [line for line in lines if line[1][0]]
        if not drawn:
            return
        figure = new_figure()
        axes = figure.subplots()
        for label, (x, y), colour, test in drawn:
            style = dict(linestyle="--", marker="o", markersize=4) if test else dict(linewidth=1.5)
            if not test and len(x) <= 30:  # an epoch chart's few points, or a line of one point
                style.update(marker=".", markersize=7)
            axes.plot(x, y, color=colour, label=f"{label} (last {number(y[-1])})", **style)
        for xs, label in marks:
            for i, x in enumerate(xs):
                axes.axvline(x, color="grey", alpha=0.4, linewidth=0.8, linestyle=":", label=label if i == 0 else None)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if log_y and all(v > 0 for _, (x, y), _, _ in drawn for v in y):
            axes.set_yscale("log")
            plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
            axes.yaxis.set_major_formatter(plain)
            # A loss curve rarely spans three decades: then 2, 3 and 5 x 10^k are labelled too.
            low, high = axes.get_ylim()
            axes.yaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 5)))
            axes.yaxis.set_minor_formatter(plain if high / low < 1000 else ticker.NullFormatter())
        if xlabel == "epoch":
            axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend()
        save(figure, os.path.join(out_dir, path), written)

    for metric in metrics:
        words = title_words(metric)
        per_step, per_epoch = [], []
        for run, colour in zip(runs, palette):
            per_step.append((f"{run.name} train", run.series("train", metric), colour, False))
            split = run.eval_split()
            per_step.append((f"{run.name} {split}", run.series("eval", f"{split}_{metric}"), colour, True))
            per_epoch.append((f"{run.name} train", run.series("epoch", "train_" + metric), colour, False))
            per_epoch.append((f"{run.name} {split}", run.series("eval", f"{split}_{metric}", by_epoch=True), colour, True))
        log_y = metric == "loss"
        chart(f"{file_name(metric)}_per_step.png", f"{words} per step (train: mean over each logging interval)",
              "global step", words, per_step, log_y)
        chart(f"{file_name(metric)}_per_epoch.png",
              f"{words} per epoch (train: mean over the epoch's steps; test: evaluated at its end)", "epoch", words,
              per_epoch, log_y)
    chart("learning_rate.png", "learning rate per step", "global step", "learning rate",
          [(run.name, run.series("train", "lr"), colour, False) for run, colour in zip(runs, palette)])
    chart("throughput.png", "training throughput (images/s over each logging interval, all ranks)", "global step",
          "images per second",
          [(run.name, run.series("train", "img_per_s"), colour, False) for run, colour in zip(runs, palette)],
          # The interval after an evaluation includes its time (and the checkpoint's): a dip, not a slow step.
          marks=[(sorted({s for run in runs for s in run.eval}), "evaluation and checkpoint")])


# ---------------------------------------------------------------- evaluation

def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (expected {what})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not JSON ({e}; expected {what})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror}; expected {what})") from None


EVAL_JSON = "the output of mpicnn eval --json"


def load_confusion(path):
    report = read_json(path, EVAL_JSON)
    if not isinstance(report, dict):
        raise InputError(f"{path}: not a JSON object (expected {EVAL_JSON})")
    matrix = report.get("confusion_matrix")
    if matrix is None:
        raise InputError(f"{path}: no 'confusion_matrix' (expected {EVAL_JSON} of a classifier)")
    ok = isinstance(matrix, list) and matrix and all(isinstance(row, list) and len(row) == len(matrix) for row in matrix) \
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for row in matrix for v in row)
    if not ok:
        raise InputError(f"{path}: 'confusion_matrix' is not a square list of lists of counts (expected {EVAL_JSON})")
    counts = np.array(matrix, dtype=np.int64)
    names = list(report.get("per_class", {})) if isinstance(report.get("per_class"), dict) else []
    if len(names) != len(counts):
        names = [str(k) for k in range(len(counts))]
    return counts, names, report


def plot_confusion(path, out_dir, written):
    counts, names, report = load_confusion(path)
    k = len(counts)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    accuracy = report.get("accuracy")
    summary = f"{int(counts.sum())} samples" + (f", accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "")
    for values, kind, title in ((counts, "counts", "confusion matrix (counts)"),
                                (normalised, "normalised", "confusion matrix (each row divided by its true-class count)")):
        figure = new_figure()
        axes = figure.subplots()
        # Cells a little wider than tall fill the 3:2 picture; square ones would leave a third of it blank.
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if kind == "normalised" else max(1, values.max()),
                            aspect="auto")
        figure.colorbar(image, ax=axes, pad=0.02)
        if k <= 30:
            font = 10 if k <= 12 else 7
            threshold = (1 if kind == "normalised" else values.max()) / 2
            for i in range(k):
                for j in range(k):
                    text = f"{values[i, j]:.2f}" if kind == "normalised" else str(values[i, j])
                    axes.text(j, i, text, ha="center", va="center", fontsize=font,
                              color="white" if values[i, j] > threshold else "black")
        axes.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
        axes.set_yticks(range(k), names)
        axes.set(xlabel="predicted class", ylabel="true class", title=f"{title}: {summary}")
        save(figure, os.path.join(out_dir, f"confusion_{kind}.png"), written)


PREDICTIONS = "mpicnn predict output: probabilities and labels"


def load_predictions(path):
    """(probabilities (N,K), labels (N)) of a classifier's predictions file (.h5 or .csv)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {PREDICTIONS})")
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        header = lines[0].split(",") if lines else []
        columns = [i for i, name in enumerate(header) if re.fullmatch(r"p\d+", name)]
        if "label" not in header or not columns:
            raise InputError(f"{path}: header lacks 'label' or p0, p1, ... (expected {PREDICTIONS} of a labelled split)")
        if len(lines) < 2:
            raise InputError(f"{path}: no samples under the header (expected {PREDICTIONS})")
        rows = []
        for line_number, line in enumerate(lines[1:], 2):
            fields = line.split(",")
            try:
                rows.append([float(v) for v in fields])
            except ValueError:
                raise InputError(f"{path}: line {line_number}: not numbers (expected {PREDICTIONS})") from None
            if len(fields) != len(header):
                raise InputError(f"{path}: line {line_number}: {len(fields)} fields under a header of {len(header)}")
        rows = np.array(rows)
        probabilities, labels = rows[:, columns], rows[:, header.index("label")]
    else:
        import h5py
        try:
            with h5py.File(path, "r") as f:
                if "probabilities" not in f:
                    held = "regression outputs" if "outputs" in f else "no 'probabilities' dataset"
                    raise InputError(f"{path}: {held} (expected {PREDICTIONS} of a classifier)")
                if "labels" not in f:
                    raise InputError(f"{path}: no 'labels' dataset (expected {PREDICTIONS} of a labelled split)")
                probabilities, labels = f["probabilities"][()], f["labels"][()]
        except OSError as e:
            raise InputError(f"{path}: not an HDF5 file ({e}; expected {PREDICTIONS})") from None
    if probabilities.ndim != 2 or labels.shape != (len(probabilities),) or len(labels) == 0:
        raise InputError(f"{path}: probabilities {probabilities.shape} and labels {labels.shape} do not match "
                         "(expected (N,K) and (N), N > 0)")
    k = probabilities.shape[1]
    if not np.all(np.isfinite(probabilities)) or np.any(labels != np.round(labels)) or labels.min() < 0 \
            or labels.max() >= k:
        raise InputError(f"{path}: labels outside 0..{k - 1} or non-finite probabilities (expected {PREDICTIONS})")
    return probabilities.astype(np.float64), labels.astype(np.int64)


def class_names_for(path, k, names=None):
    """--names, else the classes of an eval.json beside the file, else their indices."""
    if names:
        names = names.split(",")
        if len(names) != k:
            raise InputError(f"{path}: {k} classes, but --names gives {len(names)}")
        return names
    beside = os.path.join(os.path.dirname(path), "eval.json")
    if os.path.isfile(beside):
        try:
            _, found, _ = load_confusion(beside)
            if len(found) == k:
                return found
        except InputError:
            pass  # names are a convenience: a stray file does not stop the picture
    return [str(j) for j in range(k)]


def roc_curve(scores, positive):
    """(false positive rate, true positive rate, AUC) over the distinct score thresholds, highest
    first; tied scores move both rates at once, so the AUC counts ties half (as mpicnn eval's)."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(positive)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    p, n = positive.sum(), len(positive) - positive.sum()
    if p == 0 or n == 0:
        return None
    fpr, tpr = np.r_[0, fp / n], np.r_[0, tp / p]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def precision_recall(scores, positive, truths):
    """(recall, precision, average precision) over the distinct thresholds, highest first. `truths`
    is the count of positives (detection: true boxes, some never found). AP is the sum of
    precision x recall increments (scikit-learn's average_precision_score, not interpolated)."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(positive)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    # Thresholds below the first that finds every positive add only false positives: not drawn.
    full = np.nonzero(tp == truths)[0]
    if len(full):
        tp, precision = tp[:full[0] + 1], precision[:full[0] + 1]
    recall = tp / truths
    ap = float(np.sum(np.diff(np.r_[0, recall]) * precision))
    return np.r_[0, recall], np.r_[precision[0], precision], ap


def curve_legend_columns(count):
    return 1 if count <= 12 else 2


def plot_roc(path, out_dir, written, names=None):
    probabilities, labels = load_predictions(path)
    k = probabilities.shape[1]
    names = class_names_for(path, k, names)
    figure = new_figure()
    axes = figure.subplots()
    aucs = []
    for j, colour in zip(range(k), colours(k)):
        curve = roc_curve(probabilities[:, j], labels == j)
        if curve is None:
            axes.plot([], [], color=colour, label=f"{names[j]} (no samples of it, or only it)")
            continue
        fpr, tpr, auc = curve
        aucs.append(auc)
        axes.plot(fpr, tpr, color=colour, linewidth=1.5, label=f"{names[j]} (AUC {auc:.4f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    macro = f", macro AUC {np.mean(aucs):.4f}" if aucs else ""
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
             ylabel="true positive rate (sensitivity)",
             title=f"ROC curves, one class against the rest: {len(labels)} samples{macro}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", ncols=curve_legend_columns(k))
    save(figure, os.path.join(out_dir, "roc.png"), written)


def holds_detections(path):
    """mpicnn detect's outputs: COCO results .json, or .h5 with boxes (predict's .h5 has probabilities)."""
    if path.endswith(".json"):
        return True
    if not path.endswith(".h5") or not os.path.isfile(path):
        return False
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "boxes" in f and "probabilities" not in f
    except OSError:
        return False  # load_predictions names what is wrong with it


def plot_pr(path, out_dir, written, names=None, iou=0.5, data=None, split="test"):
    if holds_detections(path):
        return plot_detection_pr(path, data, split, out_dir, written, iou)
    probabilities, labels = load_predictions(path)
    k = probabilities.shape[1]
    names = class_names_for(path, k, names)
    figure = new_figure()
    axes = figure.subplots()
    aps = []
    for j, colour in zip(range(k), colours(k)):
        positive = labels == j
        if not positive.any():
            axes.plot([], [], color=colour, label=f"{names[j]} (no samples of it)")
            continue
        recall, precision, ap = precision_recall(probabilities[:, j], positive, positive.sum())
        aps.append(ap)
        axes.plot(recall, precision, color=colour, linewidth=1.5, drawstyle="steps-pre",
                  label=f"{names[j]} (AP {ap:.4f})")
    macro = f", mean AP {np.mean(aps):.4f}" if aps else ""
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision",
             title=f"precision-recall, one class against the rest: {len(labels)} samples{macro}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", ncols=curve_legend_columns(k))
    save(figure, os.path.join(out_dir, "precision_recall.png"), written)


# ---------------------------------------------------------------- detection

DETECTIONS = "mpicnn detect output: COCO results .json or .h5"
BOXES = "a detection dataset: /SPLIT/images, boxes, box_classes, box_offsets (datasets/README.md, Boxes)"
MAX_DETECTIONS = 100  # per image and class, as COCOeval's maxDets[-1] and mpicnn eval


class Split:
    """A detection split of an mpicnn dataset: its boxes per sample, image ids, class names and the
    COCO category id of each class (what mpicnn detect wrote its ids from)."""

    def __init__(self, path, split):
        import h5py
        if not path:
            raise InputError("--data: missing (expected the dataset FILE.h5 mpicnn detect read: its true boxes, "
                             "class names and images)")
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file (expected {BOXES})")
        self.path, self.split = path, split
        try:
            with h5py.File(path, "r") as f:
                keys = [f"{split}/{k}" for k in ("images", "boxes", "box_classes", "box_offsets")]
                if any(k not in f for k in keys):
                    raise InputError(f"{path}: split '{split}' lacks {', '.join(k for k in keys if k not in f)} "
                                     f"(expected {BOXES})")
                self.count = f[keys[0]].shape[0]
                self.boxes = f[keys[1]][()].astype(np.float64)
                self.classes = f[keys[2]][()].astype(np.int64)
                self.offsets = f[keys[3]][()].astype(np.int64)
                crowd = f"{split}/box_iscrowd"
                self.crowd = f[crowd][()].astype(bool) if crowd in f else np.zeros(len(self.classes), bool)
                ids = f"{split}/image_ids"
                self.image_ids = f[ids][()].astype(np.int64) if ids in f else np.arange(self.count, dtype=np.int64)
                k = int(f.attrs.get("num_classes", 0))
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("class_names", [])]
                self.names = names if len(names) == k else [str(j) for j in range(k)]
                categories = np.asarray(f.attrs.get("category_ids", []), dtype=np.int64)
                self.category_ids = categories if len(categories) == k else np.arange(k, dtype=np.int64)
        except OSError as e:
            raise InputError(f"{path}: not an HDF5 file ({e}; expected {BOXES})") from None
        if len(self.offsets) != self.count + 1 or len(self.image_ids) != self.count or k < 1:
            raise InputError(f"{path}: split '{split}': box_offsets or image_ids do not match its {self.count} images "
                             f"(expected {BOXES})")
        self.sample_of_image = {int(i): n for n, i in enumerate(self.image_ids)}
        self.class_of_category = {int(c): j for j, c in enumerate(self.category_ids)}

    def truth(self, n):
        """Sample n's true boxes (M,4 pixel corners), classes (M) and crowd flags (M)."""
        a, b = self.offsets[n], self.offsets[n + 1]
        return self.boxes[a:b], self.classes[a:b], self.crowd[a:b]

    def not_here(self, path, what):
        return InputError(f"{path}: {what} is not in {self.path} split '{self.split}' (expected the detections "
                          f"mpicnn detect wrote with --data {self.path} --split {self.split})")


def load_detections(path, split):
    """Per sample of the split, its detections in file order: lists of (box x1,y1,x2,y2, class, score)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {DETECTIONS})")
    per_sample = [[] for _ in range(split.count)]
    if path.endswith(".json"):
        rows = read_json(path, DETECTIONS)
        if not isinstance(rows, list):
            raise InputError(f"{path}: not a JSON list (expected {DETECTIONS}: image_id, category_id, bbox, score)")
        for i, row in enumerate(rows):
            bbox = row.get("bbox") if isinstance(row, dict) else None
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                    and bbox[2] >= 0 and bbox[3] >= 0 and all(isinstance(row.get(k), (int, float)) for k in
                                                             ("image_id", "category_id", "score"))):
                raise InputError(f"{path}: entry {i}: expected COCO's result {{image_id, category_id, "
                                 "bbox [x, y, w, h] with w, h >= 0, score}")
            if row["image_id"] not in split.sample_of_image:
                raise split.not_here(path, f"entry {i}: image_id {row['image_id']}")
            if row["category_id"] not in split.class_of_category:
                raise split.not_here(path, f"entry {i}: category_id {row['category_id']}")
            # detect wrote float32 corners as x, y, x2 - x; back in float32 they are the corners eval matched.
            x, y, w, h = (float(v) for v in bbox)
            box = np.array([x, y, x + w, y + h], dtype=np.float32).astype(np.float64)
            per_sample[split.sample_of_image[row["image_id"]]].append(
                (box, split.class_of_category[row["category_id"]], float(np.float32(row["score"]))))
        return per_sample
    import h5py
    try:
        with h5py.File(path, "r") as f:
            names = ("boxes", "scores", "classes", "samples", "image_ids", "offsets")
            if any(n not in f for n in names):
                raise InputError(f"{path}: lacks {', '.join(n for n in names if n not in f)} (expected {DETECTIONS})")
            boxes, scores, classes, samples, image_ids, offsets = (f[n][()] for n in names)
    except OSError as e:
        raise InputError(f"{path}: not an HDF5 file ({e}; expected {DETECTIONS})") from None
    if len(offsets) != split.count + 1:
        raise split.not_here(path, f"a file of {len(offsets) - 1} images")
    for i in range(len(scores)):
        n = int(samples[i])
        if not 0 <= n < split.count or split.image_ids[n] != image_ids[i]:
            raise split.not_here(path, f"detection {i}: image_id {int(image_ids[i])} of sample {n}")
        if not 0 <= classes[i] < len(split.names):
            raise InputError(f"{path}: detection {i}: class {int(classes[i])} (expected 0..{len(split.names) - 1})")
        per_sample[n].append((boxes[i].astype(np.float64), int(classes[i]), float(scores[i])))
    return per_sample


def overlaps(box, truth, crowd):
    """IoU of one box with each true box; over the box's own area for crowd regions (COCO's rule)."""
    width = np.clip(np.minimum(box[2], truth[:, 2]) - np.maximum(box[0], truth[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], truth[:, 3]) - np.maximum(box[1], truth[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = np.where(crowd, area, area + (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]) - inter)
    return np.divide(inter, union, out=np.zeros(len(truth)), where=union > 0)


def match_class(split, per_sample, cls, threshold):
    """COCOeval's matching of one class at one IoU threshold (area range all, at most 100
    detections per image): per image (increasing id), detections by score take the unmatched
    non-crowd truth of highest IoU >= threshold, else a crowd region (which may be taken again and
    ignores them). (scores, true positive, ignored) over the split, and the non-crowd truth count."""
    scores, hits, ignored, eligible = [], [], [], 0
    for n in np.argsort(split.image_ids, kind="stable"):
        boxes, classes, crowd = split.truth(n)
        mine = classes == cls
        order = np.r_[np.nonzero(~crowd[mine])[0], np.nonzero(crowd[mine])[0]]
        truth, is_crowd = boxes[mine][order], crowd[mine][order]  # non-crowd first, as COCOeval sorts
        eligible += int((~is_crowd).sum())
        found = [d for d in per_sample[n] if d[1] == cls]
        found = [found[i] for i in np.argsort([-s for _, _, s in found], kind="stable")][:MAX_DETECTIONS]
        taken = np.zeros(len(truth), bool)
        for box, _, score in found:
            iou = overlaps(box, truth, is_crowd)
            best, match = min(threshold, 1 - 1e-10), -1
            for g in range(len(truth)):
                if taken[g] and not is_crowd[g]:
                    continue
                if match > -1 and not is_crowd[match] and is_crowd[g]:
                    break
                if iou[g] >= best:
                    best, match = iou[g], g
            if match >= 0:
                taken[match] = True
            scores.append(score)
            hits.append(match >= 0 and not is_crowd[match])
            ignored.append(match >= 0 and is_crowd[match])
    return np.array(scores), np.array(hits, bool), np.array(ignored, bool), eligible


def coco_precision_recall(scores, hits, ignored, eligible):
    """COCO's AP: precision made monotone (the best at this recall or beyond) and read at the 101
    recall points 0, 0.01, ..., 1 (0 past the last recall reached); AP is their mean. Returns
    (recall points, their precision, AP), or None without non-crowd truth (AP undefined)."""
    if eligible == 0:
        return None
    points = np.linspace(0, 1, 101)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order] & ~ignored[order])
    fp = np.cumsum(~hits[order] & ~ignored[order])
    recall = tp / eligible
    precision = np.maximum.accumulate((tp / (tp + fp + np.finfo(np.float64).eps))[::-1])[::-1]
    at = np.searchsorted(recall, points, side="left")
    read = np.zeros(len(points))
    reached = at < len(recall)
    read[reached] = precision[at[reached]]
    return points, read, float(read.mean())


def plot_detection_pr(path, data, split_name, out_dir, written, threshold):
    split = Split(data, split_name)
    per_sample = load_detections(path, split)
    names = split.names
    figure = new_figure()
    axes = figure.subplots()
    aps = []
    for cls, colour in zip(range(len(names)), colours(len(names))):
        scores, hits, ignored, eligible = match_class(split, per_sample, cls, threshold)
        curve = coco_precision_recall(scores, hits, ignored, eligible)
        if curve is None:
            axes.plot([], [], color=colour, label=f"{names[cls]} (no true boxes)")
            continue
        recall, precision, ap = curve
        aps.append(ap)
        axes.plot(recall, precision, color=colour, linewidth=1.5, label=f"{names[cls]} (AP {ap:.4f}, {eligible} boxes)")
    mean = f", mAP {np.mean(aps):.4f}" if aps else ""
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision (best at this recall or beyond)",
             title=f"detection precision-recall at IoU {threshold:g}, COCO's rule (AP: mean at 101 recall points, "
                   f"as mpicnn eval's)\n{len(per_sample)} images of {split_name}, "
                   f"{sum(len(d) for d in per_sample)} detections{mean}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", ncols=curve_legend_columns(len(names)))
    save(figure, os.path.join(out_dir, "detection_precision_recall.png"), written)
    return aps


def load_images(split, count):
    """The split's first images, as (H,W) or (H,W,3) in [0,1]."""
    import h5py
    with h5py.File(split.path, "r") as f:
        images = f[f"{split.split}/images"]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise InputError(f"{split.path}: /{split.split}/images of shape {images.shape} (expected (N,1|3,H,W))")
        chosen = images[:count]
    out = []
    for image in chosen:
        image = image.astype(np.float64)
        if chosen.dtype == np.uint8:
            image /= 255
        else:  # float datasets keep their own scale: stretch each image for display
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) if high > low else image * 0
        out.append(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    return out


def plot_boxes(path, data, split_name, out_dir, written, count=16, min_score=0.5):
    from matplotlib.patches import Rectangle
    split = Split(data, split_name)
    per_sample = load_detections(path, split)
    names = split.names
    images = load_images(split, count)
    # The grid whose cells are largest, then emptiest least (images are drawn square).
    n = len(images)
    columns = max(range(1, n + 1), key=lambda c: (min(WIDTH / c, HEIGHT / math.ceil(n / c)), -(c * math.ceil(n / c))))
    rows = math.ceil(n / columns)
    figure = new_figure()
    grid = figure.subplots(rows, columns, squeeze=False)
    for cell, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if cell >= n:
            continue
        boxes, classes, crowd = split.truth(cell)
        height, width = images[cell].shape[:2]
        # Pixel edges on whole numbers: a box [0, 0, 10, 10] covers pixels 0..9 exactly.
        axes.imshow(images[cell], cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, width, height, 0))
        for box, is_crowd in zip(boxes, crowd):
            axes.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                     edgecolor="lime", linewidth=2, linestyle=":" if is_crowd else "-"))
        for box, cls, score in (d for d in per_sample[cell] if d[2] >= min_score):
            axes.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                     edgecolor="red", linewidth=1.5, linestyle="--"))
            above = box[1] > 0.12 * height  # else inside the box, clear of the title
            axes.text(box[0], box[1], f"{names[cls]} {score:.2f}", color="white", fontsize=7,
                      va="bottom" if above else "top", clip_on=True,
                      bbox=dict(facecolor="red", alpha=0.7, pad=1, linewidth=0))
        axes.set_title(f"id {split.image_ids[cell]}: " + (", ".join(sorted({names[c] for c in classes})) or "no objects"),
                       fontsize=8)
    figure.suptitle(f"detections on the first {n} images of {split_name}: true boxes green (crowd dotted), "
                    f"predicted boxes red dashed (score >= {min_score:g})")
    save(figure, os.path.join(out_dir, "detections.png"), written)

# ---------------------------------------------------------------- embeddings

EMBEDDINGS = "an HDF5 file with embeddings (N,D) and labels (N)"


def plot_embeddings(path, out_dir, written):
    import h5py
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {EMBEDDINGS})")
    try:
        with h5py.File(path, "r") as f:
            if "embeddings" not in f or "labels" not in f:
                raise InputError(f"{path}: no 'embeddings' or 'labels' dataset (expected {EMBEDDINGS})")
            vectors, labels = f["embeddings"][()], f["labels"][()]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("class_names", [])]
    except OSError as e:
        raise InputError(f"{path}: not an HDF5 file ({e}; expected {EMBEDDINGS})") from None
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2 or labels.shape != (vectors.shape[0],) \
            or not np.issubdtype(labels.dtype, np.integer) or not np.all(np.isfinite(vectors)):
        raise InputError(f"{path}: embeddings {vectors.shape}, labels {labels.shape} {labels.dtype} (expected finite "
                         "(N,D) with N, D >= 2 and integer labels (N))")
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    variance = singular ** 2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    identities = np.unique(labels)
    figure = new_figure()
    axes = figure.subplots()
    palette = colours(len(identities))
    for identity, colour in zip(identities, palette):
        chosen = labels == identity
        name = names[identity] if 0 <= identity < len(names) else str(identity)
        axes.scatter(projected[chosen, 0], projected[chosen, 1], s=14 if len(labels) <= 2000 else 4, color=colour,
                     label=name, alpha=1.0 if len(labels) <= 2000 else 0.5, linewidths=0)
    axes.set(xlabel=f"principal component 1 ({explained[0]:.1%} of the variance)",
             ylabel=f"principal component 2 ({explained[1]:.1%} of the variance)",
             title=f"embeddings projected on their first two principal components: {len(labels)} samples, "
                   f"{vectors.shape[1]} dimensions, {len(identities)} identities")
    axes.grid(True, alpha=0.3)
    if len(identities) <= 20:
        axes.legend(title="identity", loc="best", ncols=1 if len(identities) <= 10 else 2, fontsize=8)
    save(figure, os.path.join(out_dir, "embeddings_pca.png"), written)


# ---------------------------------------------------------------- command line

def found(folder, *names):
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    return paths[0] if paths else None


def command_all(args, out_dir, written):
    """Training charts of every run together; each run's evaluation pictures in its own folder
    when there are several. A regression run's eval.json and predictions are skipped, not errors."""
    names = run_names(args.runs)
    runs = [load_run(name, path) for name, path in zip(names, args.runs)]
    plot_training(runs, out_dir, written)
    for name, path in zip(names, args.runs):
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        target = out_dir if len(args.runs) == 1 else os.path.join(out_dir, file_name(name))
        report = found(folder, "eval.json")
        if report:
            content = read_json(report, EVAL_JSON)
            if not isinstance(content, dict) or "confusion_matrix" in content:
                plot_confusion(report, target, written)
        predictions = found(folder, "predictions.h5", "predictions.csv")
        if predictions and not holds_regression_outputs(predictions):
            plot_roc(predictions, target, written)
            plot_pr(predictions, target, written)
        detections = found(folder, "detections.json", "detections.h5", "dets.json", "dets.h5")
        if detections and args.data:
            plot_boxes(detections, args.data, args.split, target, written)
            plot_detection_pr(detections, args.data, args.split, target, written, args.iou)
        elif detections:  # the boxes and images are in the dataset, which a run folder does not hold
            print(f"skipped {detections}: detection pictures need --data FILE.h5", flush=True)
        embeddings = found(folder, "embeddings.h5")
        if embeddings:
            plot_embeddings(embeddings, target, written)


def holds_regression_outputs(path):
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip().split(",")
        return "y0" in header and "p0" not in header
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "outputs" in f and "probabilities" not in f
    except OSError:
        return False  # load_predictions names what is wrong with it


def output_dir(args):
    if args.output:
        return args.output
    first = args.runs[0] if hasattr(args, "runs") else args.file
    if hasattr(args, "runs") and len(args.runs) > 1:
        raise InputError(f"{' '.join(args.runs)}: several run folders (expected --output DIR for their pictures)")
    folder = first if os.path.isdir(first) else os.path.dirname(first) or "."
    return os.path.join(folder, "plots")


def check_writable(out_dir):
    """Before any drawing, without creating anything yet (the inputs may still be wrong)."""
    probe = os.path.abspath(out_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise InputError(f"{out_dir}: cannot be created: {probe} is not a writable folder")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, as for bad files: usage mistakes are not worth a screenful."""
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(1)


def dataset_options(c):
    c.add_argument("--data", metavar="FILE.h5", help="detections: the dataset mpicnn detect read (true boxes, "
                                                     "class names, category ids, images)")
    c.add_argument("--split", default="test", help="detections: its split (test)")


def parser():
    p = Parser(prog="plot.py", description=__doc__.split("\n\n")[0],
               epilog="Pictures are PNG, 1200x800 pixels. Output folder: --output, else plots/ in the input's "
                      "folder (several run folders need --output). README.md, section Pictures, describes the "
                      "input formats.")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name, help_text):
        c = commands.add_parser(name, help=help_text, description=help_text)
        c.add_argument("-o", "--output", metavar="DIR",
                       help="folder for the PNG files (default: INPUT_FOLDER/plots; needed with several run folders)")
        return c

    c = command("all", "every picture the run folders hold inputs for: metrics.jsonl (required), eval.json, "
                       "predictions.h5|.csv, detections.json|.h5 or dets.json|.h5 (with --data), embeddings.h5; several runs share "
                       "the training charts")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--iou", type=float, default=0.5, help="detections: IoU a predicted box needs to count (0.5)")
    dataset_options(c)
    c = command("training", "loss, accuracy (every metric in metrics.jsonl) per step and per epoch, train and test; "
                            "learning rate; images/s. Several runs on each chart")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR|metrics.jsonl")
    c = command("confusion", "confusion matrix of an evaluation, counts and normalised by true class")
    c.add_argument("file", metavar="EVAL_JSON", help="the output of mpicnn eval --json")
    for name, text in (("roc", "ROC curves per class, one class against the rest, with their AUC"),
                       ("pr", "precision-recall curves per class with their average precision: from predictions "
                              "(one against the rest) or from detections (boxes matched at --iou)")):
        c = command(name, text)
        c.add_argument("file", metavar="PREDICTIONS" if name == "roc" else "PREDICTIONS|DETECTIONS",
                       help="mpicnn predict output (.h5 or .csv)" +
                            (", or mpicnn detect output (.json or .h5, with --data)" if name == "pr" else ""))
        c.add_argument("--names", help="class names, comma-separated (default: from eval.json beside the file, "
                                       "else the class indices)")
        if name == "pr":
            c.add_argument("--iou", type=float, default=0.5, help="detections: IoU a predicted box needs (0.5)")
            dataset_options(c)
    c = command("boxes", "a grid of test images with true (green) and predicted (red) boxes")
    c.add_argument("file", metavar="DETECTIONS", help="mpicnn detect output (.json or .h5)")
    dataset_options(c)
    c.add_argument("--count", type=int, default=16, help="images in the grid (16)")
    c.add_argument("--min-score", type=float, default=0.5, help="predicted boxes shown from this score (0.5)")
    c = command("embeddings", "embeddings projected on their first two principal components, coloured by identity")
    c.add_argument("file", metavar="EMBEDDINGS_H5")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if not args.command:
        p.print_help(sys.stderr)
        return 2
    written = []  # paths, each printed as it is written
    try:
        iou = getattr(args, "iou", None)  # all and pr only
        if iou is not None and not 0 < iou <= 1:
            raise InputError(f"--iou {iou}: expected an overlap in (0, 1]")
        out = output_dir(args)
        check_writable(out)
        if args.command == "all":
            command_all(args, out, written)
        elif args.command == "training":
            names = run_names(args.runs)
            plot_training([load_run(n, r) for n, r in zip(names, args.runs)], out, written)
        elif args.command == "confusion":
            plot_confusion(args.file, out, written)
        elif args.command == "roc":
            plot_roc(args.file, out, written, args.names)
        elif args.command == "pr":
            plot_pr(args.file, out, written, args.names, args.iou, args.data, args.split)
        elif args.command == "boxes":
            if args.count < 1:
                raise InputError(f"--count {args.count}: expected at least 1 image")
            plot_boxes(args.file, args.data, args.split, out, written, args.count, args.min_score)
        elif args.command == "embeddings":
            plot_embeddings(args.file, out, written)
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except OSError as e:  # an output file that cannot be written after all (disk full, ...)
        sys.stderr.write(f"error: {e.filename}: {e.strerror} (expected a writable output folder)\n")
        return 1
    if not written:
        sys.stderr.write("error: nothing to draw (expected at least one finite value)\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
