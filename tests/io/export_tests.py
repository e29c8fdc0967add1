#!/usr/bin/python3
"""Export tests (mpicnn export): ONNX checker, onnxruntime-node and PyTorch against mpicnn's own
forward pass, the HDF5 inference bundle, and bad input. Run by CTest (tests/io/CMakeLists.txt) with
Debian's /usr/bin/python3 (numpy, h5py, onnx, torch), one case per test:

  export_tests.py --mpicnn EXE --dump-logits EXE [--sha256 EXE] [--onnx-blocks EXE] --work DIR
                  [--node-modules DIR] [--mpiexec EXE] CASE [ARCH]

Cases: sha256 (mpicnn's SHA-256 against hashlib), setup (tiny datasets and trained checkpoints),
setup_fashion_mnist, onnx_checker, onnxruntime ARCH, pytorch ARCH, bundle ARCH, errors,
onnx_blocks BLOCK_ARCH, onnx_blocks_errors, embedding (the ArcFace model emb cut at its embedding:
export --cut embedding in onnxruntime and predict --cut embedding against mpicnn embed, 1e-5).
ARCH: a (conv/maxpool/dense classifier, 3 channels, non-square images, trained on 2 ranks),
b (avgpool with pad and stride 2, leakyrelu, tanh, sigmoid, maxpool with pad, conv without bias,
conv after dense; mse regression), fmnist (the reference CNN briefly trained on Fashion-MNIST).

onnx_blocks_errors: export of a BatchNorm whose statistics were never updated.
onnx_blocks BLOCK_ARCH: a model with residual blocks, repeat, BatchNorm, dropout and global pooling (or volumes),
built in memory by io_onnx_blocks (checkpoints hold no running statistics yet); BLOCK_ARCH: resnet
(a small ResNet: repeat of identity blocks, a strided block with a projection shortcut, bn with and
without affine, dropout, globalavgpool), mixed (BN after dense, a residual on flat values with a
convolution shortcut, dropout-only branches, globalmaxpool, globalavgpool of a flat value, absorbed
ReLU, a convolution as the last layer; mse), volume (conv3d, bn, residual blocks, maxpool3d, avgpool3d and
globalavgpool on 5-D tensors), volume_max (globalmaxpool of a volume).

Metric everywhere: max over all samples and outputs of |a - b| (float32 values), tolerance 1e-4;
onnx_blocks: that maximum divided by the largest |engine value| of the output, tolerance 1e-5.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-4

ARCHS = {
    "a": dict(
        spec="conv(8,3,pad=1) relu maxpool(2) conv(16,3) relu maxpool(2,stride=2,pad=1) flatten dense(32) relu dense(4)",
        data="a.h5", run="run_a", loss="cross_entropy", ranks=2, lr=0.01),
    "b": dict(
        spec="conv(6,5,stride=2,pad=2) leakyrelu(slope=0.2) avgpool(3,stride=2,pad=1) conv(8,3,pad=1,bias=false) "
             "tanh maxpool(2,stride=2,pad=1) flatten dense(16) sigmoid conv(5,1)",
        data="b.h5", run="run_b", loss="mse", ranks=1, lr=0.05),
    # Trained through mpicnn train on 2 ranks: BatchNorm running statistics from the trainer's
    # commits, dropout active in training and removed in the export.
    "c": dict(
        spec="conv(8,3,pad=1,bias=false) bn relu residual{conv(8,3,pad=1,bias=false) bn relu dropout(0.2) "
             "conv(8,3,pad=1,bias=false) bn} relu residual{conv(16,3,stride=2,pad=1,bias=false) bn relu "
             "conv(16,3,pad=1,bias=false) bn | conv(16,1,stride=2,bias=false) bn} relu globalavgpool flatten "
             "dropout(0.3) dense(4)",
        data="a.h5", run="run_c", loss="cross_entropy", ranks=2, lr=0.05),
    # b.h5's 0/1 labels as a multi-label task: sigmoid outputs ('probabilities') in the ONNX graph.
    "bml": dict(
        spec="conv(6,5,stride=2,pad=2) relu maxpool(2) conv(8,3,pad=1,bias=false) bn relu globalavgpool flatten dense(5)",
        data="b.h5", run="run_bml", loss="bce", ranks=2, lr=0.05),
    # configs/resnet18_28.ini's ResNet-18 (28) with 4 classes, on a.h5 (3x20x16), a few steps on
    # 2 ranks: its bundle must load into torchvision's resnet18 with strict=True.
    "r18": dict(spec=None, data="a.h5", run="run_r18", loss="cross_entropy", ranks=2, lr=0.01),
    # An ArcFace embedding model on a.h5's 4 classes, trained on 2 ranks: `export --cut embedding`
    # and `predict --cut embedding` against `mpicnn embed` (case embedding).
    "emb": dict(
        spec="conv(8,3,pad=1) bn relu maxpool(2) flatten dense(8,bias=false) bn l2norm cosine(4)",
        data="a.h5", run="run_emb", loss="arcface", ranks=2, lr=0.05, extra=["--loss.scale", 16]),
    "fmnist": dict(
        spec="conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)",
        data="fashion_mnist.h5", run="run_fmnist", loss="cross_entropy", ranks=1, lr=0.02),
}
CLASS_NAMES_A = ["naevus", "melanoma", "basal cell", 'type "B"']

BLOCK_TOLERANCE = 1e-5
BLOCK_ARCHS = {
    "resnet": dict(
        spec="conv(8,3,pad=1,bias=false) bn relu "
             "repeat(2){residual{conv(8,3,pad=1,bias=false) bn relu dropout(0.2) conv(8,3,pad=1,bias=false) bn} relu} "
             "residual{conv(16,3,stride=2,pad=1,bias=false) bn relu conv(16,3,pad=1,bias=false) bn(affine=false) "
             "| conv(16,1,stride=2,bias=false) bn} relu dropout(0.3) globalavgpool flatten dense(5)",
        input="3,12,10", loss="cross_entropy",
        ops={"Conv": 8, "BatchNormalization": 8, "Add": 3, "Relu": 7, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
        nodes={"layer0_conv": "Conv", "layer1_bn": "BatchNormalization", "layer3.0.0.main.0_conv": "Conv",
               "layer3.1.0.main.5_bn": "BatchNormalization", "layer3.1.0_residual": "Add", "layer3.1.1_relu": "Relu",
               "layer4.main.4_bn": "BatchNormalization", "layer4.shortcut.0_conv": "Conv", "layer4_residual": "Add",
               "layer7_globalavgpool": "GlobalAveragePool", "layer9_dense": "Gemm"},
        affine_false=["4.main.4."]),
    "mixed": dict(
        spec="conv(6,3,pad=1) bn(eps=0.001,momentum=0.5) relu residual{conv(6,3,pad=1) bn relu | dropout(0.5)} relu "
             "maxpool(2) globalmaxpool flatten dense(12,bias=false) bn relu residual{dense(12) bn relu | conv(12,1,bias=false)} "
             "dropout(0.5) residual{dropout(0.1)} globalavgpool conv(4,1)",
        input="2,9,11", loss="mse",
        ops={"Conv": 4, "BatchNormalization": 4, "Add": 3, "MaxPool": 1, "GlobalMaxPool": 1, "GlobalAveragePool": 1,
             "Gemm": 2, "Unsqueeze": 2},
        nodes={"layer1_bn": "BatchNormalization", "layer3_residual": "Add", "layer5_maxpool": "MaxPool",
               "layer6_globalmaxpool": "GlobalMaxPool", "layer9_bn": "BatchNormalization",
               "layer11.shortcut.0_conv_to_nchw": "Unsqueeze", "layer11_residual_shortcut_flatten": "Flatten",
               "layer11_residual": "Add", "layer13_residual": "Add", "layer14_globalavgpool_to_nchw": "Unsqueeze",
               "layer15_conv": "Conv", "output_flatten": "Flatten"},
        epsilon={"layer1_bn": 0.001, "layer9_bn": 1e-5},
        affine_false=[]),
    # An embedding head (issue 18): l2norm and the cosine classifier, its centres normalised in the graph.
    "embedding": dict(
        spec="conv(4,3,pad=1) bn relu globalavgpool flatten dense(8,bias=false) bn l2norm cosine(5)",
        input="3,8,8", loss="cross_entropy",
        ops={"Conv": 1, "BatchNormalization": 2, "ReduceL2": 3, "Max": 3, "Div": 4, "Gemm": 2},  # a Div normalises the input
        nodes={"layer7_l2norm": "Div", "layer8_cosine_input": "Div", "layer8_cosine_centres": "Div",
               "layer8_cosine": "Gemm"},
        affine_false=[]),
    # Volumes (C,D,H,W) = (1,8,10,12): Conv, BatchNormalization, MaxPool and AveragePool (padded, stride
    # 1, sizes per axis) on 5-D tensors, residual blocks with a strided 1x1x1 shortcut, a global average
    # pool of a volume.
    "volume": dict(
        spec="conv3d(6,3,pad=1,bias=false) bn relu residual{conv3d(6,3,pad=1,bias=false) bn relu "
             "conv3d(6,3,pad=1,bias=false) bn} relu residual{conv3d(8,3,stride=2,pad=1,bias=false) bn relu "
             "conv3d(8,3,pad=1,bias=false) bn | conv3d(8,1,stride=2,bias=false) bn} relu maxpool3d(2) "
             "avgpool3d(3x3x1,stride=1,pad=1x1x0) conv3d(8,1x3x3,pad=0x1x1) globalavgpool flatten dense(4)",
        input="1,8,10,12", loss="cross_entropy",
        ops={"Conv": 7, "BatchNormalization": 6, "Add": 2, "Relu": 5, "MaxPool": 1, "AveragePool": 1,
             "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
        nodes={"layer0_conv3d": "Conv", "layer5.shortcut.0_conv3d": "Conv", "layer5.main.4_bn": "BatchNormalization",
               "layer7_maxpool3d": "MaxPool", "layer8_avgpool3d": "AveragePool", "layer9_conv3d": "Conv",
               "layer10_globalavgpool": "GlobalAveragePool", "layer10_globalavgpool_flatten": "Flatten",
               "layer12_dense": "Gemm"},
        affine_false=[]),
    # A volume's global max pool, after a ReLU and a max pool over volumes; mse.
    "volume_max": dict(
        spec="conv3d(5,3,stride=2,pad=1) bn relu maxpool3d(3,stride=2,pad=1) globalmaxpool flatten dense(3)",
        input="2,9,8,7", loss="mse",
        ops={"Conv": 1, "BatchNormalization": 1, "Relu": 1, "MaxPool": 1, "GlobalMaxPool": 1, "Flatten": 1, "Gemm": 1},
        nodes={"layer4_globalmaxpool": "GlobalMaxPool", "layer4_globalmaxpool_flatten": "Flatten"},
        affine_false=[]),
}


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def run(args, expect_ok=True, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if expect_ok and result.returncode != 0:
        raise Failure(f"command failed ({result.returncode}): {' '.join(map(str, args))}\n"
                      f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


class Context:
    def __init__(self, options):
        self.o = options
        self.work = os.path.abspath(options.work)

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def checkpoint(self, arch):
        run_dir = self.path(ARCHS[arch]["run"])
        with open(os.path.join(run_dir, "latest")) as f:
            return os.path.join(run_dir, f.read().strip())

    def mpicnn(self, *args, **kwargs):
        return run([self.o.mpicnn, *args], **kwargs)

    def export(self, arch, fmt, output, *extra):
        return self.mpicnn("export", "--checkpoint", self.checkpoint(arch), "--format", fmt, "--output", output, *extra)


# ---------------------------------------------------------------------------------------------
# Fixtures

def make_npz_a(path, rng):
    """3-channel 20x16 images of 4 classes, each class a coloured block in its own place."""
    def split(n):
        labels = rng.integers(0, 4, size=n)
        images = rng.integers(0, 90, size=(n, 20, 16, 3)).astype(np.int32)
        for i, label in enumerate(labels):
            r, c = 2 + 4 * label, 3 + 2 * label
            images[i, r:r + 6, c:c + 6, label % 3] += 150
        return np.clip(images, 0, 255).astype(np.uint8), labels.reshape(-1, 1).astype(np.int64)
    train_x, train_y = split(192)
    test_x, test_y = split(48)
    np.savez_compressed(path, train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y)


def make_npz_b(path, rng):
    """Grey 24x24 images with 5 multi-label targets (is quadrant q bright; is the centre bright)."""
    def split(n):
        images = rng.integers(0, 256, size=(n, 24, 24)).astype(np.uint8)
        blocks = [images[:, :12, :12], images[:, :12, 12:], images[:, 12:, :12], images[:, 12:, 12:], images[:, 6:18, 6:18]]
        targets = np.stack([(b.mean(axis=(1, 2)) > 127.5) for b in blocks], axis=1).astype(np.int64)
        return images, targets
    train_x, train_y = split(128)
    test_x, test_y = split(40)
    np.savez_compressed(path, train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y)


def train(ctx, arch, steps, batch):
    a = ARCHS[arch]
    shutil.rmtree(ctx.path(a["run"]), ignore_errors=True)  # a run folder with a checkpoint would resume
    command = [ctx.o.mpicnn, "train", "--data.path", ctx.path(a["data"]), "--model.spec", a["spec"],
               "--loss.kind", a["loss"], "--train.batch_size", batch, "--train.max_steps", steps,
               "--train.epochs", 100, "--train.log_interval", 10, "--optimizer.lr", a["lr"],
               "--optimizer.momentum", 0.9, "--output", ctx.path(a["run"]), *a.get("extra", [])]
    if a["ranks"] > 1:
        command = [ctx.o.mpiexec, "-np", a["ranks"], *command]
    run(command)
    check(os.path.exists(ctx.checkpoint(arch)), f"training {arch} wrote no checkpoint")


def case_setup(ctx):
    os.makedirs(ctx.work, exist_ok=True)
    rng = np.random.default_rng(5)
    make_npz_a(ctx.path("a.npz"), rng)
    make_npz_b(ctx.path("b.npz"), rng)
    ctx.mpicnn("convert", "--format", "npz", "--layout", "channels_last", "--input", ctx.path("a.npz"), "--output", ctx.path("a.h5"),
               "--names", ",".join(CLASS_NAMES_A))
    ctx.mpicnn("convert", "--format", "npz", "--task", "multi-label", "--input", ctx.path("b.npz"), "--output", ctx.path("b.h5"))
    train(ctx, "a", 24, 16)
    train(ctx, "b", 24, 16)
    train(ctx, "c", 24, 16)
    train(ctx, "bml", 24, 16)
    train(ctx, "emb", 24, 16)


def resnet18_28_spec(classes):
    """configs/resnet18_28.ini's model.spec with `classes` outputs."""
    import configparser
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "configs", "resnet18_28.ini"))
    spec = " ".join(config["model"]["spec"].split())
    return re.sub(r"dense\(\d+\)$", f"dense({classes})", spec)


