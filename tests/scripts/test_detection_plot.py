#!/usr/bin/python3
"""scripts/plot.py on mpicnn detect's own outputs (issue 19), one case per CTest test:

  test_detection_plot.py --list | --mpicnn EXE --work DIR setup | --work DIR CASE

The setup makes a canvas set (scripts/make_detection_dataset.py -> mpicnn convert --format coco),
trains a small FCOS detector for 40 epochs of 96 images on 1 rank, and writes `mpicnn eval --json`
and `mpicnn detect` to .json and .h5 (and on the train split, for the bad-input case). The cases check
the PNGs (1200x800, the colours drawn), that plot.py's COCO AP per class equals eval's ap50_k and
ap75_k (same rule, both in double: only the summation order of 101 values differs, so 1e-12), and
the one-line errors.
"""
import json
import os
import shutil
import subprocess
import sys

from test_plot import (BLUE, ORANGE, GREEN_BOX, RED_BOX, Failure, check, check_written, fresh, load_plot_module,
                       plot)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "..", "scripts")
SPEC = ("conv(8,3,pad=1,bias=false) bn relu maxpool(2) conv(16,3,pad=1,bias=false) bn relu maxpool(2) "
        "conv(16,3,pad=1) relu maxpool(2) conv(15,1)")
TOLERANCE = 1e-12


def setup(mpicnn, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    def run(*command):
        result = subprocess.run([str(c) for c in command], cwd=work, capture_output=True, text=True, timeout=100)
        check(result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stderr}")
        return result.stdout

    run("/usr/bin/python3", os.path.join(SCRIPTS, "make_detection_dataset.py"), "canvases", "--train", 96,
        "--test", 40, "--size", 64, "--seed", 5)
    run(mpicnn, "convert", "--format", "coco", "--input", "train=canvases/train.json,test=canvases/test.json",
        "--images", "canvases/images", "--output", "canvases.h5")
    run(mpicnn, "train", "--data.path", "canvases.h5", "--model.spec", SPEC, "--loss.kind", "detection",
        "--train.batch_size", 16, "--train.epochs", 40, "--optimizer.name", "adam", "--optimizer.lr", 0.003,
        "--train.threads", 1, "--train.progress", "lines", "--output", "run")
    with open(os.path.join(work, "run", "eval.json"), "w") as f:
        f.write(run(mpicnn, "eval", "--checkpoint", "run", "--data", "canvases.h5", "--json"))
    for output in ("run/dets.json", "run/dets.h5"):
        run(mpicnn, "detect", "--checkpoint", "run", "--data", "canvases.h5", "--output", output)
    run(mpicnn, "detect", "--checkpoint", "run", "--data", "canvases.h5", "--split", "train", "--output", "train.json")


def data(work):
    return os.path.join(work, "canvases.h5")


def case_pr(work):
    module = load_plot_module()
    metrics = json.load(open(os.path.join(work, "run", "eval.json")))["metrics"]
    for name in ("dets.json", "dets.h5"):
        out = fresh(work, "pr_" + name)
        check_written(plot("pr", os.path.join(work, "run", name), "--data", data(work), "-o", out), out,
                      ["detection_precision_recall.png"], [BLUE, ORANGE])
        split = module.Split(data(work), "test")
        found = module.load_detections(os.path.join(work, "run", name), split)
        for threshold, figure in ((0.5, "ap50"), (0.75, "ap75")):
            for k in range(len(split.names)):
                curve = module.coco_precision_recall(*module.match_class(split, found, k, threshold))
                ap, expected = curve[2], metrics[f"{figure}_{k}"]
                check(abs(ap - expected) <= TOLERANCE, f"{name}: class {k} AP@{threshold} {ap}, eval's {expected}")
        check(metrics["ap50"] > 0, "the detector found nothing: the agreement would be trivial")
    print("AP per class agrees with eval's ap50_k and ap75_k; eval's mean AP50", metrics["ap50"])


def case_boxes(work):
    for name in ("dets.json", "dets.h5"):
        out = fresh(work, "boxes_" + name)
        check_written(plot("boxes", os.path.join(work, "run", name), "--data", data(work), "--min-score", "0.2",
                           "-o", out), out, ["detections.png"], [GREEN_BOX, RED_BOX])


def case_all(work):
    out = fresh(work, "all")
    result = plot("all", os.path.join(work, "run"), "--data", data(work), "-o", out)
    check(result.returncode == 0 and os.path.isfile(os.path.join(out, "detections.png"))
          and os.path.isfile(os.path.join(out, "detection_precision_recall.png")), "all: no detection pictures")


def error_cases():
    return {
        "other_split": (lambda work: ["pr", os.path.join(work, "train.json"), "--data", data(work)],
                        ["train.json: entry", "is not in", "split 'test'", "--split test"]),
        "missing_data": (lambda work: ["boxes", os.path.join(work, "run", "dets.h5")], ["--data: missing"]),
        "data_without_boxes": (lambda work: ["pr", os.path.join(work, "run", "dets.json"), "--data",
                                             data(work), "--split", "val"], ["split 'val' lacks", "boxes"]),
    }


def run_error_case(work, name):
    arguments, expected = error_cases()[name]
    out = fresh(work, "error_" + name)
    result = plot(*arguments(work), "-o", out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    check(result.returncode == 1, f"exit status {result.returncode}, expected 1")
    check(len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line, got {lines}")
    missing = [text for text in expected if text not in lines[0]]
    check(not missing, f"the error line lacks {missing}")
    check(not os.path.exists(out), "pictures written despite the error")


CASES = {"pr": case_pr, "boxes": case_boxes, "all": case_all}


def main():
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--mpicnn")
    parser.add_argument("--work")
    parser.add_argument("case", nargs="?")
    args = parser.parse_args()
    if args.list:
        print("\n".join(list(CASES) + ["error." + name for name in error_cases()]))
        return 0
    work = os.path.abspath(args.work)
    try:
        if args.case == "setup":
            setup(os.path.abspath(args.mpicnn), work)
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
