#!/usr/bin/python3
"""Writes the fixtures of tests/core/test_pytorch_volumes.cpp at test time (a CTest fixture-setup test):
PyTorch's Conv3d, MaxPool3d, AvgPool3d and BatchNorm3d, and a small 3D residual network, all in float64.

    /usr/bin/python3 make_volume_fixtures.py OUTPUT.h5

Layout (HDF5, float64 unless noted):
  layers/<case>            attributes kind (conv3d, maxpool3d, avgpool3d, bn_train, bn_eval), the
                           layer's arguments (filters, kernel, stride, pad, bias, window, eps, momentum)
    x (N,C,D,H,W), dy (the output's gradient), y, dx; conv3d: weight, bias, dweight, dbias;
    bn: weight, bias, dweight, dbias, running_mean, running_var after the forward pass, and as they
        were before it (running_mean_before, running_var_before)
  network                  attributes spec (the engine's), batch, classes, torch_version
    input (N,C,D,H,W) float32, labels (N,) int32, params/<name> float32 (engine names = state_dict names
    of the nn.Sequential below), train/logits, train/loss, train/grads/<name>, train/state/<name>
    (running statistics after the training forward), eval/logits (with those statistics)
Inputs and weights are float32 values, so the engine's float32 starts from exactly what PyTorch does.
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(16)


def f32(shape, scale=1.0):
    """Random values representable in float32, as float64."""
    return (torch.rand(shape, dtype=torch.float64) * 2 - 1).mul(scale).float().double()


def put(group, name, tensor):
    group.create_dataset(name, data=tensor.detach().numpy())


def layer_case(root, name, kind, module, x_shape, **attributes):
    group = root.create_group(name)
    group.attrs["kind"] = kind
    for key, value in attributes.items():
        group.attrs[key] = value
    for key, buffer in module.named_buffers():
        if buffer.dtype == torch.float64:
            put(group, key + "_before", buffer)
    x = f32(x_shape).requires_grad_(True)
    y = module(x)
    dy = f32(y.shape)
    y.backward(dy)
    for key, tensor in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
        put(group, key, tensor)
    for key, parameter in module.named_parameters():
        put(group, key, parameter)
        put(group, "d" + key, parameter.grad)
    for key, buffer in module.named_buffers():
        if buffer.dtype == torch.float64:
            put(group, key, buffer)


def layers(root):
    group = root.create_group("layers")
    for name, (filters, kernel, stride, pad, bias, x_shape) in {
        "conv3d_stride2_pad1": (5, 3, 2, 1, True, (3, 2, 7, 8, 9)),
        "conv3d_pointwise_no_bias": (6, 1, 1, 0, False, (2, 4, 3, 5, 4)),
        "conv3d_stem7": (4, 7, 2, 3, False, (2, 1, 12, 12, 12)),
    }.items():
        conv = nn.Conv3d(x_shape[1], filters, kernel, stride=stride, padding=pad, bias=bias).double()
        with torch.no_grad():
            conv.weight.copy_(f32(conv.weight.shape))
            if bias:
                conv.bias.copy_(f32(conv.bias.shape))
        layer_case(group, name, "conv3d", conv, x_shape, filters=filters, kernel=kernel, stride=stride, pad=pad,
                   bias=int(bias))
    for name, (window, stride, pad, x_shape) in {
        "window2": (2, 2, 0, (3, 2, 6, 8, 7)),
        "window3_stride2_pad1": (3, 2, 1, (2, 3, 7, 7, 9)),
        "window3_stride1_pad1": (3, 1, 1, (2, 2, 5, 4, 6)),
    }.items():
        layer_case(group, "maxpool3d_" + name, "maxpool3d", nn.MaxPool3d(window, stride, pad), x_shape,
                   window=window, stride=stride, pad=pad)
        layer_case(group, "avgpool3d_" + name, "avgpool3d", nn.AvgPool3d(window, stride, pad), x_shape,
                   window=window, stride=stride, pad=pad)
    for mode in ("train", "eval"):
        bn = nn.BatchNorm3d(4, eps=1e-5, momentum=0.1).double()
        with torch.no_grad():
            bn.weight.copy_(f32(4) + 1.5)
            bn.bias.copy_(f32(4))
            bn.running_mean.copy_(f32(4).float().double())
            bn.running_var.copy_((f32(4) * 0.5 + 1.0).float().double())
        bn.train(mode == "train")
        layer_case(group, "bn_" + mode, "bn_" + mode, bn, (3, 4, 3, 5, 6), eps=1e-5, momentum=0.1)


class Residual(nn.Module):
    """The engine's residual{main | shortcut}: main(x) + shortcut(x), or + x."""

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        if shortcut is not None:
            self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + (self.shortcut(x) if hasattr(self, "shortcut") else x)