def case_setup_resnet18(ctx):
    """Needs setup's a.h5."""
    ARCHS["r18"]["spec"] = resnet18_28_spec(len(CLASS_NAMES_A))
    train(ctx, "r18", 3, 16)


def case_setup_fashion_mnist(ctx):
    os.makedirs(ctx.work, exist_ok=True)
    ctx.mpicnn("convert", "--format", "idx", "--input", "/usr/share/datasets/fashion-mnist",
               "--output", ctx.path("fashion_mnist.h5"), "--names", "fashion-mnist")
    train(ctx, "fmnist", 60, 64)


# ---------------------------------------------------------------------------------------------
# Shared helpers

def test_images(ctx, arch, limit=None):
    """The test split as the exported model expects it: float32 NCHW, uint8 pixels / 255."""
    import h5py
    with h5py.File(ctx.path(ARCHS[arch]["data"]), "r") as f:
        images = f["test/images"]
        x = images[:limit] if limit else images[:]
        check(x.dtype == np.uint8, "the test datasets are uint8")
    return x.astype(np.float32) / np.float32(255)


def our_logits(ctx, model_file, arch, out):
    import h5py
    run([ctx.o.dump_logits, model_file, ctx.path(ARCHS[arch]["data"]), "test", out])
    with h5py.File(out, "r") as f:
        return f["logits"][:]


