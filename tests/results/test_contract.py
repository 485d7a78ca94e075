"""The results contract holds everywhere: a real run's summary has exactly the runs
table's columns plus the listed extras, its files are the declared ones, and every
place that names the grid axes takes them from the contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from protolib.pipeline import AXIS_RULES, GRID_AXES, GRID_DEFAULTS, run_id
from protolib.results.aggregate import RUNS_SCHEMA, aggregate
from protolib.results.contract import (
    AXES,
    CONFIG,
    DATA,
    GRID_COLUMNS,
    KEY_COLUMNS,
    METRICS,
    RUN_FILES,
    SUMMARY,
    SUMMARY_ONLY,
)
from protolib.results.schema import SCHEMAS, check_summary
from protolib.results.tables import GRID
from protolib.train.config import RunConfig
from tests import launcher

ROOT = Path(__file__).resolve().parents[2]
#: a run that fills every figure: prototypes (geometry, Δ_G), corruption, imbalance, probe
RUN = {
    "run_id": "supcon_nw2_R2_p0.2_s3",
    "experiment": "contract",
    "loss": "supcon",
    "loss_name": "sc",
    "n_w": 2,
    "imbalance_ratio": 2,
    "label_corruption": 0.2,
    "seed": 3,
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"widths": [16], "out_dim": 16},
    "iterations": 20,
    "eval_every": 10,
    "batch_size": 64,
    "probe_iterations": 5,
    "threads": 1,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run trained by the real ``protolib train`` command, then aggregated."""
    root = tmp_path_factory.mktemp("contract")
    config = root / "run.json"
    config.write_text(json.dumps(RUN))
    out = root / "runs" / RUN["run_id"]
    command = [sys.executable, "-m", "protolib.cli", "train", "--no-progress"]
    result = launcher.run([*command, "--config", str(config), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    aggregate([out], root / "aggregate")
    return out


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / SUMMARY).read_text())


def test_a_real_summary_has_exactly_the_runs_columns_and_the_listed_extras(run_dir):
    summary = summary_of(run_dir)
    assert set(RUNS_SCHEMA.names) <= set(summary), set(RUNS_SCHEMA.names) - set(summary)
    assert set(summary) - set(RUNS_SCHEMA.names) == set(SUMMARY_ONLY)
    assert not set(RUNS_SCHEMA.names) & set(SUMMARY_ONLY)
    # and runs.parquet holds those values, each column from its summary key
    row = pq.read_table(run_dir.parents[1] / "aggregate" / "runs.parquet").to_pylist()
    assert row == [{name: summary[name] for name in RUNS_SCHEMA.names}]


def test_the_summary_figures_are_the_runs_own(run_dir):
    """Each figure against what the run's other files say (independent of the summary)."""
    s = summary_of(run_dir)
    expected_keys = {"run_id", "experiment", "n_w", "label_corruption", "seed", "dataset"}
    assert {k: s[k] for k in expected_keys} == {k: RUN[k] for k in expected_keys}
    assert (s["loss"], s["loss_type"], s["model"]) == ("sc", "supcon", "mlp")
    assert s["imbalance_ratio"] == 2.0 and isinstance(s["imbalance_ratio"], float)
    assert (s["geometry"], s["status"], s["iterations"]) == ("etf", "completed", 20)
    data = pq.read_table(run_dir / DATA)
    assert s["n_train"] == data.num_rows
    corrupted = pc.sum(pc.not_equal(data["label"], data["train_label"])).as_py()
    assert s["n_corrupted"] == corrupted == pc.sum(data["corrupted"]).as_py() > 0
    counts = [data["train_label"].to_pylist().count(k) for k in range(10)]
    assert s["class_counts"] == counts
    metrics = pq.read_table(run_dir / METRICS).to_pylist()
    last = {
        f"{r['split']}/{r['metric']}": r["value"] for r in metrics if r["step"] == RUN["iterations"]
    }
    assert s["final"] == last
    assert s["test_accuracy"] == last["test/accuracy"]
    assert s["train_error"] == last["train/error"]
    assert s["delta_g"] == last["train/delta_g"]
    assert s["probe_accuracy"] == last["test/probe_accuracy"]
    assert s["fitted"] == (s["time_to_fit"] is not None)
    images = RUN["iterations"] * RUN["batch_size"]
    assert s["images_per_second"] == pytest.approx(images / s["train_seconds"], rel=1e-12)
    assert json.loads((run_dir / CONFIG).read_text()) == RunConfig.from_dict(RUN).to_dict()