# A bias right before BatchNorm has a gradient of zero (the batch mean removes it): rounding noise on
# both sides, which a relative error cannot compare; the biased convolution here feeds the sum.
SPEC = ("conv3d(4,3,pad=1,bias=false) bn relu "
        "residual{conv3d(8,3,stride=2,pad=1,bias=false) bn relu conv3d(8,3,pad=1,bias=false) bn | "
        "conv3d(8,1,stride=2,bias=false) bn} relu "
        "residual{conv3d(8,1x3x3,pad=0x1x1,bias=false) bn relu conv3d(8,3,pad=1)} relu "
        "avgpool3d(3x3x1,stride=1,pad=1x1x0) maxpool3d(2) globalavgpool flatten dense(3)")


def network_model():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv3d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU(),
                               nn.Conv3d(8, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8)),
                 nn.Sequential(nn.Conv3d(4, 8, 1, stride=2, bias=False), nn.BatchNorm3d(8))),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(8), nn.ReLU(),
                               nn.Conv3d(8, 8, 3, padding=1))),
        nn.ReLU(),
        nn.AvgPool3d((3, 3, 1), stride=1, padding=(1, 1, 0)), nn.MaxPool3d(2), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(8, 3)).double()


def network(root):
    batch, classes = 4, 3
    model = network_model()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):  # scales near 1, shifts near 0
                module.weight.copy_(f32(module.weight.shape, 0.3) + 1.0)
                module.bias.copy_(f32(module.bias.shape, 0.3))
            elif isinstance(module, (nn.Conv3d, nn.Linear)):  # outputs of unit scale
                fan_in = module.weight[0].numel()
                module.weight.copy_(f32(module.weight.shape, (3.0 / fan_in) ** 0.5))
                if module.bias is not None:
                    module.bias.copy_(f32(module.bias.shape, 0.3))
    x = f32((batch, 1, 8, 8, 8))
    labels = torch.tensor([0, 2, 1, 2])
    group = root.create_group("network")
    group.attrs["spec"] = np.bytes_(SPEC)
    group.attrs["batch"] = batch
    group.attrs["classes"] = classes
    group.attrs["torch_version"] = np.bytes_(str(torch.__version__))
    group.create_dataset("input", data=x.float().numpy())
    group.create_dataset("labels", data=labels.int().numpy())
    for name, parameter in model.named_parameters():
        group.create_dataset("params/" + name, data=parameter.detach().float().numpy())
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    put(group, "train/logits", logits)
    group.create_dataset("train/loss", data=np.array([loss.item()]))
    for name, parameter in model.named_parameters():
        put(group, "train/grads/" + name, parameter.grad)
    for name, buffer in model.named_buffers():
        if buffer.dtype == torch.float64:
            put(group, "train/state/" + name, buffer)
    model.eval()
    with torch.no_grad():
        put(group, "eval/logits", model(x))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_volume_fixtures.py OUTPUT.h5")
    with h5py.File(sys.argv[1], "w") as root:
        layers(root)
        network(root)


if __name__ == "__main__":
    main()
