"""SupCon forward+backward time with n_w fixed prototypes, computed with multiplicities,
against the same loss on the literally replicated batch (MATH.md §1.4).

    .venv/bin/python benchmarks/supcon_prototypes.py [--n 2048] [--d 128] [--K 100]

Prints one row per configuration: median seconds per forward+backward over ``--repeats``
runs after a warm-up, and the ratio to the ``n_w = 1`` and no-prototype rows.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes
from protolib.losses import supcon_loss

MEMORY_LIMIT_BYTES = 8 * 2**30  # skip literal batches whose N×N matrices would exceed this


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: dict, device: torch.device, repeats: int) -> dict:
    """Median seconds per call of each step; the steps are interleaved round-robin so
    that drift in the machine's speed affects all of them alike."""
    for step in steps.values():
        step()  # warm-up
    times: dict = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--K", type=int, default=100)
    parser.add_argument("--n-w", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(args.n, args.d, generator=g), dim=-1).to(device)
    features.requires_grad_(True)
    labels = torch.randint(0, args.K, (args.n,), generator=g).to(device)
    prototypes = make_prototypes("etf", args.K, args.d).to(device)

    def fast(n_w: int):
        def step():
            supcon_loss(features, labels, prototypes=prototypes, n_w=n_w)["loss"].backward()

        return step

    def literal(n_w: int):
        members = torch.cat([features, prototypes.repeat_interleave(n_w, dim=0)])
        member_labels = torch.cat(
            [labels, torch.arange(args.K, device=device).repeat_interleave(n_w)]
        )

        def step():
            supcon_loss(members, member_labels)["loss"].backward()

        return step

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# {where}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(f"# n={args.n} d={args.d} K={args.K}; median of {args.repeats} forward+backward (s)")
    print(f"{'method':<12}{'n_w':>6}{'members':>9}{'seconds':>10}{'/n_w=1':>8}{'/none':>8}")
    fast_times = time_steps(
        {n_w: fast(n_w) for n_w in sorted({0, 1, *args.n_w})}, device, args.repeats
    )
    base, one = fast_times[0], fast_times[1]
    for n_w, t in fast_times.items():
        method, size = ("none", args.n) if n_w == 0 else ("multiset", args.n + args.K)
        print(f"{method:<12}{n_w:>6}{size:>9}{t:>10.4f}{t / one:>8.2f}{t / base:>8.2f}")
    for n_w in args.n_w:
        size = args.n + args.K * n_w
        if 4 * size**2 * 6 > MEMORY_LIMIT_BYTES:
            gib = 4 * size**2 / 2**30
            print(
                f"{'literal':<12}{n_w:>6}{size:>9}  skipped: one {size}x{size} float32 matrix "
                f"is {gib:.0f} GiB"
            )
            continue
        t = time_steps({n_w: literal(n_w)}, device, max(1, args.repeats // 3))[n_w]
        print(f"{'literal':<12}{n_w:>6}{size:>9}{t:>10.4f}{t / one:>8.2f}{t / base:>8.2f}")


if __name__ == "__main__":
    main()
