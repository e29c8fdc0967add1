#!/usr/bin/python3
"""PyTorch DistributedDataParallel reference for mpicnn's data-parallel training.

The reference CNN of torch_reference.py under DDP with the gloo backend: --processes processes
(default 2) x --threads threads (default 1) on localhost, global batch --batch-size (default 64)
split evenly over the processes. Every process takes its slice of the same shuffled global batch.
Prints one JSON line: aggregate training throughput (global images per second over --measure-steps
steps after --warmup steps; the slowest process's time counts) and the largest peak RSS of a process.
Run with /usr/bin/python3 (Debian's interpreter sees python3-torch).
"""
import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, args, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    try:
        ref.seed_everything(args.seed)
        images, labels = ref.load_split(args, "train")
        mean, std = ref.normaliser(images)
        x, y = ref.to_tensor(images, mean, std), torch.from_numpy(labels)
        del images
        # rank 0's initial weights are broadcast
        model = DistributedDataParallel(ref.ReferenceCNN().to(memory_format=ref.memory_format(args)))
        optimizer = ref.make_optimizer(model, args)
        local = args.batch_size // args.processes

        generator = torch.Generator().manual_seed(args.seed)  # same order on every rank
        batches = []
        while len(batches) < args.warmup + args.measure_steps:
            batches.extend(ref.batch_indices(len(x), args.batch_size, generator))
        batches = [b[rank * local:(rank + 1) * local] for b in batches[:args.warmup + args.measure_steps]]

        for idx in batches[:args.warmup]:
            ref.train_step(model, optimizer, ref.batch(x, idx, args), y[idx])
        dist.barrier()
        start = time.perf_counter()
        for idx in batches[args.warmup:]:
            ref.train_step(model, optimizer, ref.batch(x, idx, args), y[idx])
        elapsed = time.perf_counter() - start

        stats = torch.tensor([elapsed, ref.peak_rss_mib()], dtype=torch.float64)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        if rank == 0:
            seconds, rss = stats.tolist()
            print(json.dumps({
                "benchmark": "torch_ddp", "torch": torch.__version__, "backend": "gloo",
                "processes": args.processes, "threads_per_process": args.threads,
                "batch_size": args.batch_size, "batch_per_process": local,
                "warmup_steps": args.warmup, "steps": args.measure_steps, "seconds": round(seconds, 4),
                "img_per_s": round(args.batch_size * args.measure_steps / seconds, 1),
                "peak_rss_mib_per_process": round(rss, 1),
            }), flush=True)
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ref.common_arguments(parser)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each process")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size, split over the processes")
    args = parser.parse_args()
    if args.processes < 1 or args.threads < 1 or args.measure_steps < 1 or args.warmup < 0:
        parser.error("--processes, --threads and --measure-steps must be >= 1; --warmup >= 0")
    if args.batch_size % args.processes:
        parser.error(f"--batch-size {args.batch_size} does not split evenly over {args.processes} processes")
    mp.spawn(worker, args=(args, free_port()), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
