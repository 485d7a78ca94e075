"""Time to fit on scikit-learn digits (the embedded default), CE vs SupCon under label
corruption: iterations until zero training error against the corrupted labels.

    .venv/bin/python benchmarks/time_to_fit_digits.py [--p 0 0.2 0.4] [--seeds 0]

Each run is a real `train_run` (default small model, batches of 256 drawn with
replacement, SGD lr 0.05, evaluation every 100 iterations); SupCon is classified by the
class-mean classifier.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from protolib.train import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--losses", nargs="+", default=["ce", "supcon"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    print(
        f"# digits, model mlp 64-512-512-128, budget {args.iterations} iterations, "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    print(f"{'loss':<8}{'p':>5}{'seed':>6}{'time to fit':>13}{'test acc':>10}{'wall s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses:
            for p in args.p:
                for seed in args.seeds:
                    config = {
                        "run_id": f"{loss}-p{p}-s{seed}",
                        "loss": loss,
                        "label_corruption": p,
                        "seed": seed,
                        "iterations": args.iterations,
                        "eval_every": 100,
                        "probe_iterations": 0,
                        "threads": args.threads,
                        "checkpoint_every": args.iterations,
                    }
                    start = time.perf_counter()
                    summary = train_run(config, Path(tmp) / config["run_id"], progress=False)
                    wall = time.perf_counter() - start
                    fit = summary["time_to_fit"]
                    print(
                        f"{loss:<8}{p:>5}{seed:>6}{fit if fit is not None else '-':>13}"
                        f"{summary['test_accuracy']:>10.3f}{wall:>8.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
