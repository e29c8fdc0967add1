#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/ (committed; rerun after a format change):
  make_seeds.py --mpicnn build/mpicnn      (make_seeds.py --medical-only: the NIfTI and DICOM seeds only)
The checkpoint seeds are trained by mpicnn itself on a tiny dataset; the NIfTI and DICOM seeds are
nibabel's and pydicom's test files."""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reliability"))
from common import mpicnn_env, write_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


NIBABEL_DATA = "/usr/lib/python3/dist-packages/nibabel/tests/data"
PYDICOM_DATA = "/usr/lib/python3/dist-packages/pydicom/data/test_files"


def medical_seeds():
    """NIfTI and DICOM seeds: files Debian's python3-nibabel and python3-pydicom ship as their test
    data (byte 0: the fuzz target's mode, fuzz_nifti.cpp and fuzz_dicom.cpp say which bit is what)."""
    import gzip
    for target in ("nifti", "dicom"):
        shutil.rmtree(os.path.join(HERE, "corpus", target), ignore_errors=True)
    for name, mode in (("anatomical.nii", 0), ("anatomical.nii", 4 | 8), ("standard.nii.gz", 1 | 4),
                       ("example_nifti2.nii.gz", 1 | 2), ("example4d.nii.gz", 1 | 2 | 16)):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(NIBABEL_DATA, name), "rb") as f:  # gzip bit set: the target compresses
            voxels = f.read()
        if len(voxels) > 200_000:  # example4d: the header and the first slices are enough
            voxels = voxels[:200_000]
        put("nifti", f"{name.split('.')[0]}_mode{mode}", bytes([mode]) + voxels)
    for name, mode in (("CT_small.dcm", 0), ("CT_small.dcm", 2 | 4), ("MR_small.dcm", 0), ("MR_small_RLE.dcm", 0),
                       ("MR_small_bigendian.dcm", 4 | 8), ("MR_small_implicit.dcm", 0), ("MR_small_jpeg_ls_lossless.dcm", 0),
                       ("MR_small_jp2klossless.dcm", 0), ("JPEG2000.dcm", 4), ("MR_small.dcm", 1 | 4)):
        with open(os.path.join(PYDICOM_DATA, name), "rb") as f:
            data = f.read()
        if mode & 1:  # two files: the same one twice
            data = data + data
        put("dicom", f"{name.split('.')[0]}_mode{mode}", bytes([mode]) + data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mpicnn")
    parser.add_argument("--medical-only", action="store_true", help="rewrite only the NIfTI and DICOM seeds")
    args = parser.parse_args()
    if args.medical_only:
        return medical_seeds()
    if not args.mpicnn:
        parser.error("--mpicnn is required (except with --medical-only)")
    shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
    medical_seeds()

    put("settings", "full.ini", "[data]\npath = data.h5\nnormalize = true\nmean = 0.5\n[model]\n"
        "spec = conv(4,3) relu flatten dense(3)\ninit = xavier\n[train]\nepochs = 2\nbatch_size = 64\nseed = 7\n"
        "[optimizer]\nlr = 0.05\nmomentum = 0.9\n")
    put("settings", "comments.ini", "# comment\n; other\n[train]\nepochs=3 \n\n[optimizer]\nlr = 1e-3\n[data]\npath=x.h5\n")
    put("settings", "with_args.ini", "[data]\npath = a.h5\n\0--train.epochs=4\0--optimizer.lr\x000.1\0--json")
    put("settings", "unknown.ini", "[trian]\nepoch = 2\n[data]\npath = a.h5\n")
    put("settings", "help.ini", "\0--help")

    # COCO JSON: a minimal file, one without annotations, and a few generated canvases (crowd added).
    put("coco", "minimal.json", '{"images":[{"id":7,"file_name":"a.png","width":10,"height":8}],'
        '"annotations":[{"id":1,"image_id":7,"category_id":3,"bbox":[0.5,1,9.5,7],"iscrowd":0}],'
        '"categories":[{"id":3,"name":"x"}]}')
    put("coco", "empty_annotations.json", '{"images":[],"annotations":[],"categories":[{"id":1,"name":"a"},{"id":5,"name":"b"}]}')
    with tempfile.TemporaryDirectory() as canvases:
        subprocess.run([sys.executable, os.path.join(HERE, "..", "..", "scripts", "make_detection_dataset.py"), canvases,
                        "--train", "3", "--test", "1"], check=True, capture_output=True)
        with open(os.path.join(canvases, "train.json")) as f:
            coco = json.load(f)
        coco["annotations"][0]["iscrowd"] = 1
        put("coco", "generated_small.json", json.dumps(coco))

    # Box arrays: byte recipes (fuzz_boxes.cpp reads sizes, presence, types and values from them).
    rng = random.Random(17)
    for name in ("recipe_a", "recipe_b", "recipe_c"):
        put("boxes", name, bytes(rng.randrange(256) for _ in range(160)))
    put("boxes", "recipe_zeros", bytes(160))

    specs = ["conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)",
             "conv(8,3,stride=2,pad=1,bias=false) leakyrelu(slope=0.1) avgpool(2,stride=1) flatten dense(4)",
             "conv(filters=4,kernel=3) sigmoid maxpool(window=2,stride=2,pad=1) tanh flatten dense(3)",
             "flatten dense(3) relu dense(2)",
             "conv(8,3,pad=1,bias=false) bn relu residual{conv(8,3,pad=1,bias=false) bn relu dropout(0.2) "
             "conv(8,3,pad=1,bias=false) bn} relu residual{conv(16,3,stride=2,pad=1,bias=false) bn | "
             "conv(16,1,stride=2,bias=false) bn(eps=0.001,momentum=0.5,affine=false)} relu globalavgpool flatten dense(5)",
             "repeat(2){conv(4,3,pad=1) bn relu} globalmaxpool flatten repeat(3){dense(4) dropout(p=0.5)} dense(2)"]
    for i, spec in enumerate(specs):
        put("spec", f"spec{i}", bytes([0, 27, 27]) + spec.encode())
    put("spec", "rgb", bytes([2, 31, 31]) + specs[0].encode())

    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data.h5")
        write_dataset(data, n_train=4, n_test=2, shape=(1, 4, 4), classes=3)
        with open(data, "rb") as f:
            put("dataset", "valid_uint8", b"\0" + f.read())
        write_dataset(data, n_train=3, n_test=2, shape=(2, 3, 3), classes=2, dtype="float32")
        with open(data, "rb") as f:
            put("dataset", "valid_float32", b"\0" + f.read())
        # Recipes (odd first byte): a few byte strings the recipe reader turns into files.
        put("dataset", "recipe_valid", bytes([1, 2, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 3, 0, 3, 1, 1, 3, 0]) + bytes(range(64)))
        put("dataset", "recipe_random", bytes([1]) + bytes((i * 37) % 256 for i in range(200)))

        # no_class_names: the checkpoint of a dataset without class names (an empty string array;
        # such checkpoints could not be read back once).
        for name, spec, extra, attrs in (
                ("sgd", "conv(2,3) relu flatten dense(3)", [], {}),
                ("adam", "conv(2,3,bias=false) maxpool(2) flatten dense(3)", ["--optimizer.name=adam"], {}),
                ("no_class_names", "flatten dense(3)", [], {"class_names": None})):
            write_dataset(data, n_train=16, n_test=4, shape=(1, 6, 6), classes=3, attrs=attrs)
            subprocess.run([os.path.abspath(args.mpicnn), "train", "--data.path=data.h5", f"--model.spec={spec}",
                            "--train.epochs=1", "--train.batch_size=8", "--output=run", "--checkpoint.keep=1"] + extra,
                           cwd=work, env=mpicnn_env(), check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(work, "run", "ckpt-000000002.h5"), "rb") as f:
                put("checkpoint", name, f.read())
            shutil.rmtree(os.path.join(work, "run"))


if __name__ == "__main__":
    main()
