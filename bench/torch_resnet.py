#!/usr/bin/python3
"""PyTorch reference for mpicnn's ResNet-18 (28): torchvision's resnet18 with MedMNIST's 28x28 stem.

torchvision.models.resnet18(num_classes=K) with conv1 replaced by a 3x3 stride-1 pad-1 convolution
(64 filters, no bias) and maxpool by nn.Identity, as the MedMNIST "(28)" baseline; torchvision's own
initialisation (mpicnn: --model.init=resnet). SGD with momentum, cross entropy, global batch
--batch-size. One process (--processes 1) or DistributedDataParallel over gloo (--processes N, the
global batch split evenly; every process takes its slice of the same shuffled global batch, and
BatchNorm's statistics are each process's own, as DDP without SyncBatchNorm).

Data: an mpicnn HDF5 dataset (datasets/README.md; /train/images uint8 (N,C,H,W), /train/labels),
held in memory as float32 normalised with the file's per-channel mean and std, as our trainer does.

Prints one JSON line: img/s over --measure-steps steps after --warmup steps (the slowest process's
time counts), process 0's seconds per step and CPU seconds (all its threads) over the measured steps,
and the largest peak RSS of a process.
Run with /usr/bin/python3 (Debian's interpreter sees python3-torch and python3-torchvision).
"""
import argparse
import faulthandler
import json
import os
import resource
import signal
import socket
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def resnet18_28(classes):
    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's rule
    model.maxpool = nn.Identity()
    return model


def load_train(path):
    """(images float32 (N,C,H,W) normalised as mpicnn's reader does, labels int64 (N,), classes)."""
    with h5py.File(path, "r") as f:
        images = f["train/images"][...]
        labels = f["train/labels"][...].astype(np.int64).reshape(-1)
        mean = np.asarray(f.attrs["mean"], dtype=np.float64)
        std = np.asarray(f.attrs["std"], dtype=np.float64)
        classes = int(f.attrs["num_classes"])
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"{path}: /train/images must be uint8 (N,C,H,W), got {images.dtype} {images.shape}")
    x = torch.as_tensor(images, dtype=torch.float32).div_(255.0)
    x.sub_(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    x.div_(torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    return x, torch.from_numpy(labels), classes


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def global_batches(n, batch_size, count, seed):
    """`count` shuffled index batches of batch_size, epoch after epoch (last partial batch dropped)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    while len(batches) < count:
        order = torch.randperm(n, generator=generator)
        batches.extend(order[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size))
    return batches[:count]


def run(rank, args, port):
    """Trains warmup + measure steps. Returns the measured steps' seconds (the slowest process's), each step's
    seconds and CPU seconds (all threads) of this process, the last loss, the largest peak RSS in MiB."""
    torch.set_num_threads(args.threads)
    distributed = args.processes > 1
    if distributed:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = args.master_addr, str(port)
        if args.bind:
            os.sched_setaffinity(0, {rank % os.cpu_count()})
        import torch.distributed as dist
        dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    torch.manual_seed(args.seed)
    x, y, classes = load_train(args.data)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = resnet18_28(classes).to(memory_format=layout)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model)  # rank 0's weights are broadcast
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    local = args.batch_size // args.processes
    batches = [b[rank * local:(rank + 1) * local]
               for b in global_batches(len(x), args.batch_size, args.warmup + args.measure_steps, args.seed)]

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx].contiguous(memory_format=layout)), y[idx])
        loss.backward()
        optimizer.step()
        return loss

    for idx in batches[:args.warmup]:
        step(idx)
    if distributed:
        dist.barrier()
    step_seconds = []
    cpu_start = time.process_time()
    start = last = time.perf_counter()
    for idx in batches[args.warmup:]:
        loss = step(idx)
        now = time.perf_counter()
        step_seconds.append(now - last)
        last = now
    elapsed, cpu = last - start, time.process_time() - cpu_start
    loss = float(loss)
    if not distributed:
        return elapsed, step_seconds, cpu, loss, peak_rss_mib()
    stats = torch.tensor([elapsed, peak_rss_mib()], dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    model = optimizer = None  # frees DDP's reducer before the process group it uses
    dist.barrier()
    dist.destroy_process_group()
    return stats[0].item(), step_seconds, cpu, loss, stats[1].item()


def report(args, elapsed, step_seconds, cpu, loss, rss):
    print(json.dumps({
        "benchmark": "torch_resnet18_28", "torch": torch.__version__, "torchvision": torchvision.__version__,
        "processes": args.processes, "threads_per_process": args.threads, "channels_last": args.channels_last,
        "bind": args.bind, "batch_size": args.batch_size, "warmup_steps": args.warmup, "steps": args.measure_steps,
        "seconds": round(elapsed, 4), "img_per_s": round(args.batch_size * args.measure_steps / elapsed, 2),
        "step_seconds": [round(s, 4) for s in step_seconds], "cpu_s": round(cpu, 4), "loss": round(loss, 5),
        "peak_rss_mib_per_process": round(rss, 1),
    }), flush=True)


def worker(rank, args, port):
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints where a worker hangs
    result = run(rank, args, port)
    if rank == 0:
        report(args, *result)
    # Torch 1.13's teardown after gloo at times spins forever in one worker (2 of ~10 DDP runs here,
    # after the result was printed): leave without running destructors; mp.spawn sees exit code 0.
    sys.stdout.flush()
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="mpicnn HDF5 dataset with /train/{images,labels}")
    parser.add_argument("--processes", type=int, default=1, help="1: one process; more: DDP over gloo")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each process")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--measure-steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--bind", action="store_true", help="DDP: pin process r to cpu r (as mpirun binds our ranks)")
    parser.add_argument("--rank", type=int, help="DDP: run only this process of --processes (one per host, e.g. "
                        "bench/two_nodes.py's namespaces), meeting the others at --master-addr:--master-port")
    parser.add_argument("--master-addr", default="127.0.0.1", help="DDP: address of process 0 (default 127.0.0.1)")
    parser.add_argument("--master-port", type=int, default=0, help="DDP with --rank: port of process 0")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if min(args.processes, args.threads, args.measure_steps) < 1 or args.warmup < 0:
        parser.error("--processes, --threads and --measure-steps must be >= 1; --warmup >= 0")
    if args.batch_size % args.processes:
        parser.error(f"--batch-size {args.batch_size} does not split evenly over {args.processes} processes")
    if args.processes == 1:
        report(args, *run(0, args, None))
    elif args.rank is not None:
        if not 0 <= args.rank < args.processes or not args.master_port:
            parser.error("--rank needs 0 <= rank < --processes and --master-port")
        worker(args.rank, args, args.master_port)
    else:
        import torch.multiprocessing as mp
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(args, port), nprocs=args.processes, join=True)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