def predict(ctx, arch, out):
    """mpicnn predict's per-sample outputs: softmax probabilities (classification) or raw outputs (mse)."""
    import h5py
    ctx.mpicnn("predict", "--checkpoint", ctx.checkpoint(arch), "--data", ctx.path(ARCHS[arch]["data"]),
               "--split", "test", "--output", out)
    with h5py.File(out, "r") as f:
        return f["probabilities" if "probabilities" in f else "outputs"][:]


def softmax(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(label, a, b):
    check(a.shape == b.shape, f"{label}: shapes {a.shape} and {b.shape} differ")
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    print(f"{label}: max abs diff {diff:.3g} over {a.size} values (largest |value| {float(np.max(np.abs(b))):.3g}; "
          f"tolerance {TOLERANCE:g})")
    check(diff <= TOLERANCE, f"{label}: max abs diff {diff:.3g} exceeds {TOLERANCE:g}")
    return diff


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# mpicnn's own SHA-256 (the provenance field of every export) against hashlib

def case_sha256(ctx):
    out = ctx.path("sha256")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    files = []
    # Around the 55/56/64-byte padding boundaries and the 1 MiB read block.
    for size in (0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1):
        path = os.path.join(out, f"bytes_{size}")
        with open(path, "wb") as f:
            f.write(rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())
        files.append(path)
    printed = run([ctx.o.sha256, *files]).stdout.splitlines()
    check(len(printed) == len(files), f"io_sha256 printed {printed}")
    for line, path in zip(printed, files):
        check(line == f"{sha256(path)}  {path}", f"SHA-256 of {path}: mpicnn {line.split()[0]}, hashlib {sha256(path)}")
    print(f"SHA-256 of {len(files)} files (0 B to 1 MiB + 1) equals hashlib's")


# ---------------------------------------------------------------------------------------------
# (a) the ONNX checker, graph structure and metadata

def case_onnx_checker(ctx):
    import h5py
    import onnx
    from onnx import helper, numpy_helper
    out = ctx.path("checker")
    os.makedirs(out, exist_ok=True)
    for arch in ("a", "b"):
        path = os.path.join(out, f"{arch}.onnx")
        printed = ctx.export(arch, "onnx", path).stdout
        check("wrote" in printed and "opset 13" in printed, f"export printed: {printed}")
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        check(model.opset_import[0].domain in ("", "ai.onnx") and model.opset_import[0].version >= 13, "opset >= 13")

        graph = model.graph
        check([i.name for i in graph.input] == ["input"], f"inputs {[i.name for i in graph.input]}")
        dims = graph.input[0].type.tensor_type.shape.dim
        check(graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "input is float32")
        check(dims[0].dim_param != "" and not dims[0].HasField("dim_value"), "the batch dimension is symbolic")
        outputs = [o.name for o in graph.output]
        expected_outputs = ["logits", "probabilities"] if ARCHS[arch]["loss"] == "cross_entropy" else ["logits"]
        check(outputs == expected_outputs, f"{arch}: outputs {outputs}, expected {expected_outputs}")

        ckpt = ctx.checkpoint(arch)
        with h5py.File(ckpt, "r") as f:
            group = f["model"]
            params = {name: group[name][:] for name in group}
            spec = group.attrs["spec"]
            spec = spec.decode() if isinstance(spec, bytes) else spec
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("class_names", [])]
            mean, std = list(group.attrs["mean"]), list(group.attrs["std"])
            shape = list(group.attrs["input_shape"])
        check([d.dim_value for d in dims[1:]] == shape, f"input dims {dims} vs checkpoint input_shape {shape}")
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for name, value in params.items():
            check(name in inits, f"{arch}: weight {name} missing from the initializers")
            check(np.array_equal(inits[name], value), f"{arch}: initializer {name} differs from the checkpoint")
        check(np.allclose(inits["mean"].ravel(), np.float32(mean)) and np.allclose(inits["std"].ravel(), np.float32(std)),
              "mean/std initializers")

        meta = {p.key: p.value for p in model.metadata_props}
        for key in ("spec", "class_names", "mean", "std", "input_scaling", "source_checkpoint_sha256", "mpicnn_version",
                    "input_shape", "loss"):
            check(key in meta, f"{arch}: metadata_props lacks '{key}'")
        check(meta["spec"] == spec, f"metadata spec {meta['spec']!r} vs checkpoint {spec!r}")
        check(json.loads(meta["class_names"]) == names, f"class_names {meta['class_names']} vs {names}")
        check([float(v) for v in meta["mean"].split(",")] == mean, "metadata mean")
        check([float(v) for v in meta["std"].split(",")] == std, "metadata std")
        check(meta["source_checkpoint_sha256"] == sha256(ckpt), "metadata source_checkpoint_sha256 is not the file's SHA-256")
        check("pixel/255" in meta["input_scaling"] and "pixel/255" in model.doc_string, "the input scaling is documented")

        ops = [n.op_type for n in graph.node]
        attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in graph.node}
        check(ops[:2] == ["Sub", "Div"], f"normalisation first: {ops[:2]}")
        if arch == "a":
            check(ops.count("Conv") == 2 and ops.count("MaxPool") == 2 and ops.count("Gemm") == 2 and "Softmax" in ops,
                  f"a: ops {ops}")
            check(attrs["layer5_maxpool"]["pads"] == [1, 1, 1, 1] and attrs["layer5_maxpool"]["strides"] == [2, 2], "a: pool")
            check(attrs["layer0_conv"]["pads"] == [1, 1, 1, 1], "a: conv pads")
            check(all(attrs[n.name]["transB"] == 1 for n in graph.node if n.op_type == "Gemm"), "Gemm transB=1")
            check(names == CLASS_NAMES_A, f"a: class names {names}")
        else:
            for op in ("AveragePool", "LeakyRelu", "Tanh", "Sigmoid", "MaxPool", "Unsqueeze", "Flatten"):
                check(op in ops, f"b: no {op} in {ops}")
            pool = attrs["layer2_avgpool"]
            check(pool["count_include_pad"] == 1 and pool["pads"] == [1, 1, 1, 1] and pool["strides"] == [2, 2]
                  and pool["kernel_shape"] == [3, 3], f"b: avgpool attributes {pool}")
            check(abs(attrs["layer1_leakyrelu"]["alpha"] - 0.2) < 1e-7, "b: leakyrelu alpha")
            conv0 = attrs["layer0_conv"]
            check(conv0["strides"] == [2, 2] and conv0["pads"] == [2, 2, 2, 2], f"b: conv0 {conv0}")
            no_bias = [n for n in graph.node if n.name == "layer3_conv"][0]
            check(len(no_bias.input) == 2, "b: conv(bias=false) has no bias input")

        again = os.path.join(out, f"{arch}-again.onnx")
        ctx.export(arch, "onnx", again)
        check(open(path, "rb").read() == open(again, "rb").read(), "exporting one checkpoint twice gives the same bytes")
        print(f"{arch}: onnx.checker (full_check) passed; {len(graph.node)} nodes, outputs {outputs}; export is byte-stable")

    only_logits = os.path.join(out, "a-logits.onnx")
    ctx.export("a", "onnx", only_logits, "--probabilities=false")
    model = onnx.load(only_logits)
    onnx.checker.check_model(model, full_check=True)
    check([o.name for o in model.graph.output] == ["logits"], "--probabilities=false leaves only logits")
    leftovers = [f for f in os.listdir(out) if ".tmp" in f]
    check(not leftovers, f"temp files left: {leftovers}")


