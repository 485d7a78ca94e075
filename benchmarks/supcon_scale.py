"""SupCon at large batch sizes: forward + backward time and peak memory of the dense path,
the blockwise path (MATH.md §1.10) and pytorch-metric-learning's ``SupConLoss``.

    .venv/bin/python benchmarks/supcon_scale.py [--n 4096 16384 65536] [--device cpu]

n unit features, d = 128, float32, 100 balanced-at-random labels, τ = 0.1, mean
reduction; one thread on the CPU. Each (method, n) runs in a fresh process: a warm-up
forward + backward at n = 256, then ``--repeats`` timed ones at n (the fastest is
reported). Memory on the CPU is the process's peak resident set (VmHWM: torch's
allocations count, unlike tracemalloc's), whole and above what the process held once its
inputs were built ("extra"); on CUDA ``torch.cuda.max_memory_allocated``. A configuration
whose estimated memory exceeds ``--max-gib`` (default: half the memory available now) is
skipped with a line saying so. ``pytorch-metric-learning`` is a benchmark-only dependency
(``pip install pytorch-metric-learning``); without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("dense", "blockwise", "pml")
#: bytes per n² element (forward + backward), measured on the CPU, to skip what cannot fit
BYTES_PER_PAIR = {"dense": 20, "blockwise": 0, "pml": 45}
STATUS = Path("/proc/self/status")


def memory_gib(field: str) -> float:
    """A ``Vm…`` line of /proc/self/status, in GiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in {STATUS}")


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def child(method: str, n: int, device_name: str, repeats: int) -> dict:
    """One configuration, in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    device = torch.device(device_name)
    if method == "pml":
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=0.1)

        def loss_of(z, y):
            return pml(z, y)
    else:
        from protolib.losses import supcon_loss

        def loss_of(z, y):
            return supcon_loss(z, y, tau=0.1, blockwise=method == "blockwise")["loss"]

    def inputs(size):
        g = torch.Generator(device=device).manual_seed(0)
        z = F.normalize(torch.randn(size, 128, generator=g, device=device), dim=1)
        y = torch.randint(0, 100, (size,), generator=g, device=device)
        return z, y

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    z, y = inputs(256)  # warm-up: kernels, thread pool, allocator
    loss_of(z.requires_grad_(True), y).backward()
    z, y = inputs(n)
    sync()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    base = memory_gib("VmHWM")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**30
    times, cpu = [], []
    for _ in range(repeats):
        leaf = z.clone().requires_grad_(True)
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        value = loss_of(leaf, y)
        value.backward()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del leaf
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = memory_gib("VmHWM")
    return {
        "seconds": min(times),
        "cpu_seconds": min(cpu),
        "peak_gib": peak,
        "extra_gib": peak - base,
        "value": float(value),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 below n = 16384")
    parser.add_argument("--max-gib", type=float, default=None)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n = args.child[0], int(args.child[1])
        print(json.dumps(child(method, n, args.device, args.repeats or 1)))
        return
    cuda = args.device.startswith("cuda")
    sizes = args.n or ([4096, 16384, 65536, 131072, 262144] if cuda else [4096, 16384, 65536])
    limit = args.max_gib if args.max_gib is not None else available_gib() / 2
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {args.device}")
    print("| method | n | seconds (wall) | CPU seconds | peak GiB | extra GiB | loss |")
    print("|---|---|---|---|---|---|---|")
    results: dict[tuple[str, int], dict] = {}
    for n in sizes:
        for method in args.methods:
            need = BYTES_PER_PAIR[method] * n * n / 2**30
            if not cuda and need > limit:
                print(
                    f"| {method} | {n} | — | — | — | — | skipped: needs about {need:.1f} GiB, "
                    f"over the {limit:.1f} GiB limit |",
                    flush=True,
                )
                continue
            repeats = args.repeats or (3 if n < 16384 else 1)
            command = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--repeats",
                str(repeats),
                "--child",
                method,
                str(n),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["killed"])[-1][:120]
                print(f"| {method} | {n} | — | — | — | — | failed: {why} |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results[method, n] = r
            print(
                f"| {method} | {n} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | "
                f"{r['peak_gib']:.3f} | {r['extra_gib']:.3f} | {r['value']:.6f} |",
                flush=True,
            )
    print()
    for n in sizes:
        if ("dense", n) in results and ("blockwise", n) in results:
            d, b = results["dense", n], results["blockwise", n]
            print(
                f"n = {n}: blockwise ÷ dense: wall {b['seconds'] / d['seconds']:.2f}, "
                f"CPU {b['cpu_seconds'] / d['cpu_seconds']:.2f}, "
                f"peak {b['peak_gib'] / d['peak_gib']:.3f}, "
                f"extra {b['extra_gib'] / d['extra_gib']:.3f}"
            )


if __name__ == "__main__":
    main()
