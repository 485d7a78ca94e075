"""Real tiny runs under STEP (with μ) and exponential imbalance: each trains on exactly
the split of MATH.md §6, its tables carry the new grid keys, and ``split_sha256`` (in
``summary.json`` and the runs table) shows which runs trained on the same data."""

from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protolib.cli import main as cli_main
from protolib.data import load_dataset
from protolib.results.aggregate import aggregate
from protolib.train import train_run
from tests.conftest import tiny_run

BASE = tiny_run(iterations=2, eval_every=1, threads=1, imbalance_ratio=10, seed=1)
#: run name → its changes to BASE: ``same`` differs only in keys that do not touch the data
RUNS = {
    "base": {},
    "same": {"loss": "supcon", "lr": 0.01, "model_options": {"widths": [8], "out_dim": 8}},
    "seed": {"seed": 2},
    "ratio": {"imbalance_ratio": 5},
    "exp": {"imbalance": "exp"},
    "mu": {"minority_fraction": 0.3},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The runs of :data:`RUNS`, trained in this process, and their aggregate."""
    root = tmp_path_factory.mktemp("split")
    summaries = {
        name: train_run({**BASE, **change, "run_id": name}, root / name, progress=False)
        for name, change in RUNS.items()
    }
    aggregate([root / name for name in RUNS], root / "aggregate")
    return root, summaries


def reference_hash(run_dir: Path) -> str:
    """SHA-256 of the run's ``data.parquet``: sorted indices, then their training labels,
    each as int64 little-endian (computed here without protolib)."""
    rows = sorted(
        zip(
            *pq.read_table(run_dir / "data.parquet", columns=["index", "train_label"])
            .to_pydict()
            .values(),
            strict=True,
        )
    )
    data = b"".join(i.to_bytes(8, "little", signed=True) for i, _ in rows)
    data += b"".join(y.to_bytes(8, "little", signed=True) for _, y in rows)
    return hashlib.sha256(data).hexdigest()


def test_the_split_hash_is_the_hash_of_the_data_the_run_trained_on(trained):
    root, summaries = trained
    for name, summary in summaries.items():
        assert summary["split_sha256"] == reference_hash(root / name), name
    runs = pq.read_table(root / "aggregate" / "runs.parquet").to_pylist()
    assert {row["run_id"]: row["split_sha256"] for row in runs} == {
        name: s["split_sha256"] for name, s in summaries.items()
    }


def test_runs_on_the_same_data_share_a_hash_and_any_data_key_changes_it(trained):
    _, summaries = trained
    hashes = {name: s["split_sha256"] for name, s in summaries.items()}
    assert hashes["same"] == hashes["base"]
    others = [hashes[name] for name in ("base", "seed", "ratio", "exp", "mu")]
    assert len(set(others)) == len(others), hashes


def test_each_run_keeps_the_counts_of_its_imbalance(trained):
    """Class counts against MATH.md §6 from the dataset's own class sizes (R = 10)."""
    _, summaries = trained
    counts = load_dataset("digits").train.labels.bincount(minlength=10).tolist()
    step = [n if c < 5 else n // 10 for c, n in enumerate(counts)]
    mu = [n if c < 7 else n // 10 for c, n in enumerate(counts)]  # ⌊0.3·10⌋ = 3 minorities

    def exp_count(n: int, c: int) -> int:  # largest m with (m/n)^9 ≤ 10^{−c}
        m = math.floor(n * 10 ** (-c / 9))
        while (m + 1) ** 9 * 10**c <= n**9:
            m += 1
        while m**9 * 10**c > n**9:
            m -= 1
        return m

    exp = [exp_count(n, c) for c, n in enumerate(counts)]
    assert exp[0] == counts[0] and exp[9] == math.floor(Fraction(counts[9], 10))
    assert summaries["base"]["class_counts"] == step
    assert summaries["mu"]["class_counts"] == mu
    assert summaries["exp"]["class_counts"] == exp
    assert summaries["exp"]["n_train"] == sum(exp)


def test_every_table_carries_the_imbalance_keys(trained):
    root, summaries = trained
    for name, kind, mu in (("base", "step", 0.5), ("exp", "exp", 0.5), ("mu", "step", 0.3)):
        assert (summaries[name]["imbalance"], summaries[name]["minority_fraction"]) == (kind, mu)
        for table in ("metrics", "geometry", "gamma"):
            columns = pq.read_table(root / name / f"{table}.parquet").to_pydict()
            assert set(columns["imbalance"]) == {kind}, (name, table)
            assert set(columns["minority_fraction"]) == {mu}, (name, table)


def test_train_refuses_a_minority_fraction_with_exp_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    config = {**BASE, "imbalance": "exp", "minority_fraction": 0.3}
    args = [a for k, v in config.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    code = cli_main(["train", "--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "minority_fraction 0.3 applies to imbalance 'step' only, got imbalance 'exp'" in err
    assert not out.exists()
