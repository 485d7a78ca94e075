"""The whole evaluation-metric panel at CIFAR scale (MATH.md §3): 50 000 × 512 float32
training embeddings, K = 100, 10 000 test points.

    .venv/bin/python benchmarks/metric_panel.py [--n 50000] [--m 10000] [--d 512] [--K 100]

Each case runs in a fresh process and reports its wall and CPU seconds (on a shared machine,
CPU seconds over the thread count bound the wall time an idle one would take) and its peak
memory above what
its inputs hold (the resident-set high-water mark, VmHWM of /proc/self/status, reset
after the inputs are built; torch's allocations count, unlike tracemalloc's):

- ``cheap``: the metrics of every evaluation (the panel the loop runs before its last step:
  Δ_G, γ, NC1 and the other cheap ones);
- ``full``: every metric, kNN accuracy and uniformity included (the final evaluation);
- ``chunked`` and ``naive`` on ``--small`` training points (and a fifth of the test
  points): kNN accuracy and uniformity chunked, and the baseline that forms the whole
  n×n and m×n distance matrices; their values must agree.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes, target_gram
from protolib.geometry.hypersphere import uniformity
from protolib.geometry.neighbours import knn_accuracy
from protolib.train.evaluate import evaluate_split_pair

STATUS = Path("/proc/self/status")


def memory_kib(field: str) -> int:
    """A ``Vm…`` line of /proc/self/status, in KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def embeddings(n: int, m: int, d: int, K: int) -> dict[str, torch.Tensor]:
    """Prototypes × 3 plus unit Gaussian noise, unit rows (as a SupCon run records),
    built in place; balanced labels."""
    g = torch.Generator().manual_seed(0)
    W = make_prototypes("etf", K, d)
    labels = torch.arange(n) % K
    test_labels = torch.arange(m) % K
    train = torch.randn(n, d, generator=g).add_(3 * W[labels])
    test = torch.randn(m, d, generator=g).add_(3 * W[test_labels])
    return {
        "train_features": F.normalize(train, dim=1),
        "train_labels": labels,
        "test_features": F.normalize(test, dim=1),
        "test_labels": test_labels,
        "classifier": W.float(),
    }


def naive_knn(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, y, K, k=20):
    """kNN accuracy from the whole (m, n) cosine matrix."""
    sims = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    nearest = labels[sims.topk(k, dim=1).indices]
    votes = torch.zeros(test.shape[0], K).scatter_add_(1, nearest, torch.ones(nearest.shape))
    return float((votes.argmax(1) == y).double().mean())


def naive_uniformity(train: torch.Tensor) -> float:
    """Uniformity from the whole (n, n) matrix of squared distances, in float64."""
    u = F.normalize(train, dim=1).double()
    terms = torch.exp(-2.0 * torch.cdist(u, u).square())
    n = u.shape[0]
    return math.log(float(terms.sum() - terms.diagonal().sum()) / (n * (n - 1)))


def run_case(case: str, n: int, m: int, d: int, K: int) -> dict[str, object]:
    x = embeddings(n, m, d, K)
    reset_peak()
    before = memory_kib("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    if case in ("cheap", "full"):
        evaluation = evaluate_split_pair(
            train_features=x["train_features"],
            train_logits=None,
            train_labels=x["train_labels"],
            test_features=x["test_features"],
            test_logits=None,
            test_labels=x["test_labels"],
            num_classes=K,
            target_gram=target_gram("etf", K),
            classifier=x["classifier"],
            expensive=case == "full",
        )
        values = {f"{s}/{name}": v for (s, name), v in evaluation.metrics.items()}
    elif case == "chunked":
        f, y = x["train_features"], x["train_labels"]
        values = {
            "knn_accuracy": knn_accuracy(f, y, x["test_features"], x["test_labels"], num_classes=K),
            "uniformity": uniformity(f),
        }
    else:
        f, y = x["train_features"], x["train_labels"]
        values = {
            "knn_accuracy": naive_knn(f, y, x["test_features"], x["test_labels"], K),
            "uniformity": naive_uniformity(f),
        }
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    extra = (memory_kib("VmHWM") - before) / 2**20
    return {
        "case": case,
        "n": n,
        "m": m,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_extra_gib": extra,
        **values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--K", type=int, default=100)
    parser.add_argument("--small", type=int, default=10_000, help="n of the naive baseline")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.m, args.d, args.K)))
        return
    print(
        f"# n={args.n} m={args.m} d={args.d} K={args.K}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    results = []
    cases = [("cheap", args.n, args.m), ("full", args.n, args.m)]
    cases += [(c, args.small, args.small // 5) for c in ("chunked", "naive")]
    for case, n, m in cases:
        command = [sys.executable, __file__, "--case", case, "--n", str(n), "--m", str(m)]
        command += ["--d", str(args.d), "--K", str(args.K)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.splitlines()[-1])
        results.append(result)
        print(
            f"{case:<8} n={n:<6} m={m:<6} {result['seconds']:>8.2f} s wall "
            f"{result['cpu_seconds']:>8.2f} s CPU {result['peak_extra_gib']:>6.2f} GiB extra"
        )
    full = results[1]
    for key in ("test/knn_accuracy", "train/uniformity", "test/ncc_agreement", "train/cdnv"):
        print(f"# {key} = {full[key]:.10g}")
    chunked, naive = results[2], results[3]
    for key in ("knn_accuracy", "uniformity"):
        print(f"# n={args.small}: {key} chunked {chunked[key]:.12g}, naive {naive[key]:.12g}")


if __name__ == "__main__":
    main()
