"""The pipeline notices damaged per-run files and a lost MLflow store, and redoes exactly
what is needed: the real `snakemake` CLI on a tiny two-run config.

One pipeline is built per module; each damage case works on a copy of it (results and
Snakemake's metadata, times kept), is planned with `snakemake -n` (exactly which jobs),
and two cases are run for real and compared with the undamaged tables.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from protolib.results.manifest import RUN_FILES
from tests.conftest import tiny_grid
from tests.workflow.test_pipeline import job_counts, snakemake

RUN_IDS = ["ce_R1_p0_s0", "ce_R1_p0_s1"]
TARGET = "results/tiny/tracking.json"  # everything of the experiment, without theory
#: columns that differ between two trainings of the same run (times, host, process)
RUN_TO_RUN = {"wall_seconds", "train_seconds", "images_per_second"}
CONFIG = tiny_grid(grid={"seed": [0, 1]})  # two ce runs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, Path]:
    """The working directory after one real run, and an untouched copy of it."""
    root = tmp_path_factory.mktemp("recovery")
    workdir = root / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(workdir, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(workdir, root / "pristine", symlinks=True)
    return workdir, root / "pristine"


@pytest.fixture
def work(pipeline) -> Path:
    """The pipeline's working directory, restored (mtimes kept) to its undamaged state.

    Restored in place: the MLflow store and its marker record absolute paths.
    """
    workdir, pristine = pipeline
    shutil.rmtree(workdir)
    shutil.copytree(pristine, workdir, symlinks=True)
    return workdir


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "results" / "tiny" / "runs" / run_id


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def plan(workdir: Path) -> tuple[dict[str, int], list[str], str]:
    """`snakemake -n`: job counts, the runs it retrains, and stderr; checks it wrote nothing."""
    before = files(workdir / "results")
    result = snakemake(workdir, "-n", TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert files(workdir / "results") == before
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}, [], result.stderr
    # two short runs on two cores: two train jobs (batches) of one run each, named by it
    trained = re.findall(r"output: results/tiny/batches/([^/\s]+)\.json", text)
    return job_counts(text), sorted(trained), result.stderr


DOWNSTREAM = {"aggregate": 1, "report": 1, "tracking": 1}


def test_a_truncated_table_retrains_only_its_run(work):
    path = run_dir(work, RUN_IDS[0]) / "metrics.parquet"
    with open(path, "r+b") as handle:
        handle.truncate(100)
    counts, trained, stderr = plan(work)
    assert counts == {"train": 1, **DOWNSTREAM}
    assert trained == [RUN_IDS[0]]
    assert f"protolib: results/tiny/runs/{RUN_IDS[0]}/metrics.parquet is 100 bytes" in stderr


def test_a_deleted_file_retrains_only_its_run(work):
    name = "checkpoint.pt"  # not read downstream: Snakemake alone would not notice
    (run_dir(work, RUN_IDS[1]) / name).unlink()
    counts, trained, stderr = plan(work)
    assert counts == {"train": 1, **DOWNSTREAM}
    assert trained == [RUN_IDS[1]]
    assert f"results/tiny/runs/{RUN_IDS[1]}/{name} is missing" in stderr


def test_a_corrupt_summary_retrains_its_run_before_any_aggregate(work):
    (run_dir(work, RUN_IDS[0]) / "summary.json").write_text('{"run_id": "ce_R1_p0_s0", ')
    counts, trained, _ = plan(work)
    assert counts == {"train": 1, **DOWNSTREAM}  # aggregate after train: never on bad input
    assert trained == [RUN_IDS[0]]


def test_a_deleted_summary_trains_its_run_again(work):
    (run_dir(work, RUN_IDS[1]) / "summary.json").unlink()  # the run's batch has finished
    counts, trained, stderr = plan(work)
    assert counts == {"train": 1, **DOWNSTREAM}
    assert trained == [RUN_IDS[1]]
    assert f"results/tiny/runs/{RUN_IDS[1]} has no summary.json; training it" in stderr


def test_a_deleted_store_resyncs_only_tracking(work):
    (work / "results" / "mlflow.db").unlink()
    counts, trained, stderr = plan(work)
    assert counts == {"tracking": 1}
    assert trained == []
    assert "mlflow.db is missing; re-syncing experiment tiny" in stderr


def _tables(workdir: Path) -> dict[str, list[dict]]:
    aggregate = workdir / "results" / "tiny" / "aggregate"
    return {
        name: [
            {k: v for k, v in row.items() if k not in RUN_TO_RUN}
            for row in pq.read_table(aggregate / f"{name}.parquet").to_pylist()
        ]
        for name in ("runs", "metrics", "geometry", "gamma")
    }


def test_damaged_runs_are_retrained_to_the_same_tables_and_kept_aside(pipeline, work):
    reference = _tables(pipeline[1])
    truncated = run_dir(work, RUN_IDS[0]) / "metrics.parquet"
    with open(truncated, "r+b") as handle:
        handle.truncate(100)
    (run_dir(work, RUN_IDS[1]) / "summary.json").write_text("not json")
    result = snakemake(work, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr) == {"train": 2, **DOWNSTREAM}
    assert _tables(work) == reference
    for run_id, name, size in [(RUN_IDS[0], "metrics.parquet", 100), (RUN_IDS[1], None, None)]:
        (kept,) = (run_dir(work, run_id) / ".corrupt").iterdir()  # nothing is lost
        assert sorted(p.name for p in kept.iterdir()) == sorted(["summary.json", *RUN_FILES])
        if name:
            assert (kept / name).stat().st_size == size
    assert (kept / "summary.json").read_text() == "not json"
    assert plan(work)[:2] == ({}, [])


def test_a_deleted_store_is_rebuilt_without_orphaned_artifacts(work):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    results = work / "results"
    (results / "mlflow.db").unlink()
    result = snakemake(work, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr) == {"tracking": 1}
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("protolib/tiny")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    children = sorted(
        r.data.tags["protolib.run_id"] for r in runs if "protolib.run_id" in r.data.tags
    )
    assert children == RUN_IDS and len(runs) == 3
    marker = json.loads((results / "tiny" / "tracking.json").read_text())
    parent = next(r for r in runs if "protolib.run_id" not in r.data.tags)
    assert marker["parent_run_id"] == parent.info.run_id
    assert marker["mlflow_experiment_id"] == experiment.experiment_id
    folders = {p.name for p in (results / "mlartifacts" / "tiny").iterdir()}
    assert folders == {r.info.run_id for r in runs}  # the old store's folders are gone
    assert plan(work)[:2] == ({}, [])
