#!/usr/bin/python3
"""Writes the reference tests/core/test_pytorch_global_batchnorm.cpp reads, at test time: PyTorch's
BatchNorm2d in training mode, float64, over one batch (what global-batch BatchNorm must give
over the whole global batch, however it is cut into micro-batches and ranks).

    /usr/bin/python3 make_global_bn_fixture.py OUTPUT.txt

Text layout, one line per array (name, then values): shape (N C H W); the float32 inputs x, gamma,
beta and dy (the gradient of the loss with respect to the output), printed exactly; then, in
float64, y, dx, dgamma, dbeta, and running_mean and running_var after this one step from PyTorch's
initial 0 and 1 (momentum 0.1; running_var moves towards the unbiased variance).
"""
import sys

import numpy as np
import torch


def line(name, values):
    return name + " " + " ".join(repr(float(v)) for v in np.ravel(values)) + "\n"


def main(path):
    rng = np.random.default_rng(15)
    n, c, h, w = 6, 3, 4, 3
    x = (rng.normal(0, 2, size=(n, c, h, w)) + np.array([1, -3, 0.5]).reshape(1, c, 1, 1)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, size=c).astype(np.float32)
    beta = rng.normal(0, 1, size=c).astype(np.float32)
    dy = rng.normal(0, 1, size=(n, c, h, w)).astype(np.float32)

    bn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma, dtype=torch.float64))
        bn.bias.copy_(torch.tensor(beta, dtype=torch.float64))
    bn.train()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = bn(xt)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()

    with open(path, "w") as out:
        out.write(line("shape", [n, c, h, w]))
        out.write(line("x", x) + line("gamma", gamma) + line("beta", beta) + line("dy", dy))
        out.write(line("y", y.detach().numpy()) + line("dx", xt.grad.numpy()))
        out.write(line("dgamma", bn.weight.grad.numpy()) + line("dbeta", bn.bias.grad.numpy()))
        out.write(line("running_mean", bn.running_mean.numpy()) + line("running_var", bn.running_var.numpy()))


if __name__ == "__main__":
    main(sys.argv[1])