# ---------------------------------------------------------------------------------------------
# (b) onnxruntime-node against mpicnn predict and mpicnn's own logits, several batch sizes

def case_onnxruntime(ctx, arch):
    out = ctx.path(f"ort_{arch}")
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "model.onnx")
    ctx.export(arch, "onnx", model)
    limit = 1000 if arch == "fmnist" else None
    x = test_images(ctx, arch, limit)
    inputs = os.path.join(out, "inputs.f32")
    x.tofile(inputs)
    n = x.shape[0]
    ours = our_logits(ctx, ctx.checkpoint(arch), arch, os.path.join(out, "ours.h5"))[:n]
    predicted = predict(ctx, arch, os.path.join(out, "predict.h5"))[:n]
    classify = ARCHS[arch]["loss"] == "cross_entropy"
    probabilities_out = ARCHS[arch]["loss"] in ("cross_entropy", "bce")  # softmax or sigmoid node
    env = dict(os.environ, NODE_PATH=ctx.o.node_modules)
    # Training used 16 (64 for fmnist) samples per step: 1, 7 and all-at-once are other batch sizes.
    for batch in (1, 7, n):
        prefix = os.path.join(out, f"b{batch}_")
        info = json.loads(run(["node", os.path.join(os.path.dirname(__file__), "run_onnx.js"), model, inputs,
                               ",".join(map(str, x.shape)), batch, prefix], env=env).stdout.strip().splitlines()[-1])
        k = ours.shape[1]
        logits = np.fromfile(prefix + "logits.f32", dtype=np.float32).reshape(n, k)
        compare(f"{arch} batch {batch}: onnxruntime logits vs mpicnn logits", logits, ours)
        if probabilities_out:
            probabilities = np.fromfile(prefix + "probabilities.f32", dtype=np.float32).reshape(n, k)
            compare(f"{arch} batch {batch}: onnxruntime probabilities vs mpicnn predict", probabilities, predicted)
        else:
            compare(f"{arch} batch {batch}: onnxruntime logits vs mpicnn predict outputs", logits, predicted)
        if classify:
            agree = float(np.mean(probabilities.argmax(1) == predicted.argmax(1)))
            print(f"{arch} batch {batch}: predicted class agrees on {agree:.4f} of {n} samples")
        check(info["dims"]["logits"] == [n, k], f"output dims {info['dims']}")


