#!/usr/bin/python3
"""Two "nodes" on one machine: what a cluster's network does to data-parallel training (issue 20).

    /usr/bin/python3 bench/two_nodes.py [--rates 10gbit,25gbit] [--rounds 3] [--models resnet,reference]
                                        [--torch] [--json out.json]

Needs root (ip netns, tc). The script makes two network namespaces, mpicnn_node1 and mpicnn_node2,
joined by a veth pair (10.77.0.1 and 10.77.0.2) whose bandwidth each end's `tc tbf` limits to the
rate under test (this kernel has no netem: no added latency), and removes them at the end. Each
namespace also gets its own host name (unshare --uts), so that Open MPI sees two hosts.

For each model, link rate and round, back to back (the order rotating every round):
  1 node     `mpicnn train`, 1 rank x 1 thread;
  2 nodes    `mpirun` in node1 with `--host 10.77.0.1,10.77.0.2`, one rank x 1 thread per node, its
             daemon on node2 started through the namespace (plm_rsh_agent below), TCP only
             (`--mca btl tcp,self`, every address restricted to 10.77.0.0/24), no binding (the
             two daemons each think they own the machine's cores);
  1 node x 2 `mpirun -np 2` without namespaces: the two ranks' sums through shared memory;
  torch      (--torch, ResNet only) bench/torch_resnet.py: 1 process x 1 thread, and DDP over gloo
             with one process per namespace, process 0's store at 10.77.0.1 (channels_last, glibc
             malloc tuned: resnet_bench.py's best settings for 1x1 and 2x1); "over 1 node" of
             PyTorch's runs is against PyTorch's 1 node.
The two "nodes" still share the machine's two cores, memory bandwidth and caches: what they show
over the shared-memory run is the link's cost (bytes and the TCP stack), not a second machine's
compute. Rates as resnet_bench.py measures them (img/s over the measured steps); our communication
wait share is the trainer's own (metrics.jsonl `comm_wait_share`: the share of a step rank 0
waited for the gradient sum after backward).

Models: `resnet` the MedMNIST "(28)" ResNet-18 of bench/resnet_bench.py (11.2M parameters, the
exact sums 89 MB per step as int64), global batch 128; `reference` the reference CNN of
configs/fashion_mnist.ini (185k parameters) on data/fashion_mnist.h5, global batch 64, 5 warm-up
and 100 measured steps.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT_ENV, RunFailed, fmt, log, summary  # noqa: E402
from resnet_bench import DATA, REPO, TUNED_MALLOC, Ours, ensure_data, launch  # noqa: E402

NODES = {"10.77.0.1": ("mpicnn_node1", "mpicnn_v1"), "10.77.0.2": ("mpicnn_node2", "mpicnn_v2")}
REFERENCE_SPEC = "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)"
REFERENCE_DATA = "data/fashion_mnist.h5"

# plm_rsh_agent: Open MPI calls it as `agent [options] host command...`; it runs the daemon's
# command in that host's namespace under the host's own name, with a session directory of its own
# (as tests/distributed/local_ssh.sh: two daemons sharing one race on hwloc's topology file).
AGENT = """#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
%s
  *) echo "two_nodes agent: unknown host $host" >&2; exit 1 ;;
esac
OMPI_MCA_orte_tmpdir_base="${TMPDIR:-/tmp}/mpicnn-$ns"
mkdir -p "$OMPI_MCA_orte_tmpdir_base"
export OMPI_MCA_orte_tmpdir_base
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""


def run(*command):
    subprocess.run(command, check=True, capture_output=True, text=True)


def in_node(address, command):
    namespace = NODES[address][0]
    return ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", f'hostname {namespace}; exec "$0" "$@"',
            *command]


@contextlib.contextmanager
def two_nodes():
    """The namespaces and their link, removed whatever happens."""
    (a, (ns_a, v_a)), (b, (ns_b, v_b)) = NODES.items()
    try:
        for ns in (ns_a, ns_b):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", v_a, "netns", ns_a, "type", "veth", "peer", "name", v_b, "netns", ns_b)
        for ns, veth, address in ((ns_a, v_a, a), (ns_b, v_b, b)):
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", veth)
            run("ip", "-n", ns, "link", "set", veth, "up")
        yield
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def set_rate(rate):
    """tbf on both ends: `rate` each way, a burst of 1 ms at that rate (at least 64 KB)."""
    bits = {"gbit": 1e9, "mbit": 1e6}
    number, unit = float(rate[:-4]), rate[-4:]
    burst = max(65536, int(number * bits[unit] / 8 / 1000))
    for ns, veth in NODES.values():
        run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", rate,
            "burst", str(burst), "latency", "100ms")


def mpirun_two_nodes(agent):
    def launcher(command):
        first = next(iter(NODES))
        return in_node(first, ["mpirun", "-np", "2", "--host", ",".join(f"{a}:1" for a in NODES),
                               "--mca", "plm_rsh_agent", agent, "--mca", "btl", "tcp,self",
                               "--mca", "btl_tcp_if_include", "10.77.0.0/24", "--mca", "oob_tcp_if_include",
                               "10.77.0.0/24", "--bind-to", "none", *command])
    return launcher


