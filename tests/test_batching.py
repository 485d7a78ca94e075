"""Train jobs as batches of runs (protolib.batching), checked against brute-force facts."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protolib import resources
from protolib.batching import plan_batches, stale_reason
from protolib.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def grid(iterations: list[int], **extra) -> dict[str, dict]:
    """Runs named r0, r1, … with the given budgets (their estimates scale with them)."""
    return {
        f"r{i}": {"dataset": "digits", "model": "mlp", "iterations": n, "seed": i, **extra}
        for i, n in enumerate(iterations)
    }


def check_partition(runs: dict, batches: dict) -> None:
    members = [r for b in batches.values() for r in b.runs]
    assert sorted(members) == sorted(runs), "every run in exactly one batch"
    order = list(runs)
    for name, batch in batches.items():
        assert list(batch.runs) == sorted(batch.runs, key=order.index), "plan order kept"
        expected_name = (
            batch.runs[0] if len(batch.runs) == 1 else f"{batch.runs[0]}+{len(batch.runs) - 1}"
        )
        assert name == expected_name
        assert batch.seconds == pytest.approx(
            sum(resources.training_seconds(runs[r]) for r in batch.runs)
        )


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_seconds", [0.0, 1.0, 5.0, 900.0, math.inf])
def test_batches_partition_the_runs_in_the_planned_number(slots, batch_seconds):
    runs = grid([100, 3000, 500, 500, 20000, 100, 800])
    batches = plan_batches(runs, batch_seconds=batch_seconds, slots=slots)
    check_partition(runs, batches)
    seconds = {r: resources.training_seconds(c) for r, c in runs.items()}
    long = [r for r, s in seconds.items() if s > batch_seconds]
    short = [r for r, s in seconds.items() if s <= batch_seconds]
    for r in long:  # a long run is a job of its own
        assert batches[r].runs == (r,)
    if short:
        total = sum(seconds[r] for r in short)
        parts = max(math.ceil(total / batch_seconds), min(len(short), slots))
        assert len(batches) - len(long) == parts
        loads = [b.seconds for b in batches.values() if b.runs[0] in short]
        # dealt longest first to the least-loaded batch: loads differ by at most one run
        assert max(loads) - min(loads) <= max(seconds[r] for r in short) + 1e-9


def test_zero_batch_seconds_is_one_run_per_job():
    runs = grid([10, 10, 10])
    assert {n: b.runs for n, b in plan_batches(runs, batch_seconds=0, slots=1).items()} == {
        "r0": ("r0",),
        "r1": ("r1",),
        "r2": ("r2",),
    }


def test_equal_runs_are_dealt_round_robin():
    runs = grid([100] * 6)
    batches = plan_batches(runs, batch_seconds=900, slots=2)
    assert [b.runs for b in batches.values()] == [("r0", "r2", "r4"), ("r1", "r3", "r5")]


def test_runs_asking_for_other_resources_never_share_a_job():
    runs = {
        **grid([100, 100]),
        **{f"c{i}": {**c, "device": "cpu"} for i, c in enumerate(grid([100, 100]).values())},
    }
    batches = plan_batches(runs, batch_seconds=900, slots=1)
    for batch in batches.values():
        assert len({resources.gpus(runs[r]) for r in batch.runs}) == 1
    assert sorted(b.runs for b in batches.values()) == [("c0", "c1"), ("r0", "r1")]


def test_every_process_plans_the_same_batches():
    """A cluster job reads the Snakefile again in a new process (another hash seed) and
    must find the batch its main process planned."""
    script = (
        "import json; from protolib.batching import plan_batches; "
        "from tests.test_batching import grid; "
        "b = plan_batches(grid([100, 200, 300, 400, 500]), batch_seconds=1.0, slots=3); "
        "print(json.dumps({n: list(x.runs) for n, x in b.items()}))"
    )
    plans = [
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    here = plan_batches(grid([100, 200, 300, 400, 500]), batch_seconds=1.0, slots=3)
    expected = {name: list(batch.runs) for name, batch in here.items()}
    assert json.loads(plans[0]) == json.loads(plans[1]) == expected


def test_brute_force_balance_on_tiny_cases():
    """The dealt batches are within the LPT bound (4/3) of the best two-way split."""
    for sizes in itertools.product([100, 700, 3000], repeat=4):
        runs = grid(list(sizes))
        batches = plan_batches(runs, batch_seconds=math.inf, slots=2)
        seconds = [resources.training_seconds(c) for c in runs.values()]
        best = min(
            max(
                sum(s for s, m in zip(seconds, mask, strict=True) if m),
                sum(s for s, m in zip(seconds, mask, strict=True) if not m),
            )
            for mask in itertools.product([0, 1], repeat=len(seconds))
        )
        assert max(b.seconds for b in batches.values()) <= 4 / 3 * best + 1e-9  # LPT bound


def finished_run(tmp_path, config: dict):
    """A run directory that looks finished: config.json, files, and a matching manifest."""
    from protolib.results.manifest import RUN_FILES, build_manifest

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RunConfig.from_dict(config).to_dict()))
    for name in RUN_FILES[1:]:
        (folder / name).write_bytes(b"x" * 10)
    summary = {"manifest": build_manifest(folder)}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_stale_reason_names_a_damaged_or_reconfigured_run_only(tmp_path):
    config = grid([50])["r0"]
    assert stale_reason(str(tmp_path / "absent"), config) is None  # unfinished: not stale
    folder = finished_run(tmp_path, config)
    assert stale_reason(str(folder), config) is None
    assert "iterations differ" in stale_reason(str(folder), {**config, "iterations": 51})
    (folder / "gamma.parquet").write_bytes(b"x" * 3)
    assert "gamma.parquet is 3 bytes" in stale_reason(str(folder), config)


def test_a_run_trained_before_a_key_was_added_is_not_stale(tmp_path):
    """A finished run's config.json that lacks keys added to the run config since counts
    them at their defaults (which reproduce the old behaviour): no retraining after an
    upgrade; a planned value other than the default is a changed config."""
    from protolib.results.manifest import build_manifest

    config = grid([50])["r0"]
    folder = finished_run(tmp_path, config)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["sync_batchnorm"] is True and saved["validation_fraction"] == 0.0
    del saved["sync_batchnorm"], saved["validation_fraction"]
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "summary.json").write_text(json.dumps({"manifest": build_manifest(folder)}))
    assert stale_reason(str(folder), config) is None
    changed = stale_reason(str(folder), {**config, "validation_fraction": 0.1})
    assert changed.endswith("(validation_fraction differ)"), changed
    (folder / "config.json").write_text("[1, 2]")
    (folder / "summary.json").write_text(json.dumps({"manifest": build_manifest(folder)}))
    assert "does not hold a run config" in stale_reason(str(folder), config)


def test_the_config_schema_documents_the_default_batch_seconds():
    import yaml

    from protolib.batching import BATCH_SECONDS

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["batch_seconds"]["default"] == BATCH_SECONDS