def test_a_run_directory_holds_exactly_the_declared_files(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([SUMMARY, *RUN_FILES])
    manifest = summary_of(run_dir)["manifest"]
    assert list(manifest) == list(RUN_FILES)
    assert all(manifest[n]["size"] == (run_dir / n).stat().st_size for n in RUN_FILES)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s.pop("delta_g"), "missing keys ['delta_g']"),
        (lambda s: s.update(loss_typo="ce"), "unexpected keys ['loss_typo']"),
        (lambda s: s.update(iterations="20"), "iterations is '20', expected int64"),
        (lambda s: s.update(seed=None), "seed is None"),
    ],
)
def test_check_summary_refuses_a_summary_that_does_not_fit(run_dir, change, needle):
    summary = summary_of(run_dir)
    check_summary(summary)  # the real one fits
    change(summary)
    with pytest.raises(ValueError, match=r"^summary\.json: ") as caught:
        check_summary(summary)
    assert needle in str(caught.value)


def test_every_table_starts_with_the_key_columns():
    keys = [(c.name, c.nullable) for c in KEY_COLUMNS]
    for name, schema in SCHEMAS.items():
        head = [(f.name, f.nullable) for f in schema][: len(keys)]
        assert head == keys, name
    assert [c.name for c in KEY_COLUMNS] == ["run_id", "experiment", *GRID_COLUMNS]
    assert list(GRID_COLUMNS) == [
        "loss",
        "n_w",
        "imbalance_ratio",
        "imbalance",
        "minority_fraction",
        "label_corruption",
        "seed",
    ]


def test_the_grid_axes_are_the_contracts_everywhere():
    names = [axis.name for axis in AXES]
    assert list(GRID_AXES) == names == list(AXIS_RULES)
    # integers: the values the pipeline has always written into a run's config.json (the
    # axes added later: STEP and μ = 0.5, which run ids leave out)
    assert GRID_DEFAULTS == {
        "n_w": [0],
        "imbalance_ratio": [1],
        "imbalance": ["step"],
        "minority_fraction": [0.5],
        "label_corruption": [0],
        "seed": [0],
    }
    assert all(type(GRID_DEFAULTS[a.name][0]) is int for a in AXES if not a.omit_default)
    # the report's tables group by the grid point and summarise the seeds
    assert GRID == [
        "loss",
        "n_w",
        "imbalance_ratio",
        "imbalance",
        "minority_fraction",
        "label_corruption",
    ]
    defaults = RunConfig()
    for axis in AXES:
        assert getattr(defaults, axis.name) == axis.default, axis.name
        assert type(defaults.grid_keys[axis.name]) is axis.python, axis.name
    # the config schema's grid: one property per axis, its type and default
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    grid = schema["$defs"]["experiment"]["properties"]["grid"]["properties"]
    assert list(grid) == names
    for axis in AXES:
        kind = {int: "integer", float: "number", str: "string"}[axis.python]
        assert grid[axis.name]["items"]["type"] == kind, axis.name
        assert grid[axis.name]["default"] == [axis.default], axis.name


def test_a_run_id_spells_each_axis_with_its_tag():
    values = {"n_w": 10, "imbalance_ratio": 10.0, "label_corruption": 0.2, "seed": 0}
    assert run_id("supcon", values) == "supcon_nw10_R10_p0.2_s0"
    assert run_id("ce", {**values, "n_w": 0}, uses_n_w=False) == "ce_R10_p0.2_s0"
    assert run_id("ce", {**values, "imbalance_ratio": 1.5}) == "ce_nw10_R1.5_p0.2_s0"
    # axes at their defaults are left out (earlier ids stay); off them, after the ratio
    assert run_id("ce", {**values, "imbalance": "step", "minority_fraction": 0.5}) == (
        "ce_nw10_R10_p0.2_s0"
    )
    assert run_id("ce", {**values, "imbalance": "exp"}) == "ce_nw10_R10_exp_p0.2_s0"
    assert run_id("ce", {**values, "minority_fraction": 0.3}) == "ce_nw10_R10_mu0.3_p0.2_s0"
