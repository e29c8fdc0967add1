#!/usr/bin/python3
"""Writes the PyTorch reference fixtures read by tests/core/test_pytorch_reference.cpp.

    /usr/bin/python3 tests/core/pytorch/make_fixtures.py   # rewrites the .h5 files next to this script

Deterministic: fixed seeds, one torch thread, no timestamps in the HDF5 files, so a re-run gives
byte-identical files (compare with `cmp`). The C++ test needs only the committed .h5 files, never Python.

Each fixture is one model, one batch, and torch's results for it:
  attributes     spec (our layer spec), input_shape (C,H,W), batch, loss ("cross_entropy" or "mse"),
                 torch_version, seed
  input          (N,C,H,W) float32
  labels         (N,) int32 (cross_entropy) or targets (N,K) float32 (mse)
  params/<name>  initial weights, in torch's state_dict layout: conv (K,C,R,S), dense (out,in), bias (K)
  logits         (N,K) float32, the model's output
  loss           scalar float32, the mean loss (torch's default reduction)
  grads/<name>   d(mean loss)/d(param) at the initial weights
  after_steps/<run>/<name>
                 weights after `steps` optimizer steps on the same batch (gradients zeroed each step);
                 the <run> group's attributes give the optimizer: optimizer, lr, momentum, nesterov,
                 weight_decay, beta1, beta2, eps, steps
  sample_index/<name>
                 only for tensors over SAMPLE_ABOVE elements: sorted flat indices (int32, row-major torch
                 layout) at which grads/<name> and after_steps/<run>/<name> are stored; every other
                 tensor is stored whole.

Parameter names are ours: "<layer>.<role>", where <layer> counts every token of the spec (relu, pool and
flatten included). The torch model is an nn.Sequential with exactly one module per spec token, so its
state_dict keys are those same names; build() asserts it.

Why float32 and not float64: the claim under test is "the engine computes what PyTorch computes", and
PyTorch trains in float32 by default, so the reference is torch's float32 result, rounding included.
A float64 reference would measure our float32 rounding against exact maths rather than agreement with
torch. To show what "float32 noise" is for each tensor, this script prints torch-float32 against
torch-float64 with the same metric the C++ test uses (not stored).
"""
import copy
import gzip
import os
import re
import struct

import h5py
import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_MNIST_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
FASHION_MNIST_LABELS = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
BATCH = 8
STEPS = 3
# Tensors larger than this (in model a: 3.weight with 51,200 and 7.weight with 131,072 values) have their
# gradients and stepped weights stored at SAMPLE_COUNT fixed positions only: whole, model a's fixture
# would be about 2.2 MB (three float32 copies of 184,586 parameters), and fixtures must stay well under 1 MB.
SAMPLE_ABOVE = 16384
SAMPLE_COUNT = 8192