def torch_command(args, data, processes):
    return [args.torch_python, os.path.join(REPO, "bench", "torch_resnet.py"), "--data", data, "--processes",
            str(processes), "--threads", "1", "--batch-size", str(args.batch), "--warmup", str(args.warmup),
            "--measure-steps", str(args.steps), "--lr", str(args.lr), "--channels-last"]


def torch_single(args, data):
    stdout, _ = launch(torch_command(args, data, 1), args.timeout, {"GLIBC_TUNABLES": TUNED_MALLOC})
    return {"img_per_s": json.loads(stdout.strip().splitlines()[-1])["img_per_s"]}


def torch_ddp(args, data):
    """DDP over gloo, process r in node r+1; rank 0's result."""
    port = 29500 + os.getpid() % 1000
    commands = []
    for rank, (address, (_, veth)) in enumerate(NODES.items()):
        command = torch_command(args, data, 2) + ["--rank", str(rank), "--master-addr", next(iter(NODES)),
                                                  "--master-port", str(port)]
        commands.append(["env", f"GLOO_SOCKET_IFNAME={veth}", f"GLIBC_TUNABLES={TUNED_MALLOC}",
                         *in_node(address, command)])
    helper = subprocess.Popen(commands[1], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stdout, _ = launch(commands[0], args.timeout)
    finally:
        helper.wait(timeout=60)
    return {"img_per_s": json.loads(stdout.strip().splitlines()[-1])["img_per_s"]}


def measure(args, ours, model, rate, agent, samples):
    spec, data = (None, args.data) if model == "resnet" else (REFERENCE_SPEC, REFERENCE_DATA)
    runs = [("1 node", lambda: ours.train(1, 1, "exact", spec, data)),
            ("2 nodes", lambda: ours.train(2, 1, "exact", spec, data, mpirun_two_nodes(agent))),
            ("1 node x 2", lambda: ours.train(2, 1, "exact", spec, data))]
    if args.torch and model == "resnet":
        runs += [("torch 1 node", lambda: torch_single(args, data)), ("DDP 2 nodes", lambda: torch_ddp(args, data))]
    for round_ in range(args.rounds):
        shift = round_ % len(runs)
        for name, function in runs[shift:] + runs[:shift]:
            try:
                result = function()
            except RunFailed as e:
                log(f"{model} {rate} {name}: {e}")
                result = None
            log(f"  {model} {rate} {name}: {result}")
            samples.setdefault((model, rate, name), []).append(result)


def report(samples, models, rates):
    print("\nmodel      link     run           img/s (median [min-max])   over 1 node   our comm wait share")
    for model in models:
        for rate in rates:
            for name in ("1 node", "2 nodes", "1 node x 2", "torch 1 node", "DDP 2 nodes"):
                runs = [s for s in samples.get((model, rate, name), []) if s]
                if not runs:
                    continue
                own = "torch 1 node" if name in ("torch 1 node", "DDP 2 nodes") else "1 node"
                base = [s["img_per_s"] for s in samples.get((model, rate, own), []) if s]
                rates_ = [s["img_per_s"] for s in runs]
                scaling = statistics.median(rates_) / statistics.median(base) if base else None
                wait = [s["comm_wait_share"] for s in runs if "comm_wait_share" in s]
                print(f"{model:<10} {rate:<8} {name:<13} {fmt(summary(rates_), 1):<26} "
                      f"{(f'{scaling:.2f}x' if scaling else '-'):<13} {fmt(summary(wait), 3) if wait else '-'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--rates", default="10gbit,25gbit", help="tbf rates, comma-separated (default 10gbit,25gbit)")
    parser.add_argument("--models", default="resnet,reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="global batch of the ResNet (the reference CNN: 64)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--torch", action="store_true", help="also PyTorch DDP (gloo) across the two nodes")
    parser.add_argument("--torch-python", default="/usr/bin/python3")
    parser.add_argument("--trainer-arg", action="append", default=[])
    parser.add_argument("--json", help="write every sample to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: two_nodes.py needs root (ip netns, tc)")
    models, rates = args.models.split(","), args.rates.split(",")
    os.environ.update(ROOT_ENV)
    samples = {}
    with tempfile.TemporaryDirectory() as scratch, two_nodes():
        agent = os.path.join(scratch, "agent.sh")
        cases = "\n".join(f"  {a}) ns={ns} ;;" for a, (ns, _) in NODES.items())
        with open(agent, "w") as f:
            f.write(AGENT % cases)
        os.chmod(agent, 0o755)
        ours = Ours(args, scratch)
        ensure_data(ours.binary, args.data)
        resnet = (args.batch, args.warmup, args.steps)
        for model in models:
            # The reference CNN trains ~8000 img/s: 100 steps of 64 for a measurable run.
            args.batch, args.warmup, args.steps = resnet if model == "resnet" else (64, 5, 100)
            for rate in rates:
                set_rate(rate)
                measure(args, ours, model, rate, agent, samples)
    report(samples, models, rates)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({" / ".join(k): v for k, v in samples.items()}, f, indent=1)


if __name__ == "__main__":
    main()
