"""The Snakemake pipeline, run for real (its CLI in a process of its own, tests.launcher)
on a tiny config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from protolib.pipeline import PipelineConfigError, plan
from protolib.results.aggregate import RUNS_SCHEMA
from protolib.results.report import report_files
from protolib.results.schema import GAMMA_SCHEMA, GEOMETRY_SCHEMA, METRICS_SCHEMA, read_table
from tests import launcher
from tests.conftest import tiny_grid, tiny_run

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY_BASE = tiny_run(
    model_options={"widths": [64], "out_dim": 16},
    iterations=20,
    eval_every=10,
    batch_size=64,
    probe_iterations=5,
)


def tiny_config(**extra):
    """Two losses × n_w × label corruption: six runs (n_w is not expanded for ce)."""
    losses = {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}}
    grid = {"n_w": [0, 5], "label_corruption": [0.0, 0.5], "seed": [0]}
    return tiny_grid(losses, grid, base=TINY_BASE, **extra)


EXPECTED_RUNS = {
    "ce_R1_p0_s0",
    "ce_R1_p0.5_s0",
    "supcon_nw0_R1_p0_s0",
    "supcon_nw0_R1_p0.5_s0",
    "supcon_nw5_R1_p0_s0",
    "supcon_nw5_R1_p0.5_s0",
}


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    return launcher.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "2",
            *args,
        ],
        timeout=timeout,
        env=env,
    )


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One real run of the whole DAG on the tiny config."""
    workdir = tmp_path_factory.mktemp("pipeline")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    dry = snakemake(workdir, "-n", "all")
    assert dry.returncode == 0, dry.stderr
    assert not (workdir / "results").exists()
    real = snakemake(workdir, "all")
    assert real.returncode == 0, real.stderr[-3000:]
    return workdir, dry, real


def test_dry_run_lists_the_expected_jobs(pipeline):
    _, dry, _ = pipeline
    counts = job_counts(dry.stdout + dry.stderr)
    # six short runs on two cores: two train jobs (batches) of three runs each
    assert counts == {"train": 2, "aggregate": 1, "report": 1, "tracking": 1, "theory": 1, "all": 1}
    # the batch markers (not the batch specs under logs/batches/)
    listed = set(re.findall(r"(?<!logs/)batches/([^/\s]+)\.json", dry.stdout + dry.stderr))
    assert listed == {"ce_R1_p0_s0+2", "ce_R1_p0.5_s0+2"}


def test_each_run_of_a_batch_has_its_directory_and_log(pipeline):
    workdir, _, _ = pipeline
    tiny = workdir / "results" / "tiny"
    assert {p.name for p in (tiny / "runs").iterdir()} == EXPECTED_RUNS  # n_w not for ce
    for run_id in EXPECTED_RUNS:
        log = (tiny / "logs" / "train" / f"{run_id}.log").read_text()
        assert f"{run_id}: completed" in log or f"{run_id}: " in log, log
        others = EXPECTED_RUNS - {run_id}
        assert not any(f"{other}:" in log for other in others), log
    batch_logs = sorted((tiny / "logs" / "batches").glob("*.log"))
    assert [p.stem for p in batch_logs] == ["ce_R1_p0.5_s0+2", "ce_R1_p0_s0+2"]
    lines = [line for p in batch_logs for line in p.read_text().splitlines()]
    assert sorted(line.split(":")[0] for line in lines) == sorted(EXPECTED_RUNS), lines


