#!/usr/bin/python3
"""scripts/make_detection_dataset.py through `mpicnn convert --format coco`, and the converter's bad
inputs. `setup` writes a small generated set (the fixture); each other case is one CTest test:

    test_coco_convert.py --mpicnn BIN --work DIR setup|roundtrip|resized|<bad input case>

roundtrip: every box of the HDF5 file equals its COCO bbox [x, y, w, h] as x1 = x, y1 = y,
x2 = x + w, y2 = y + h (float32), in the JSON's order within each image, images in id order; classes
are category ids mapped in increasing order; pixels equal the PNGs; class names kept.
resized: --height 48 --width 64 scales x by 64/96 and y by 48/96 (in double, then float32);
resized_shape: the same with --shape 48,64.
crowd: iscrowd 1 on some annotations (absent on one: 0) comes out as box_iscrowd.
Bad inputs: exit status 1 and one line `error: <json file>: annotation <id>: ...` (or image <id>).
"""
import argparse
import copy
import json
import os
import subprocess
import sys

import h5py
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "make_detection_dataset.py")


def convert(args, work, inputs, output, *extra):
    return subprocess.run([args.mpicnn, "convert", "--format", "coco", "--input", inputs, "--images",
                           os.path.join(work, "images"), "--output", output, *extra], capture_output=True, text=True)


def inputs_of(work):
    return f"train={work}/train.json,test={work}/test.json"


def check_split(f, work, split, scale_x=1.0, scale_y=1.0, pixels=True):
    coco = json.load(open(os.path.join(work, f"{split}.json")))
    ids = sorted(c["id"] for c in coco["categories"])
    images = sorted(coco["images"], key=lambda i: i["id"])
    s = f[split]
    boxes, classes, offsets = s["boxes"][...], s["box_classes"][...], s["box_offsets"][...]
    assert boxes.dtype == np.float32 and offsets[0] == 0 and offsets[-1] == len(boxes) == len(coco["annotations"])
    assert list(s["image_ids"][...]) == [i["id"] for i in images]
    for n, image in enumerate(images):
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected = np.array([[x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y] for x, y, w, h in
                             (a["bbox"] for a in anns)], dtype=np.float32).reshape(-1, 4)
        got = boxes[offsets[n]:offsets[n + 1]]
        assert np.array_equal(got, expected), (split, image["id"], got, expected)
        assert list(classes[offsets[n]:offsets[n + 1]]) == [ids.index(a["category_id"]) for a in anns]
        present = np.zeros(len(ids), np.float32)
        present[[ids.index(a["category_id"]) for a in anns]] = 1
        assert np.array_equal(s["targets"][n], present)
        if pixels:
            png = np.asarray(Image.open(os.path.join(work, "images", image["file_name"])))
            assert np.array_equal(s["images"][n, 0], png), (split, image["id"])
    assert not s["box_iscrowd"][...].any()
    return len(boxes)


def case_setup(args, work):
    subprocess.run([sys.executable, SCRIPT, work, "--train", "40", "--test", "12"], check=True)
    again = work + "-again"
    subprocess.run([sys.executable, SCRIPT, again, "--train", "40", "--test", "12"], check=True, capture_output=True)
    for name in ("train.json", "test.json", "images/train/000007.png"):
        assert open(os.path.join(work, name), "rb").read() == open(os.path.join(again, name), "rb").read(), name


def case_roundtrip(args, work):
    out = os.path.join(work, "canvas.h5")
    result = convert(args, work, inputs_of(work), out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["class_names"]]
        assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and f.attrs["num_classes"] == 10
        assert list(f.attrs["category_ids"]) == list(range(1, 11)), f.attrs["category_ids"]  # COCO's, per class
        assert f["train/images"].shape == (40, 1, 96, 96)
        count = check_split(f, work, "train") + check_split(f, work, "test")
    shown = subprocess.run([args.mpicnn, "inspect", out], capture_output=True, text=True, check=True).stdout
    with h5py.File(out) as f:
        train_boxes = len(f["train/boxes"])
    assert f"{train_boxes} boxes (0 crowd)" in shown, shown
    print(f"[ figure ] {count} boxes of 52 canvases round trip exactly, pixels identical")


def case_resized(args, work, size=("--height", "48", "--width", "64")):
    out = os.path.join(work, "resized.h5" if size[0] == "--height" else "resized_shape.h5")
    result = convert(args, work, inputs_of(work), out, *size)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        assert f["train/images"].shape == (40, 1, 48, 64)
        count = check_split(f, work, "train", 64 / 96, 48 / 96, pixels=False)
    print(f"[ figure ] {count} boxes scaled to 64x48 exactly")