def parse_spec(spec):
    """[(kind, positional args, named args)] for a spec such as 'conv(8,3,stride=2,pad=1) tanh'."""
    layers = []
    for kind, args in re.findall(r"(\w+)(?:\(([^)]*)\))?", spec):
        positional, named = [], {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            if "=" in item:
                key, value = item.split("=")
                named[key.strip()] = value.strip()
            else:
                positional.append(item)
        layers.append((kind, positional, named))
    return layers


def arg(positional, named, index, name, default=None):
    if index < len(positional):
        return positional[index]
    return named.get(name, default)


def build(spec, input_shape):
    """nn.Sequential with one module per spec token, and the parameter names the engine will use."""
    modules, expected_names = [], []
    x = torch.zeros(1, *input_shape)
    for position, (kind, p, n) in enumerate(parse_spec(spec)):
        if kind == "conv":
            module = nn.Conv2d(x.shape[1], int(arg(p, n, 0, "filters")), int(arg(p, n, 1, "kernel")),
                               stride=int(arg(p, n, 2, "stride", 1)), padding=int(arg(p, n, 3, "pad", 0)))
        elif kind in ("maxpool", "avgpool"):
            window = int(arg(p, n, 0, "window"))
            stride, pad = int(arg(p, n, 1, "stride", window)), int(arg(p, n, 2, "pad", 0))
            module = (nn.MaxPool2d(window, stride, pad) if kind == "maxpool"
                      else nn.AvgPool2d(window, stride, pad, count_include_pad=True))
        elif kind == "relu":
            module = nn.ReLU()
        elif kind == "leakyrelu":
            module = nn.LeakyReLU(float(arg(p, n, 0, "slope", 0.01)))
        elif kind == "sigmoid":
            module = nn.Sigmoid()
        elif kind == "tanh":
            module = nn.Tanh()
        elif kind == "flatten":
            module = nn.Flatten()
        elif kind == "dense":
            module = nn.Linear(x.shape[1], int(arg(p, n, 0, "units")))
        else:
            raise ValueError(f"unknown layer '{kind}' in spec '{spec}'")
        if kind in ("conv", "dense"):
            expected_names += [f"{position}.weight", f"{position}.bias"]
        x = module(x)
        modules.append(module)
    model = nn.Sequential(*modules)
    assert list(model.state_dict().keys()) == expected_names, (list(model.state_dict().keys()), expected_names)
    return model


def fashion_mnist_batch(count):
    """The first `count` Fashion-MNIST test images as (N,1,28,28) floats in [0,1], and their labels."""
    with gzip.open(FASHION_MNIST_TEST, "rb") as f:
        magic, total, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and total >= count
        pixels = np.frombuffer(f.read(count * rows * cols), dtype=np.uint8)
    with gzip.open(FASHION_MNIST_LABELS, "rb") as f:
        magic, total = struct.unpack(">II", f.read(8))
        assert magic == 2049
        labels = np.frombuffer(f.read(count), dtype=np.uint8)
    images = (pixels.astype(np.float32) / np.float32(255)).reshape(count, 1, rows, cols)
    return images, labels.astype(np.int32)


def loss_function(kind):
    return nn.CrossEntropyLoss() if kind == "cross_entropy" else nn.MSELoss()


def make_optimizer(params, run):
    if run["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=run["lr"], momentum=run["momentum"], nesterov=run["nesterov"],
                               weight_decay=run["weight_decay"])
    cls = torch.optim.Adam if run["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=run["lr"], betas=(run["beta1"], run["beta2"]), eps=run["eps"],
               weight_decay=run["weight_decay"])


def reference(model, x, y, loss_kind, runs):
    """torch's logits, mean loss, gradients and, per optimizer run, weights after STEPS steps."""
    out = {}
    work = copy.deepcopy(model)
    logits = work(x)
    loss = loss_function(loss_kind)(logits, y)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach()
    out["grads"] = {name: p.grad.detach().clone() for name, p in work.named_parameters()}
    out["after_steps"] = {}
    for run_name, run in runs.items():
        work = copy.deepcopy(model)
        optimizer = make_optimizer(work.parameters(), run)
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss_function(loss_kind)(work(x), y).backward()
            optimizer.step()
        out["after_steps"][run_name] = {name: p.detach().clone() for name, p in work.named_parameters()}
    return out


def relative_error(ours, ref):
    """max |ours - ref| / max |ref|: the C++ test's metric."""
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).abs().max() / max(float(ref.abs().max()), 1e-30))


