"""The unconstrained-features simulations of ``protolib theory`` (MATH.md §5): how long
each takes, and what the multiset simulation's objective costs per evaluation.

    .venv/bin/python benchmarks/ufm_simulations.py [--threads 1] [--repeats 5]

Prints, for each of the five simulations of :func:`protolib.theory.ufm.run_all` at its
defaults (seed 0), its wall time; then, on the multiset simulation's problem (12 points
in 3 classes, every one of the 167 960 multiset batches of 9), the seconds per evaluation
(forward and backward) of what it minimises, :func:`multiset_supcon_mean`, against the
baseline measured in the same run, the mean of :func:`multiset_supcon_losses` (the
per-batch losses, which it minimised before), with their largest difference in value and
gradient. ``--threads`` sets torch's intra-op threads (the pipeline's theory rule runs
with one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # protolib from this checkout

import torch

from protolib.theory import ufm

SIMULATIONS = (
    "ce_l2",
    "supcon_circle",
    "supcon_all_multisets",
    "limit_geometries",
    "batchwise_minimisers",
)


def evaluation_seconds(objective, members: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward and backward of ``objective(members)``."""
    times = []
    for _ in range(repeats + 1):  # the first, a warm-up, is not counted
        leaf = members.clone().requires_grad_()
        start = time.perf_counter()
        objective(leaf).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="evaluations timed (default 5)")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    ufm.ce_l2(lams=(1e-2,), points_per_class=2, starts=1, max_steps=1)  # imports, not timed
    total = 0.0
    for name in SIMULATIONS:
        start = time.perf_counter()
        getattr(ufm, name)(seed=0)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{name:22s} {seconds:6.2f} s")
    print(f"{'all five':22s} {total:6.2f} s")

    labels = torch.arange(3).repeat_interleave(4)
    counts = torch.from_numpy(ufm.multiset_counts(12, 9)).to(torch.float64)
    angles = 2 * torch.pi * torch.rand(12, generator=torch.Generator().manual_seed(0))
    members = torch.stack([angles.cos(), angles.sin()], dim=1).to(torch.float64)
    tau = 0.25  # the simulation's ρ = 2

    def baseline(h: torch.Tensor) -> torch.Tensor:
        return ufm.multiset_supcon_losses(h, labels, counts, tau=tau).mean()

    fast = ufm.multiset_supcon_mean(labels, counts, tau=tau)
    old = evaluation_seconds(baseline, members, args.repeats)
    new = evaluation_seconds(fast, members, args.repeats)
    grads = []
    values = []
    for objective in (baseline, fast):
        leaf = members.clone().requires_grad_()
        value = objective(leaf)
        value.backward()
        values.append(value.item())
        grads.append(leaf.grad)
    print(
        f"multiset objective, {counts.shape[0]} batches: mean of the batch losses "
        f"{old * 1e3:.1f} ms, multiset_supcon_mean {new * 1e3:.1f} ms per evaluation "
        f"({old / new:.1f}x); value differs by {abs(values[0] - values[1]):.1e}, "
        f"gradient by {float((grads[0] - grads[1]).abs().max()):.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
