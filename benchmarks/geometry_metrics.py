"""Geometry metrics at CIFAR scale: features (n, d) = (50 000, 512), K = 100.

    .venv/bin/python benchmarks/geometry_metrics.py [--n 50000] [--d 512] [--K 100]

Prints the median seconds of each metric over ``--repeats`` runs, and for comparison a
baseline that computes NC1 the textbook way (d×d Σ_W and Σ_B, then a pseudo-inverse).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from protolib.geometry import (
    class_means,
    delta_g,
    gamma_distributions,
    make_prototypes,
    neural_collapse,
    target_gram,
)


def textbook_nc1(features: torch.Tensor, labels: torch.Tensor, K: int) -> float:
    h = features.double()
    means = class_means(h, labels, K)
    centred = means - means.mean(0)
    residuals = h - means[labels]
    sigma_w = residuals.T @ residuals / h.shape[0]
    sigma_b = centred.T @ centred / K
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / K)


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--K", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(args.n) % args.K
    W = make_prototypes("etf", args.K, args.d)
    features = 3 * W[labels] + torch.randn(args.n, args.d, generator=g)
    G = target_gram("etf", args.K)
    print(
        f"# n={args.n} d={args.d} K={args.K}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rows = {
        "delta_g": lambda: delta_g(features, labels, G),
        "gamma_distributions": lambda: gamma_distributions(features, labels, classifier=W),
        "neural_collapse": lambda: neural_collapse(features, labels, classifier=W),
        "nc1 textbook (d×d pinv)": lambda: textbook_nc1(features, labels, args.K),
    }
    for name, fn in rows.items():
        print(f"{name:<26}{median_time(fn, args.repeats):>9.3f} s")
    fast = neural_collapse(features, labels)["nc1"]
    slow = textbook_nc1(features, labels, args.K)
    print(f"# nc1 = {fast:.10g} (textbook {slow:.10g})")


if __name__ == "__main__":
    main()