def new_group(parent, name):
    """A group without a modification time, so that re-running the script gives identical bytes."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl)
    return parent[name]


def new_dataset(parent, name, data):
    data = np.asarray(data)
    compress = {"compression": "gzip", "compression_opts": 9, "shuffle": True} if data.size > 4096 else {}
    parent.create_dataset(name, data=data, track_times=False, **compress)


def write_fixture(path, spec, input_shape, x, y, loss_kind, runs, seed, round_params_to_bfloat16):
    torch.manual_seed(seed)
    model = build(spec, input_shape)
    if round_params_to_bfloat16:
        # Weights with 8 significant bits: float32 storage whose low 16 bits are zero compresses 2.7x,
        # which keeps the 184,586 initial weights of the reference CNN in a small fixture. Training is
        # then float32 as usual.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    if loss_kind == "cross_entropy":
        y_t = y_t.long()
    ref = reference(model, x_t, y_t, loss_kind, runs)
    again = reference(model, x_t, y_t, loss_kind, runs)
    assert torch.equal(ref["logits"], again["logits"]) and all(
        torch.equal(ref["grads"][k], again["grads"][k]) for k in ref["grads"]), "torch is not deterministic here"

    # float32 noise floor: the same computation in float64, same weights and inputs.
    ref64 = reference(copy.deepcopy(model).double(), x_t.double(), y_t.double() if loss_kind == "mse" else y_t,
                      loss_kind, runs)
    print(f"{os.path.basename(path)}: torch float32 vs torch float64, max|a-b|/max|b|")
    print(f"  logits {relative_error(ref['logits'], ref64['logits']):.2e}   "
          f"loss {relative_error(ref['loss'], ref64['loss']):.2e}")
    for name in ref["grads"]:
        print(f"  grads/{name} {relative_error(ref['grads'][name], ref64['grads'][name]):.2e}")
    for run_name in runs:
        for name in ref["grads"]:
            print(f"  after_steps/{run_name}/{name} "
                  f"{relative_error(ref['after_steps'][run_name][name], ref64['after_steps'][run_name][name]):.2e}")

    params = {name: p.detach() for name, p in model.named_parameters()}
    rng = np.random.default_rng(seed)
    samples = {}
    for name, p in params.items():
        if p.numel() > SAMPLE_ABOVE:
            chosen = rng.choice(np.arange(1, p.numel() - 1), SAMPLE_COUNT - 2, replace=False)
            samples[name] = np.sort(np.concatenate([[0, p.numel() - 1], chosen])).astype(np.int32)

    def stored(name, tensor):
        flat = tensor.numpy().astype(np.float32)
        return flat.reshape(-1)[samples[name]] if name in samples else flat

    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        f.attrs["spec"] = np.bytes_(spec)
        f.attrs["input_shape"] = np.array(input_shape, dtype=np.int32)
        f.attrs["batch"] = np.int32(x.shape[0])
        f.attrs["loss"] = np.bytes_(loss_kind)
        f.attrs["torch_version"] = np.bytes_(torch.__version__)
        f.attrs["seed"] = np.int32(seed)
        new_dataset(f, "input", x.astype(np.float32))
        if loss_kind == "cross_entropy":
            new_dataset(f, "labels", y.astype(np.int32))
        else:
            new_dataset(f, "targets", y.astype(np.float32))
        new_dataset(f, "logits", ref["logits"].numpy().astype(np.float32))
        new_dataset(f, "loss", np.float32(ref["loss"].item()))
        for g in ("params", "grads", "sample_index", "after_steps"):
            new_group(f, g)
        for name, p in params.items():
            new_dataset(f["params"], name, p.numpy().astype(np.float32))
            new_dataset(f["grads"], name, stored(name, ref["grads"][name]))
            if name in samples:
                new_dataset(f["sample_index"], name, samples[name])
        for run_name, run in runs.items():
            run_group = new_group(f["after_steps"], run_name)
            for key, value in run.items():
                run_group.attrs[key] = np.bytes_(value) if isinstance(value, str) else np.float64(value)
            run_group.attrs["steps"] = np.int32(STEPS)
            for name in params:
                new_dataset(run_group, name, stored(name, ref["after_steps"][run_name][name]))
    print(f"  wrote {path}: {os.path.getsize(path)} bytes")


def sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    return {"optimizer": "sgd", "lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
            "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def adam(name, lr, weight_decay):
    return {"optimizer": name, "lr": lr, "momentum": 0.0, "nesterov": False, "weight_decay": weight_decay,
            "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def main():
    torch.set_num_threads(1)  # the float32 sums' order, hence the exact bits, can depend on the thread count
    torch.use_deterministic_algorithms(True)

    # (a) The reference CNN on real Fashion-MNIST test images: cross-entropy, SGD with momentum.
    images, labels = fashion_mnist_batch(BATCH)
    write_fixture(os.path.join(HERE, "reference_cnn.h5"),
                  "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)",
                  (1, 28, 28), images, labels, "cross_entropy",
                  {"sgd_momentum": sgd(0.05, momentum=0.9)}, seed=1, round_params_to_bfloat16=True)

    # (b) Strided, padded convolution, padded average pooling (padding counted in the divisor), tanh,
    # leaky ReLU and sigmoid, and a 3-output regression head with mean squared error. Shapes:
    # (2,16,16) -conv s2 p1-> (8,8,8) -avgpool p1-> (8,5,5) -conv p1-> (16,5,5) -avgpool-> (16,2,2)
    # -flatten-> 64 -> 32 -> 3. Small, so every optimizer is run on it.
    # Adam and AdamW divide each gradient element by its own running magnitude, which magnifies float32
    # rounding in elements near eps: element 310 of 3.weight has g = 8.13e-8 (eps 1e-8). The engine's g
    # there is off by 4e-11 (2e-8 of the largest |g|, ordinary float32 rounding), which moves that weight
    # by 2.7e-6 of the largest weight after AdamW's 3 steps, against about 1e-7 under SGD. Measured, not
    # an engine error: torch float32 itself is 6.5e-7 from float64 there.
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(BATCH, 2, 16, 16, generator=generator).numpy()
    targets = torch.randn(BATCH, 3, generator=generator).numpy()
    write_fixture(os.path.join(HERE, "pool_stride_mse_cnn.h5"),
                  "conv(8,3,stride=2,pad=1) tanh avgpool(2,pad=1) conv(16,3,pad=1) leakyrelu(slope=0.1) avgpool(2) "
                  "flatten dense(32) sigmoid dense(3)",
                  (2, 16, 16), inputs, targets, "mse",
                  {"sgd_nesterov_decay": sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                   "adam_decay": adam("adam", 0.01, weight_decay=0.01),
                   "adamw_decay": adam("adamw", 0.01, weight_decay=0.1)},
                  seed=3, round_params_to_bfloat16=False)


if __name__ == "__main__":
    main()
