#!/usr/bin/python3
"""PyTorch reference for mpicnn: the reference CNN on Fashion-MNIST, single process.

Two modes:
  --measure-steps S --warmup W   one JSON line: training throughput (forward + backward + SGD step)
                                 over S steps after W warm-up steps, and peak RSS.
  --epochs E                     trains E epochs; one JSON line per epoch with the test accuracy.

Data: the Fashion-MNIST IDX .gz files (--idx-dir), or an HDF5 file (--data) holding
/train/images uint8 (N,1,28,28), /train/labels and, for accuracy, /test/images, /test/labels.
Everything is held in memory, normalised as (x/255 - mean)/std with the training set's mean and std.
Run with /usr/bin/python3 (Debian's interpreter sees python3-torch).
"""
import argparse
import gzip
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """Array from an IDX file (optionally gzip-compressed): big-endian header, uint8 payload."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), file has {payload.size}")
    return payload.reshape(shape).copy()  # writable, so torch can wrap it


def load_split(args, split):
    """(images uint8 (N,1,28,28), labels int64 (N,)) for split 'train' or 'test'."""
    if args.data:
        import h5py
        with h5py.File(args.data, "r") as f:
            if f"/{split}/images" not in f:
                raise KeyError(f"{args.data}: no dataset /{split}/images")
            images = f[f"/{split}/images"][...]
            labels = f[f"/{split}/labels"][...]
    else:
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(os.path.join(args.idx_dir, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(args.idx_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    images = images.reshape(-1, 1, 28, 28)
    if images.dtype != np.uint8:
        raise TypeError(f"{split} images: expected uint8, got {images.dtype}")
    return images, labels.astype(np.int64).reshape(-1)


def normaliser(train_images):
    """Mean and standard deviation of x/255 over the training pixels, exact, from a histogram of bytes."""
    pixels = train_images.reshape(-1)
    counts = np.zeros(256, dtype=np.float64)
    for start in range(0, pixels.size, 1 << 20):  # in slices: bincount widens its input to int64
        counts += np.bincount(pixels[start:start + (1 << 20)], minlength=256)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    return float(mean), float(np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum()))


def to_tensor(images, mean, std):
    """Float32 (N,1,28,28), normalised in place so no float64 or second float copy of the set exists."""
    return torch.as_tensor(images, dtype=torch.float32).div_(255.0).sub_(mean).div_(std)


class ReferenceCNN(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(1024, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def make_optimizer(model, args):
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)


def memory_format(args):
    """--channels-last: NHWC activations, where oneDNN's convolutions and PyTorch's pooling are faster
    on CPU than in the default NCHW (which is what a plain model gets)."""
    return torch.channels_last if args.channels_last else torch.contiguous_format


def batch(x, idx, args):
    return x[idx].contiguous(memory_format=memory_format(args))


def train_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def batch_indices(n, batch_size, generator):
    """Shuffled index batches for one epoch; the last partial batch is dropped."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def evaluate(model, x, y, batch_size=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            correct += (model(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum().item()
    model.train()
    return correct / len(x)


def measure(model, optimizer, x, y, args):
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    while len(batches) < args.warmup + args.measure_steps:
        batches.extend(batch_indices(len(x), args.batch_size, generator))
    batches = batches[:args.warmup + args.measure_steps]
    for idx in batches[:args.warmup]:
        train_step(model, optimizer, batch(x, idx, args), y[idx])
    start = time.perf_counter()
    for idx in batches[args.warmup:]:
        train_step(model, optimizer, batch(x, idx, args), y[idx])
    elapsed = time.perf_counter() - start
    return {
        "benchmark": "torch_reference", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "batch_size": args.batch_size, "warmup_steps": args.warmup, "steps": args.measure_steps,
        "seconds": round(elapsed, 4), "img_per_s": round(args.batch_size * args.measure_steps / elapsed, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def train_epochs(model, optimizer, x, y, test_x, test_y, args):
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss_sum, steps = 0.0, 0
        for idx in batch_indices(len(x), args.batch_size, generator):
            loss_sum += train_step(model, optimizer, batch(x, idx, args), y[idx]).item()
            steps += 1
        seconds = time.perf_counter() - start
        print(json.dumps({
            "epoch": epoch, "train_loss": round(loss_sum / steps, 4),
            "test_accuracy": round(evaluate(model, test_x, test_y), 4),
            "seconds": round(seconds, 1), "img_per_s": round(steps * args.batch_size / seconds, 1),
        }), flush=True)


def common_arguments(parser):
    parser.add_argument("--data", help="HDF5 file with /train/{images,labels} (and /test/...); default: IDX files")
    parser.add_argument("--idx-dir", default=DEFAULT_IDX_DIR, help="folder of the Fashion-MNIST IDX .gz files")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure-steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format (PyTorch's faster CPU layout)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--epochs", type=int, default=0, help="train this many epochs instead of measuring")
    args = parser.parse_args()
    if args.threads < 1 or args.batch_size < 1 or args.measure_steps < 1 or args.warmup < 0 or args.epochs < 0:
        parser.error("--threads, --batch-size and --measure-steps must be >= 1; --warmup and --epochs >= 0")

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    train_images, train_labels = load_split(args, "train")
    mean, std = normaliser(train_images)
    x, y = to_tensor(train_images, mean, std), torch.from_numpy(train_labels)
    model = ReferenceCNN().to(memory_format=memory_format(args))
    optimizer = make_optimizer(model, args)
    if args.epochs:
        test_images, test_labels = load_split(args, "test")
        print(json.dumps({"mean": round(mean, 5), "std": round(std, 5), "train": len(x),
                          "test": len(test_images), "threads": args.threads}), flush=True)
        train_epochs(model, optimizer, x, y, to_tensor(test_images, mean, std), torch.from_numpy(test_labels), args)
    else:
        print(json.dumps(measure(model, optimizer, x, y, args)), flush=True)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