# ---------------------------------------------------------------------------------------------
# (c) the checkpoint's weights, read with h5py alone, in the equivalent PyTorch model

def check_data_only(path):
    """Every object in the checkpoint is a group, a numeric dataset, or a numeric/string attribute."""
    import h5py
    problems = []

    def attributes(obj):
        for key, value in obj.attrs.items():
            kind = h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
            if kind is None and obj.attrs.get_id(key).dtype.kind not in "iuf":
                problems.append(f"{obj.name} attribute {key}: {obj.attrs.get_id(key).dtype}")

    def visit(name, obj):
        attributes(obj)
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind not in "iuf":
            problems.append(f"/{name}: dtype {obj.dtype}")

    with h5py.File(path, "r") as f:
        attributes(f)
        f.visititems(visit)
    check(not problems, f"{path}: not data-only: {problems}")


def parse_spec(spec):
    layers = []
    for kind, args in re.findall(r"(\w+)(?:\(([^)]*)\))?", spec):
        positional, named = [], {}
        for item in filter(None, (args or "").split(",")):
            if "=" in item:
                key, value = item.split("=", 1)
                named[key] = value
            else:
                positional.append(item)
        layers.append((kind, positional, named))
    return layers


def torch_model(spec, input_shape):
    """nn.Sequential with one module per spec layer, so state_dict names are the checkpoint's."""
    import torch
    from torch import nn

    class SpatialFromAny(nn.Module):  # a dense output (N,F) feeding a spatial layer is (N,F,1,1)
        def forward(self, x):
            return super().forward(x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1))

    class Conv(SpatialFromAny, nn.Conv2d):
        pass

    class MaxPool(SpatialFromAny, nn.MaxPool2d):
        pass

    class AvgPool(SpatialFromAny, nn.AvgPool2d):
        pass

    class Dense(nn.Linear):  # our dense reads a (C,1,1) input as C features
        def forward(self, x):
            return super().forward(x.flatten(1))

    c, h, w = input_shape
    modules = []
    for kind, pos, named in parse_spec(spec):
        if kind == "conv":
            k, size = int(pos[0]), int(pos[1])
            stride, pad = int(named.get("stride", 1)), int(named.get("pad", 0))
            modules.append(Conv(c, k, size, stride=stride, padding=pad, bias=named.get("bias", "true") == "true"))
            c, h, w = k, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
        elif kind in ("maxpool", "avgpool"):
            window = int(pos[0])
            stride, pad = int(named.get("stride", window)), int(named.get("pad", 0))
            if kind == "maxpool":
                modules.append(MaxPool(window, stride=stride, padding=pad))
            else:
                modules.append(AvgPool(window, stride=stride, padding=pad, count_include_pad=True))
            h, w = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "leakyrelu":
            modules.append(nn.LeakyReLU(float(named.get("slope", 0.01))))
        elif kind == "sigmoid":
            modules.append(nn.Sigmoid())
        elif kind == "tanh":
            modules.append(nn.Tanh())
        elif kind == "flatten":
            modules.append(nn.Flatten())
            c, h, w = c * h * w, 1, 1
        elif kind == "dense":
            units = int(pos[0])
            modules.append(Dense(c * h * w, units, bias=named.get("bias", "true") == "true"))
            c, h, w = units, 1, 1
        else:
            raise Failure(f"no PyTorch mapping for layer '{kind}'")
    return nn.Sequential(*modules)


def case_pytorch(ctx, arch):
    import h5py
    import torch
    out = ctx.path(f"torch_{arch}")
    os.makedirs(out, exist_ok=True)
    ckpt = ctx.checkpoint(arch)
    check_data_only(ckpt)
    with h5py.File(ckpt, "r") as f:
        group = f["model"]
        spec = group.attrs["spec"]
        spec = spec.decode() if isinstance(spec, bytes) else spec
        input_shape = [int(v) for v in group.attrs["input_shape"]]
        mean = np.asarray(group.attrs["mean"], dtype=np.float64)
        std = np.asarray(group.attrs["std"], dtype=np.float64)
        state = {name: torch.from_numpy(group[name][:]) for name in group}
        loss = group.attrs["loss"]
        loss = loss.decode() if isinstance(loss, bytes) else loss
    model = torch_model(spec, input_shape)
    model.load_state_dict(state, strict=True)  # every weight present, none extra, shapes equal
    model.eval()
    limit = 1000 if arch == "fmnist" else None
    x = test_images(ctx, arch, limit).astype(np.float64)
    x = ((x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)
    torch.set_num_threads(1)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).flatten(1).numpy()
    n = x.shape[0]
    ours = our_logits(ctx, ckpt, arch, os.path.join(out, "ours.h5"))[:n]
    compare(f"{arch}: PyTorch logits vs mpicnn logits", logits, ours)
    predicted = predict(ctx, arch, os.path.join(out, "predict.h5"))[:n]
    if loss == "cross_entropy":
        compare(f"{arch}: PyTorch softmax vs mpicnn predict probabilities", softmax(logits), predicted)
    else:
        compare(f"{arch}: PyTorch outputs vs mpicnn predict outputs", logits, predicted)


# ---------------------------------------------------------------------------------------------
# (d) the HDF5 inference bundle

def c_names(path):
    import h5py
    with h5py.File(path, "r") as f:
        return list(f["model"].keys())