def case_crowd(args, work):
    coco = json.load(open(os.path.join(work, "train.json")))
    crowd = [a["id"] for a in coco["annotations"][::5]]
    for a in coco["annotations"][::5]:
        a["iscrowd"] = 1
    del coco["annotations"][1]["iscrowd"]  # optional in COCO: 0
    path, out = os.path.join(work, "crowd.json"), os.path.join(work, "crowd.h5")
    json.dump(coco, open(path, "w"))
    result = convert(args, work, path, out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        offsets, flags = f["train/box_offsets"][...], f["train/box_iscrowd"][...]
        images = sorted(coco["images"], key=lambda i: i["id"])
        expected = [int(a["id"] in crowd) for image in images for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert list(flags) == expected and offsets[-1] == len(expected)
    print(f"[ figure ] {sum(expected)} crowd boxes of {len(expected)} kept as box_iscrowd")


def case_resized_shape(args, work):
    case_resized(args, work, ("--shape", "48,64"))


# Bad inputs: a change to train.json, and what the one-line message must contain.
def first_annotation(coco):
    return coco["annotations"][0]


def break_outside(coco):
    a = first_annotation(coco)
    a["bbox"][0] = 96 - a["bbox"][2] + 0.5
    return f"annotation {a['id']}: bbox", "is outside image 1 (96x96, WxH)"


def break_zero_area(coco):
    a = first_annotation(coco)
    a["bbox"][3] = 0
    return f"annotation {a['id']}: bbox", "has zero area"


def break_category(coco):
    a = first_annotation(coco)
    a["category_id"] = 42
    return f"annotation {a['id']}: unknown category_id 42", "(categories: 1, 2, 3"


def break_image_id(coco):
    a = first_annotation(coco)
    a["image_id"] = 999
    return f"annotation {a['id']}: image_id 999 is not in 'images'", ""


def break_missing_file(coco):
    coco["images"][2]["file_name"] = "train/nowhere.png"
    return "image 3 ('", "nowhere.png'): file not found"


def break_schema_bbox(coco):
    a = first_annotation(coco)
    a["bbox"] = [1, 2, 3]
    return f"annotation {a['id']}: 'bbox' is [1,2,3]", "expected [x, y, width, height] numbers"


def break_schema_annotations(coco):
    coco["annotations"] = {"not": "a list"}
    return "'annotations' is object", "expected an array (COCO's schema)"


def break_schema_missing_id(coco):
    del coco["annotations"][1]["id"]
    return "annotation #1: missing 'id'", ""


def break_crowd(coco):
    a = first_annotation(coco)
    a["iscrowd"] = 2
    return f"annotation {a['id']}: 'iscrowd' is 2", "expected 0 or 1"


def break_not_json(coco):
    return None, "not valid JSON"


OVERFLOW = "__number_past_double__"


def break_number_overflow(coco):
    # Valid JSON whose number has no double: the JSON library throws out_of_range, not parse_error
    # (a fuzzing finding, tests/fuzz/regressions/coco/).
    coco["images"][0]["width"] = OVERFLOW
    return "not valid JSON", "number overflow parsing '1e99999'"


BAD = {name[len("break_"):]: f for name, f in globals().items() if name.startswith("break_")}


def case_bad(args, work, name):
    coco = json.load(open(os.path.join(work, "train.json")))
    broken = copy.deepcopy(coco)
    first, second = BAD[name](broken)
    path = os.path.join(work, f"bad_{name}.json")
    with open(path, "w") as f:
        f.write('{"images": [' if first is None else json.dumps(broken).replace(f'"{OVERFLOW}"', "1e99999"))
    result = convert(args, work, path, os.path.join(work, f"bad_{name}.h5"))
    message = result.stderr.strip()
    assert result.returncode == 1, (result.returncode, message)
    assert message.count("\n") == 0 and message.startswith(f"error: {path}: "), message
    assert (first or "") in message and second in message, message
    assert not os.path.exists(os.path.join(work, f"bad_{name}.h5")), "a file was left behind"
    print(f"[ message ] {message}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mpicnn")
    parser.add_argument("--work")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("case", nargs="?")
    args = parser.parse_args()
    if args.list:
        print("\n".join(["roundtrip", "resized", "resized_shape", "crowd"] + ["bad_" + n for n in BAD]))
        return
    work = args.work
    if args.case == "setup":
        case_setup(args, work)
    elif args.case in ("roundtrip", "resized", "resized_shape", "crowd"):
        globals()["case_" + args.case](args, work)
    else:
        case_bad(args, work, args.case[len("bad_"):])


if __name__ == "__main__":
    main()
