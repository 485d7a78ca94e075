"""Start-up time of the `protolib` command and of `import protolib`.

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--keep DIR]

Times, as fresh processes (wall clock, ``--repeats`` runs each, median and range):
``protolib --help``, ``protolib query "SELECT count(*) FROM runs"`` on a real aggregate,
``protolib list``, ``python -c "import protolib"`` and a digits load
(``load_dataset("digits")``; and, after ``import torch``, protolib's reader of the digits
file against scikit-learn's ``load_digits``, which it replaces), against baselines
measured in the same run: ``python -c pass`` and ``python -c "import torch"``. It also
times one tiny ``protolib train`` through the console script (which ends with
``os._exit``) and through ``sys.exit(main())`` (Python's normal exit, with interpreter
teardown), to show what skipping the teardown saves. The cases run round-robin, so a busy
moment on a shared machine slows all of them alike. The aggregate comes from two tiny real
runs (``protolib train`` + ``protolib aggregate``) in a temporary folder (``--keep DIR``
keeps it there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
PROTOLIB = str(Path(sys.executable).with_name("protolib"))  # the console script
TINY = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"widths": [16], "out_dim": 8},
    "iterations": 20,
    "eval_every": 10,
    "probe_iterations": 0,
    "threads": 1,
}
EXIT = "import sys; from protolib.cli import main; sys.exit(main(sys.argv[1:]))"
DIGITS = "from protolib.data import load_dataset; load_dataset('digits')"
READ = "from protolib.data.datasets import read_digits; read_digits()"
SK = "from sklearn.datasets import load_digits; load_digits()"


def run_once(command: list[str]) -> float:
    """Wall-clock seconds of one run of ``command``."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_results(root: Path) -> Path:
    """``root/results/bench/aggregate`` from two tiny runs; the results folder."""
    results = root / "results"
    runs = []
    for loss in ("ce", "supcon"):
        config = root / f"{loss}.json"
        config.write_text(json.dumps({**TINY, "run_id": loss, "experiment": "bench", "loss": loss}))
        out = results / "bench" / "runs" / loss
        subprocess.run(
            [PROTOLIB, "train", "--config", str(config), "--out", str(out), "--no-progress"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        runs.append(str(out))
    aggregate = results / "bench" / "aggregate"
    subprocess.run(
        [PROTOLIB, "aggregate", *runs, "--out", str(aggregate)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the results here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="protolib-startup-"))
    root.mkdir(parents=True, exist_ok=True)
    results = make_results(root)
    train_config = root / "train.json"
    train_config.write_text(json.dumps({**TINY, "run_id": "t"}))
    train_out = root / "train-run"

    train_args = ["train", "--config", str(train_config), "--out", str(train_out)]
    train_args.append("--no-progress")
    cases = {
        "python -c pass (baseline)": [PYTHON, "-c", "pass"],
        'python -c "import torch" (baseline)': [PYTHON, "-c", "import torch"],
        'python -c "import protolib"': [PYTHON, "-c", "import protolib"],
        "protolib --help": [PROTOLIB, "--help"],
        'protolib query "SELECT count(*) FROM runs"': [
            PROTOLIB,
            "query",
            "SELECT count(*) FROM runs",
            "--results",
            str(results),
        ],
        "protolib list": [PROTOLIB, "list"],
        "digits load (load_dataset)": [PYTHON, "-c", DIGITS],
        "import torch + protolib's digits reader": [PYTHON, "-c", f"import torch; {READ}"],
        "import torch + sklearn's load_digits (before)": [PYTHON, "-c", f"import torch; {SK}"],
        "protolib train, tiny (console script: os._exit)": [PROTOLIB, *train_args],
        "protolib train, tiny (sys.exit(main()): teardown)": [PYTHON, "-c", EXIT, *train_args],
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # round-robin: a busy moment slows every case alike
        for name, command in cases.items():
            if "train" in name:
                shutil.rmtree(train_out, ignore_errors=True)
            seconds[name].append(run_once(command))
    print(f"{args.repeats} runs each, interleaved; wall-clock seconds")
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, values in seconds.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