def case_bundle(ctx, arch):
    import h5py
    out = ctx.path(f"bundle_{arch}")
    os.makedirs(out, exist_ok=True)
    ckpt = ctx.checkpoint(arch)
    path = os.path.join(out, "bundle.h5")
    for _ in range(2):  # the second export replaces the first
        printed = ctx.export(arch, "h5", path).stdout
    check("wrote" in printed, printed)
    check(not [f for f in os.listdir(out) if ".tmp" in f], "temp files left behind")
    digest = sha256(ckpt)
    check_data_only(path)
    with h5py.File(ckpt, "r") as c, h5py.File(path, "r") as b:
        check(b.attrs["format"] == "mpicnn-bundle" and int(b.attrs["format_version"]) == 1, "format attributes")
        check(set(b.keys()) == {"model", "weights", "source", "metrics"}, f"groups {sorted(b.keys())}")
        check(set(b["weights"].keys()) == set(c["model"].keys()), "the same weight names as the checkpoint")
        for name in c["model"]:
            w, v = b["weights"][name], c["model"][name]
            check(w.dtype == np.float32 and w.shape == v.shape and np.array_equal(w[:], v[:]), f"weight {name} differs")
        for key in ("spec", "input_shape", "loss", "mean", "std", "class_names"):
            check((key in b["model"].attrs) == (key in c["model"].attrs), f"/model {key} present in only one file")
            if key in c["model"].attrs:
                check(np.array_equal(np.asarray(b["model"].attrs[key]), np.asarray(c["model"].attrs[key])), f"/model {key}")
        check(b["source"].attrs["sha256"] == digest, "source sha256")
        check(b["source"].attrs["file"] == os.path.basename(ckpt), "source file name")
        check(int(b["source"].attrs["ranks"]) == ARCHS[arch]["ranks"], "the rank count of training")
        check(int(b["source"].attrs["global_step"]) == int(c["trainer"].attrs["global_step"]), "global step")
        for key, value in c["metrics"].attrs.items():
            check(float(b["metrics"].attrs[key]) == float(value), f"metric {key}")
        metrics = dict(c["metrics"].attrs)
    check("test_loss" in metrics, f"checkpoint metrics {metrics}")

    shown = ctx.mpicnn("inspect", path).stdout
    print(shown)
    expected = ["mpicnn inference bundle", digest, os.path.basename(ckpt), "float32 NCHW", "pixel/255", "test_loss",
                f"on {ARCHS[arch]['ranks']} ranks", f"weights: {len(c_names(ckpt))} tensors"]
    if arch == "a":
        expected += ['type "B"', "basal cell", "test_accuracy", "dense(4)", "loss cross_entropy"]
    else:
        expected += ["leakyrelu(slope=0.2)", "loss mse"]
    for text in expected:
        check(text in shown, f"inspect output lacks {text!r}")

    from_bundle = our_logits(ctx, path, arch, os.path.join(out, "bundle_logits.h5"))
    from_ckpt = our_logits(ctx, ckpt, arch, os.path.join(out, "ckpt_logits.h5"))
    check(np.array_equal(from_bundle, from_ckpt), "the bundle's logits are not bitwise the checkpoint's")
    print(f"bundle: weights bitwise equal to the checkpoint; logits of {len(from_bundle)} samples bitwise equal")


# ---------------------------------------------------------------------------------------------
# (e) blocks, BatchNorm, dropout and global pooling: a model built in memory (io_onnx_blocks),
# onnx's checker, the graph's structure and initializers, onnxruntime against the engine's
# evaluation mode

def compare_relative(label, a, b):
    """max |a - b| over the output divided by its largest |b|: relative to the output's scale, so
    logits near zero do not inflate it."""
    check(a.shape == b.shape, f"{label}: shapes {a.shape} and {b.shape} differ")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = float(np.max(np.abs(a64 - b64)))
    scale = float(np.max(np.abs(b64)))
    relative = diff / scale
    print(f"{label}: max abs diff {diff:.3g}, largest |engine value| {scale:.3g}, relative {relative:.3g} "
          f"over {a.size} values (tolerance {BLOCK_TOLERANCE:g})")
    check(relative <= BLOCK_TOLERANCE, f"{label}: relative difference {relative:.3g} exceeds {BLOCK_TOLERANCE:g}")
    return relative