def test_aggregate_has_declared_schemas_and_every_run(pipeline):
    workdir, _, _ = pipeline
    aggregate = workdir / "results" / "tiny" / "aggregate"
    runs = read_table(aggregate / "runs.parquet", RUNS_SCHEMA)
    assert runs.schema.equals(RUNS_SCHEMA, check_metadata=True)
    frame = runs.to_pandas()
    assert set(frame.run_id) == EXPECTED_RUNS
    assert (frame.status == "completed").all()
    for name, schema in [
        ("metrics", METRICS_SCHEMA),
        ("geometry", GEOMETRY_SCHEMA),
        ("gamma", GAMMA_SCHEMA),
    ]:
        table = read_table(aggregate / f"{name}.parquet", schema)
        assert table.schema.equals(schema, check_metadata=True)
        assert set(table.column("run_id").to_pylist()) == EXPECTED_RUNS
    # grid keys are real columns with the right values
    row = frame.set_index("run_id").loc["supcon_nw5_R1_p0.5_s0"]
    assert (row.loss, row.n_w, row.label_corruption, row.seed) == ("supcon", 5, 0.5, 0)
    # each run directory is complete, with its train log
    for run_id in EXPECTED_RUNS:
        run = workdir / "results" / "tiny" / "runs" / run_id
        assert (run / "summary.json").exists() and not (run / "resume.pt").exists()
        assert (
            workdir / "results" / "tiny" / "logs" / "train" / f"{run_id}.log"
        ).stat().st_size > 0


def test_every_plot_and_table_is_produced(pipeline):
    workdir, _, _ = pipeline
    for path in report_files(workdir / "results" / "tiny" / "report"):
        assert Path(path).exists() and Path(path).stat().st_size > 0, path


def test_mlflow_store_has_one_child_per_grid_point(pipeline):
    from mlflow.tracking import MlflowClient

    workdir, _, _ = pipeline
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("protolib/tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if "protolib.run_id" in r.data.tags]
    parents = [r for r in runs if "protolib.run_id" not in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags["protolib.run_id"] for r in children) == sorted(EXPECTED_RUNS)
    marker = json.loads((workdir / "results" / "tiny" / "tracking.json").read_text())
    assert marker["experiment"] == "tiny"


def test_rerun_is_a_noop_and_tracking_rerun_creates_no_duplicates(pipeline):
    from mlflow.tracking import MlflowClient

    workdir, _, _ = pipeline
    again = snakemake(workdir, "all")
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr
    forced = snakemake(workdir, "--forcerun", "tracking", "all")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert job_counts(forced.stdout + forced.stderr) == {"tracking": 1, "all": 1}
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("protolib/tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 1 + len(EXPECTED_RUNS)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["experiments"]["tiny"]["losses"]["ce"].update(loss="supcn"),
            "config: experiments.tiny.losses.ce.loss: 'supcn' is not allowed; "
            "allowed: bcl, ce, ce_fix",
        ),
        (
            lambda c: c["experiments"]["tiny"]["grid"].update(label_corruption=[0.2, 1.5]),
            "config: experiments.tiny.grid.label_corruption.1: "
            "1.5 is greater than the maximum of 1",
        ),
        (
            lambda c: c["experiments"]["tiny"]["grid"].update(imbalance_ratio=[0.5]),
            "config: experiments.tiny.grid.imbalance_ratio.0: 0.5 is less than the minimum of 1",
        ),
        (
            lambda c: c["experiments"]["tiny"]["grid"].update(n_w=[-1]),
            "config: experiments.tiny.grid.n_w.0: -1 is less than the minimum of 0",
        ),
        (
            lambda c: c["experiments"]["tiny"]["grid"].update(sed=[0]),
            "config: experiments.tiny.grid: "
            "Additional properties are not allowed ('sed' was unexpected)",
        ),
        (
            lambda c: c["experiments"]["tiny"]["base"].update(model="resnet"),
            "config: experiments.tiny.losses.ce: unknown model 'resnet'; known:",
        ),
        (
            lambda c: c.update(plugins=["no_such_module_xyz"]),
            "config: plugins: plugin module 'no_such_module_xyz' could not be imported",
        ),
    ],
)
def test_bad_config_fails_with_one_line_and_writes_nothing(tmp_path, mutate, message):
    """What the workflow calls at plan time (protolib.pipeline.plan), in-process; the
    command's exit status and one line: test_the_command_refuses_a_bad_config."""
    config = tiny_config()
    mutate(config)
    with pytest.raises(PipelineConfigError) as caught:
        plan(config, ROOT / "workflow" / "schemas" / "config.schema.yaml", workdir=tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not any(tmp_path.iterdir())


def test_the_command_refuses_a_bad_config(tmp_path):
    config = tiny_config()
    config["experiments"]["tiny"]["grid"].update(label_corruption=[0.2, 1.5])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "all", timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("protolib: ")]
    assert lines == [
        "protolib: config: experiments.tiny.grid.label_corruption.1: "
        "1.5 is greater than the maximum of 1"
    ], result.stderr
    assert not (tmp_path / "results").exists()