def case_onnx_blocks(ctx, arch):
    import h5py
    import onnx
    from onnx import helper, numpy_helper
    a = BLOCK_ARCHS[arch]
    out = ctx.path(f"blocks_{arch}")
    os.makedirs(out, exist_ok=True)
    info = json.loads(run([ctx.o.onnx_blocks, a["spec"], a["input"], a["loss"], out]).stdout.strip().splitlines()[-1])
    n, k = info["n"], info["k"]
    path = os.path.join(out, "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph

    names = [node.name for node in graph.node]
    check(len(set(names)) == len(names), f"node names repeat: {sorted(x for x in names if names.count(x) > 1)}")
    ops = [node.op_type for node in graph.node]
    check("Dropout" not in ops, "a Dropout node in an inference graph")
    for op, count in a["ops"].items():
        check(ops.count(op) == count, f"{arch}: {ops.count(op)} {op} nodes, expected {count}: {ops}")
    by_name = {node.name: node for node in graph.node}
    for name, op in a["nodes"].items():
        check(name in by_name and by_name[name].op_type == op, f"{arch}: no {op} node named {name!r} in {names}")
    attrs = {node.name: {x.name: helper.get_attribute_value(x) for x in node.attribute} for node in graph.node}
    for name, eps in a.get("epsilon", {}).items():
        check(attrs[name]["epsilon"] == np.float32(eps), f"{arch}: {name} epsilon {attrs[name]['epsilon']}, expected {eps}")

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    with h5py.File(os.path.join(out, "tensors.h5"), "r") as f:
        tensors = {name: f[name][:] for name in f}
    batchnorms = [name[:-len("running_mean")] for name in tensors if name.endswith("running_mean")]
    check(ops.count("BatchNormalization") == len(batchnorms), f"{len(batchnorms)} BatchNorm layers in the model")
    for name, value in tensors.items():
        if name.endswith("num_batches_tracked"):
            check(int(value[0]) == info["training_passes"], f"{name} = {value}")
            check(name not in inits, f"{name} needs no initializer")
            continue
        check(name in inits, f"{arch}: model tensor {name} missing from the initializers")
        check(inits[name].dtype == np.float32 and np.array_equal(inits[name], value), f"{arch}: initializer {name} differs")
    for prefix in batchnorms:  # the statistics came from training passes, not the initial 0 and 1
        mean, var = tensors[prefix + "running_mean"], tensors[prefix + "running_var"]
        check(np.max(np.abs(mean)) > 0.01 and np.max(np.abs(var - 1)) > 0.01, f"{prefix}: trivial running statistics")
        node = by_name.get(f"layer{prefix[:-1]}_bn")
        check(node is not None and node.op_type == "BatchNormalization", f"no BatchNormalization node for {prefix}")
        check(list(node.input[3:]) == [prefix + "running_mean", prefix + "running_var"], f"{node.name} inputs {node.input}")
        if prefix in a["affine_false"]:
            check(list(node.input[1:3]) == [prefix + "scale_ones", prefix + "shift_zeros"], f"{node.name} inputs {node.input}")
            check(np.all(inits[prefix + "scale_ones"] == 1) and np.all(inits[prefix + "shift_zeros"] == 0), "1/0 initializers")
        else:
            check(list(node.input[1:3]) == [prefix + "weight", prefix + "bias"], f"{node.name} inputs {node.input}")
            check(np.max(np.abs(tensors[prefix + "weight"] - 1)) > 0.01, f"{prefix}weight is trivial")

    engine = np.fromfile(os.path.join(out, "logits.f32"), dtype=np.float32).reshape(n, k)
    inputs = os.path.join(out, "inputs.f32")
    env = dict(os.environ, NODE_PATH=ctx.o.node_modules)
    classify = a["loss"] == "cross_entropy"
    for batch in (1, 5, n):
        prefix = os.path.join(out, f"b{batch}_")
        printed = run(["node", os.path.join(os.path.dirname(__file__), "run_onnx.js"), path, inputs, f"{n},{a['input']}",
                       batch, prefix], env=env).stdout.strip().splitlines()[-1]
        check(json.loads(printed)["outputs"] == (["logits", "probabilities"] if classify else ["logits"]), printed)
        logits = np.fromfile(prefix + "logits.f32", dtype=np.float32).reshape(n, k)
        compare_relative(f"{arch} batch {batch}: onnxruntime logits vs engine (evaluation mode)", logits, engine)
        if classify:
            probabilities = np.fromfile(prefix + "probabilities.f32", dtype=np.float32).reshape(n, k)
            compare_relative(f"{arch} batch {batch}: onnxruntime probabilities vs softmax of the engine's logits",
                             probabilities, softmax(engine))
    print(f"{arch}: {len(graph.node)} nodes, {len(batchnorms)} BatchNormalization, checker (full_check) passed")


def case_onnx_blocks_errors(ctx):
    """BatchNorm whose running statistics were never updated (no training pass committed, as a
    checkpoint without BatchNorm state loads): one error line naming the layer path, no file."""
    out = ctx.path("blocks_errors")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cases = [("top level", BLOCK_ARCHS["resnet"]["spec"], "layer 2 'bn(eps=1e-05,momentum=0.1)'", "1.num_batches_tracked = 0"),
             ("inside a block", "conv(4,3) residual{conv(4,3,pad=1) bn(affine=false)} flatten dense(2)",
              "layer 2.main.2 'bn(eps=1e-05,momentum=0.1,affine=false)'", "1.main.1.num_batches_tracked = 0")]
    for label, spec, *needles in cases:
        result = run([ctx.o.onnx_blocks, spec, "3,12,10", "cross_entropy", out, 0], expect_ok=False)
        lines = result.stderr.strip().splitlines()
        check(result.returncode != 0, f"{label}: exit status 0")
        check(len(lines) == 1 and lines[0].startswith("error: ONNX export: "), f"{label}: stderr {result.stderr!r}")
        for needle in needles:
            check(needle in lines[0], f"{label}: {lines[0]!r} does not mention {needle!r}")
        check(not [f for f in os.listdir(out) if f.startswith("model.onnx")], f"{label}: a failed export left a file")
        print(f"{label}: exit {result.returncode}: {lines[0]}")


# ---------------------------------------------------------------------------------------------
# (f) bad input: one line "error: ...", non-zero exit, nothing written

def expect_error(ctx, label, args, *needles):
    result = ctx.mpicnn(*args, expect_ok=False)
    lines = result.stderr.strip().splitlines()
    check(result.returncode != 0, f"{label}: exit status 0")
    check(len(lines) == 1 and lines[0].startswith("error: "), f"{label}: stderr is not one error line: {result.stderr!r}")
    for needle in needles:
        check(needle in lines[0], f"{label}: {lines[0]!r} does not mention {needle!r}")
    print(f"{label}: exit {result.returncode}: {lines[0]}")


def case_errors(ctx):
    out = ctx.path("errors")
    os.makedirs(out, exist_ok=True)
    ckpt = ctx.checkpoint("a")
    target = os.path.join(out, "model.onnx")
    missing = os.path.join(out, "no-such-checkpoint.h5")
    expect_error(ctx, "cut a model without an embedding",
                 ["export", "--checkpoint", ckpt, "--format", "onnx", "--output", target, "--cut", "embedding"],
                 "--cut embedding", ckpt, "ends in 'dense(4)'", "no embedding head", "expected a final l2norm")
    expect_error(ctx, "cut into a bundle",
                 ["export", "--checkpoint", ctx.checkpoint("emb"), "--format", "h5", "--output", target, "--cut", "embedding"],
                 "'--cut embedding' applies to --format onnx")
    expect_error(ctx, "unknown cut", ["export", "--checkpoint", ckpt, "--format", "onnx", "--output", target, "--cut", "neck"],
                 "neck", "none, embedding")
    expect_error(ctx, "missing checkpoint", ["export", "--checkpoint", missing, "--format", "onnx", "--output", target],
                 missing, "does not exist")
    expect_error(ctx, "unknown format", ["export", "--checkpoint", ckpt, "--format", "tflite", "--output", target],
                 "tflite", "h5, onnx")
    expect_error(ctx, "dataset instead of checkpoint",
                 ["export", "--checkpoint", ctx.path("a.h5"), "--format", "onnx", "--output", target], "not an mpicnn checkpoint")
    for fmt in ("onnx", "h5"):
        expect_error(ctx, f"{fmt}: output folder missing",
                     ["export", "--checkpoint", ckpt, "--format", fmt, "--output", os.path.join(out, "nope", "m")],
                     "does not exist")
        expect_error(ctx, f"{fmt}: output is a folder", ["export", "--checkpoint", ckpt, "--format", fmt, "--output", out],
                     "is a folder")
        expect_error(ctx, f"{fmt}: output not writable (/proc)",
                     ["export", "--checkpoint", ckpt, "--format", fmt, "--output", "/proc/mpicnn-export-test"], "/proc/mpicnn-export-test")
    before = sha256(ckpt)
    expect_error(ctx, "output is the checkpoint", ["export", "--checkpoint", ckpt, "--format", "h5", "--output", ckpt],
                 "source checkpoint")
    check(sha256(ckpt) == before, "the checkpoint was changed")
    check(not os.path.exists(target), "a failed export left an output file")
    check(not [f for f in os.listdir(out) if ".tmp" in f], "a failed export left a temp file")
    check(not [f for f in os.listdir("/proc") if f.startswith("mpicnn-export-test")], "left files in /proc")


# ---------------------------------------------------------------------------------------------
# (f) the model cut at its embedding: `export --cut embedding` in onnxruntime and `predict --cut
# embedding` against `mpicnn embed`'s embeddings

EMBEDDING_TOLERANCE = 1e-5


def case_embedding(ctx):
    import h5py
    import onnx
    out = ctx.path("embedding")
    os.makedirs(out, exist_ok=True)
    ckpt = ctx.checkpoint("emb")
    data = ctx.path(ARCHS["emb"]["data"])
    embedded = os.path.join(out, "embed.h5")
    ctx.mpicnn("embed", "--checkpoint", ckpt, "--data", data, "--output", embedded)
    with h5py.File(embedded, "r") as f:
        reference, labels = f["embeddings"][:], f["labels"][:]
    check(reference.shape[1] == 8, f"embed wrote {reference.shape}")

    model_path = os.path.join(out, "embedding.onnx")
    printed = ctx.export("emb", "onnx", model_path, "--cut", "embedding").stdout
    check("outputs embedding" in printed, printed)
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    check([o.name for o in model.graph.output] == ["embedding"], f"outputs {[o.name for o in model.graph.output]}")
    names = [n.name for n in model.graph.node]
    check("layer7_l2norm" in names and not [n for n in names if "cosine" in n], f"nodes {names}")
    meta = {p.key: p.value for p in model.metadata_props}
    check(meta["spec"].endswith(" l2norm") and meta["source_spec"].endswith(" l2norm cosine(4)"), f"metadata {meta}")
    check(meta["loss_description"] == "arcface (scale 16, margin 0.5)", f"metadata loss_description {meta['loss_description']}")
    check("8.weight" not in {t.name for t in model.graph.initializer}, "the cosine layer's centres are in the cut graph")

    x = test_images(ctx, "emb")
    inputs = os.path.join(out, "inputs.f32")
    x.tofile(inputs)
    n = x.shape[0]
    env = dict(os.environ, NODE_PATH=ctx.o.node_modules)
    for batch in (1, 7, n):
        prefix = os.path.join(out, f"b{batch}_")
        run(["node", os.path.join(os.path.dirname(__file__), "run_onnx.js"), model_path, inputs, ",".join(map(str, x.shape)),
             batch, prefix], env=env)
        ours = np.fromfile(prefix + "embedding.f32", dtype=np.float32).reshape(n, -1)
        check(ours.shape == reference.shape, f"onnxruntime embedding {ours.shape}, embed {reference.shape}")
        diff = float(np.max(np.abs(ours.astype(np.float64) - reference)))
        print(f"batch {batch}: onnxruntime embedding vs mpicnn embed: max abs diff {diff:.3g} over {ours.size} values "
              f"(tolerance {EMBEDDING_TOLERANCE:g})")
        check(diff <= EMBEDDING_TOLERANCE, f"batch {batch}: max abs diff {diff:.3g} exceeds {EMBEDDING_TOLERANCE:g}")

    predicted = os.path.join(out, "predict.h5")
    ctx.mpicnn("predict", "--checkpoint", ckpt, "--data", data, "--output", predicted, "--cut", "embedding")
    with h5py.File(predicted, "r") as f:
        check(sorted(f.keys()) == ["embeddings", "labels"], f"predict --cut embedding wrote {sorted(f.keys())}")
        check(np.array_equal(f["embeddings"][:], reference), "predict --cut embedding differs from embed")
        check(np.array_equal(f["labels"][:], labels), "predict --cut embedding: labels")
    csv = os.path.join(out, "predict.csv")
    ctx.mpicnn("predict", "--checkpoint", ckpt, "--data", data, "--output", csv, "--cut", "embedding")
    header = open(csv).readline().strip().split(",")
    check(header == ["index", "label"] + [f"e{j}" for j in range(8)], f"CSV header {header}")
    values = np.loadtxt(csv, delimiter=",", skiprows=1)
    check(np.max(np.abs(values[:, 2:] - reference)) <= 1e-6, "predict --cut embedding CSV differs from embed")
    result = ctx.mpicnn("predict", "--checkpoint", ctx.checkpoint("a"), "--data", ctx.path("a.h5"), "--output", predicted,
                        "--cut", "embedding", expect_ok=False)
    line = result.stderr.strip()
    check(result.returncode == 1 and line.startswith("error: --cut embedding: ") and "no embedding head" in line
          and "\n" not in line, f"predict --cut embedding of a classifier: {result.returncode} {result.stderr!r}")


# torchvision's resnet18 (3x3 stem, no max pool) with the state_dict that scripts/torchvision_names.py
# makes of the bundle, loaded with strict=True, against mpicnn predict.
def case_torchvision(ctx, arch):
    import h5py
    import torch
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import torchvision_names
    out = ctx.path(f"tv_{arch}")
    os.makedirs(out, exist_ok=True)
    bundle, weights = os.path.join(out, "model.h5"), os.path.join(out, "resnet18.pt")
    ctx.export(arch, "h5", bundle)
    run(["/usr/bin/python3", os.path.join(REPO, "scripts", "torchvision_names.py"), bundle, weights])
    with h5py.File(bundle, "r") as f:
        mean = np.asarray(f["model"].attrs["mean"], dtype=np.float64)
        std = np.asarray(f["model"].attrs["std"], dtype=np.float64)
        check("state" in f, f"{bundle} has no /state (BatchNorm running statistics)")
    state = torch.load(weights)
    model = torchvision_names.torchvision_model(state["fc.weight"].shape[0], small_input=True)
    model.load_state_dict(state, strict=True)  # every tensor, running statistics included, none extra
    model.eval()
    x = test_images(ctx, arch).astype(np.float64)
    x = ((x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)
    torch.set_num_threads(1)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    predicted = predict(ctx, arch, os.path.join(out, "predict.h5"))
    compare(f"{arch}: torchvision resnet18 (bundle loaded with strict=True) vs mpicnn predict", probabilities, predicted)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mpicnn", required=True)
    parser.add_argument("--dump-logits", required=True)
    parser.add_argument("--sha256", default="")
    parser.add_argument("--onnx-blocks", default="")
    parser.add_argument("--work", required=True)
    parser.add_argument("--node-modules", default="")
    parser.add_argument("--mpiexec", default="mpirun")
    parser.add_argument("case")
    parser.add_argument("arch", nargs="?")
    options = parser.parse_args()
    ctx = Context(options)
    cases = {"sha256": case_sha256, "setup": case_setup, "setup_fashion_mnist": case_setup_fashion_mnist, "onnx_checker": case_onnx_checker,
             "onnxruntime": case_onnxruntime, "pytorch": case_pytorch, "bundle": case_bundle, "errors": case_errors,
             "onnx_blocks": case_onnx_blocks, "onnx_blocks_errors": case_onnx_blocks_errors,
             "setup_resnet18": case_setup_resnet18, "torchvision": case_torchvision, "embedding": case_embedding}
    if options.case != "setup_resnet18" and options.arch == "r18":
        ARCHS["r18"]["spec"] = resnet18_28_spec(len(CLASS_NAMES_A))
    try:
        if options.arch:
            cases[options.case](ctx, options.arch)
        else:
            cases[options.case](ctx)
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"{options.case} {options.arch or ''}: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