def test_report_captions_come_from_the_list(pipeline):
    from protolib.results.report import CAPTIONS

    workdir, _, _ = pipeline
    folder = workdir / ".snakemake" / "protolib" / "captions"
    files = {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.rst")}
    assert files == {k.replace("/", "_"): t.rstrip() + "\n" for k, t in CAPTIONS.items()}


def test_a_failing_tracking_server_fails_the_rule_and_loses_nothing(pipeline):
    import socket

    workdir, _, _ = pipeline
    aggregate = workdir / "results" / "tiny" / "aggregate"
    before = {p.name: p.read_bytes() for p in aggregate.iterdir()}
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failed = snakemake(
        workdir,
        "--forcerun",
        "tracking",
        "all",
        "--config",
        f"tracking_uri=http://127.0.0.1:{port}",
    )
    assert failed.returncode != 0
    assert f"MLflow tracking server at http://127.0.0.1:{port} is unreachable" in failed.stderr
    assert {p.name: p.read_bytes() for p in aggregate.iterdir()} == before
    assert all(
        (workdir / "results" / "tiny" / "runs" / r / "summary.json").exists() for r in EXPECTED_RUNS
    )
    # once the server is back (here: the default store), re-running completes the sync
    again = snakemake(workdir, "all")
    assert again.returncode == 0, again.stderr[-3000:]
    marker = json.loads((workdir / "results" / "tiny" / "tracking.json").read_text())
    assert marker["created"] + marker["updated"] == 0 and marker["unchanged"] == len(EXPECTED_RUNS)


@pytest.mark.parametrize(
    ("preset", "train_jobs", "experiments"),
    [
        ("sc_vs_ce.yaml", 4 * 3 * 11 * 3, 4),
        ("prototypes.yaml", 2 * 4 * 2 * 3 + 3 * 2 * 3 + 3 * 2 * 3, 2),
    ],
)
def test_study_presets_plan_their_published_grids(tmp_path, preset, train_jobs, experiments):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    result = snakemake(tmp_path, "-n", "all", "--configfile", str(ROOT / "configs" / preset))
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts == {
        "train": train_jobs,
        "aggregate": experiments,
        "report": experiments,
        "tracking": experiments,
        "theory": 1,
        "all": 1,
    }
    assert not (tmp_path / "results").exists()


def test_theory_target_writes_bounds_simulations_and_plots(pipeline):
    from protolib.theory.report import THEORY_FILES

    workdir, _, _ = pipeline
    theory = workdir / "results" / "theory"
    for name in THEORY_FILES:
        assert (theory / name).stat().st_size > 0, name
    bounds = pd.read_parquet(theory / "bounds.parquet")
    cifar10 = bounds[(bounds.bound == "supcon_theorem2") & (bounds.setting == "cifar10")]
    assert 800 < cifar10.value.iloc[0] < 850
    ufm = pd.read_parquet(theory / "ufm.parquet")
    gaps = ufm[ufm.quantity == "gap"].value
    assert (gaps >= -1e-9).all()
    assert "Theorem 2" in (theory / "bounds_vs_attained.md").read_text()
