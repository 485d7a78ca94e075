"""MLflow sync: real runs, a real aggregate and a real SQLite store (shared by the module).

Each test syncs into its own MLflow experiment of the one store, because creating an
MLflow SQLite store takes several seconds.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from protolib.results.aggregate import aggregate
from protolib.tracking import (
    PARENT_TAG,
    RUN_ID_TAG,
    SYNCED_TAG,
    TrackingError,
    default_tracking_uri,
    flatten_params,
    marker_staleness,
    sync_experiment,
)
from protolib.train import train_run

if TYPE_CHECKING:  # mlflow is imported by the tests that run, not at collection (1.5 s)
    from mlflow import MlflowClient

QUICK = {
    "experiment": "exp",
    "iterations": 20,
    "eval_every": 10,
    "probe_iterations": 5,
    "threads": 1,
    "device": "cpu",
}
RUN_IDS = ["ce-s0", "ce-s1", "supcon-s0", "supcon-s1"]
HTTP_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder with four finished runs (ce and supcon, seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("results")
    for run_id in RUN_IDS:
        loss, seed = run_id.split("-s")
        config = {**QUICK, "run_id": run_id, "loss": loss, "seed": int(seed)}
        train_run(config, root / "exp" / "runs" / run_id, progress=False)
    return root


@pytest.fixture(scope="module")
def client(results) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=default_tracking_uri(results))


def run_dirs(results: Path, ids=RUN_IDS) -> dict[str, Path]:
    return {run_id: results / "exp" / "runs" / run_id for run_id in ids}


def make_aggregate(results: Path, name: str, ids=RUN_IDS) -> Path:
    out = results / name / "aggregate"
    aggregate(list(run_dirs(results, ids).values()), out)
    return out


def sync(results: Path, name: str, **kwargs) -> dict:
    kwargs.setdefault("run_dirs", run_dirs(results))
    return sync_experiment(results / name / "aggregate", experiment=name, results=results, **kwargs)


def runs_of(client: MlflowClient, name: str, tag: str, deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    experiment = client.get_experiment_by_name(f"protolib/{name}")
    return client.search_runs(
        [experiment.experiment_id], f"tags.`{tag}` LIKE '%'", run_view_type=view
    )


def children_of(client: MlflowClient, name: str) -> dict:
    children = runs_of(client, name, RUN_ID_TAG)
    by_id = {run.data.tags[RUN_ID_TAG]: run for run in children}
    assert len(by_id) == len(children), "a grid point has two child runs"
    return by_id


def the_parent(client: MlflowClient, name: str):
    parents = runs_of(client, name, PARENT_TAG)
    assert len(parents) == 1, [run.info.run_id for run in parents]
    return parents[0]


def file_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- helpers -------------------------------------------------------------------------------


def test_default_tracking_uri_is_sqlite_under_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(Path("res")) == f"sqlite:///{tmp_path.resolve()}/res/mlflow.db"


def test_params_are_flattened_stringified_and_cut_to_mlflow_limits():
    params = flatten_params(
        {
            "lr": 0.05,
            "flip": True,
            "epochs": None,
            "milestones": [10, 20],
            "loss_options": {"tau": 0.1, "deep": {"x": "y"}},
            "model_options": {},
            "long": "a" * 7000,
            "odd key!": 1,
        }
    )
    assert params["lr"] == "0.05"
    assert params["flip"] == "true"
    assert params["epochs"] == "null"
    assert params["milestones"] == "[10, 20]"
    assert params["loss_options.tau"] == "0.1"
    assert params["loss_options.deep.x"] == "y"
    assert params["model_options"] == "{}"
    assert len(params["long"]) == 6000
    assert params["long"].endswith("...[truncated]")
    assert params["odd key_"] == "1"


# -- a complete sync -----------------------------------------------------------------------


def test_sync_mirrors_every_run_with_histories_params_and_artifacts(results, client):
    name = "mirror"
    aggregate_dir = make_aggregate(results, name)
    plot = results / name / "plots" / "accuracy.png"
    table = results / name / "tables" / "summary.csv"
    for path, text in ((plot, "png bytes"), (table, "a,b\n1,2\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)

    counts = sync(results, name, artifacts=[plot, table])

    assert counts == {"created": 4, "updated": 0, "unchanged": 0}
    parent = the_parent(client, name)
    assert parent.data.tags[PARENT_TAG] == name
    assert parent.data.params["grid.loss"] == '["ce", "supcon"]'
    assert parent.data.params["grid.seed"] == "[0, 1]"
    assert parent.data.params["runs"] == "4"
    parent_id = parent.info.run_id
    assert [a.path for a in client.list_artifacts(parent_id, "plots")] == ["plots/accuracy.png"]
    assert [a.path for a in client.list_artifacts(parent_id, "tables")] == ["tables/summary.csv"]

    children = children_of(client, name)
    assert sorted(children) == RUN_IDS
    metrics = pd.read_parquet(aggregate_dir / "metrics.parquet")
    summary = pd.read_parquet(aggregate_dir / "runs.parquet").set_index("run_id")
    artifact_root = (results / "mlartifacts" / name).resolve().as_uri()
    for run_id, child in children.items():
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent_id
        assert tags["protolib.status"] == "completed"
        assert tags["protolib.git_revision"] == (summary.loc[run_id, "git_revision"] or "unknown")
        assert child.info.status == "FINISHED"
        assert child.info.artifact_uri.startswith(artifact_root)
        loss, seed = run_id.split("-s")
        assert params["loss"] == loss
        assert params["seed"] == seed
        assert params["n_w"] == "0"
        assert params["imbalance_ratio"] == "1.0"
        assert params["label_corruption"] == "0.0"
        assert params["iterations"] == "20"  # from config.json
        assert params["dataset"] == "digits"
        assert child.data.metrics["test_accuracy"] == summary.loc[run_id, "test_accuracy"]
        rows = metrics[(metrics.run_id == run_id) & (metrics.split == "train")]
        rows = rows[rows.metric == "loss"].sort_values("step")
        history = sorted(client.get_metric_history(child.info.run_id, "train/loss"), key=_step)
        assert [m.step for m in history] == rows.step.tolist() == [10, 20]
        assert [m.value for m in history] == rows.value.tolist()
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert names == {"config.json", "summary.json"}

    # every history of one run, point for point
    run_id = "supcon-s1"
    rows = metrics[metrics.run_id == run_id]
    for (split, metric), group in rows.groupby(["split", "metric"]):
        history = client.get_metric_history(children[run_id].info.run_id, f"{split}/{metric}")
        got = sorted((m.step, m.value) for m in history)
        want = sorted(zip(group.step, group.value, strict=True))
        assert len(got) == len(want), (split, metric)
        for (step, value), (want_step, want_value) in zip(got, want, strict=True):
            assert step == want_step
            assert value == want_value or (value != value and want_value != want_value)

    # re-running changes nothing
    before = {run_id: run.info.run_id for run_id, run in children.items()}
    assert sync(results, name, artifacts=[plot, table]) == {
        "created": 0,
        "updated": 0,
        "unchanged": 4,
    }
    assert the_parent(client, name).info.run_id == parent_id
    after = children_of(client, name)
    assert {run_id: run.info.run_id for run_id, run in after.items()} == before
    history = client.get_metric_history(after["ce-s0"].info.run_id, "train/loss")
    assert len(history) == 2
    assert runs_of(client, name, RUN_ID_TAG, deleted=True) == []


def _step(metric) -> int:
    return metric.step


def test_a_new_run_is_created_once_and_the_rest_left_alone(results, client):
    name = "grow"
    make_aggregate(results, name, RUN_IDS[:3])
    assert sync(results, name) == {"created": 3, "updated": 0, "unchanged": 0}
    first = children_of(client, name)

    make_aggregate(results, name, RUN_IDS)
    assert sync(results, name) == {"created": 1, "updated": 0, "unchanged": 3}

    parent = the_parent(client, name)  # replaced: the grid it describes changed
    assert parent.data.params["runs"] == "4"
    children = children_of(client, name)
    assert sorted(children) == RUN_IDS
    for run_id in RUN_IDS[:3]:
        assert children[run_id].info.run_id == first[run_id].info.run_id
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert sync(results, name)["unchanged"] == 4


def test_a_changed_run_is_replaced_not_duplicated(results, client):
    name = "change"
    make_aggregate(results, name)
    assert sync(results, name, run_dirs=None) == {"created": 4, "updated": 0, "unchanged": 0}
    bare = children_of(client, name)
    assert "lr" not in bare["ce-s0"].data.params  # no config.json without run directories

    assert sync(results, name) == {"created": 0, "updated": 4, "unchanged": 0}
    children = children_of(client, name)
    assert sorted(children) == RUN_IDS
    assert children["ce-s0"].data.params["lr"] == "0.05"
    assert not {r.info.run_id for r in children.values()} & {r.info.run_id for r in bare.values()}
    history = client.get_metric_history(children["ce-s0"].info.run_id, "train/loss")
    assert len(history) == 2
    deleted = runs_of(client, name, RUN_ID_TAG, deleted=True)
    assert len(deleted) == 4


def test_an_interrupted_sync_is_completed_by_the_next(results, client, monkeypatch):
    name = "interrupted"
    make_aggregate(results, name)
    from mlflow import MlflowClient

    calls = []
    original = MlflowClient.log_artifact

    def failing(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:  # the first child is complete, the second half-logged
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_artifact", failing)
    with pytest.raises(TrackingError, match="disk full"):
        sync(results, name)
    half = children_of(client, name)
    assert sorted(half) == RUN_IDS[:2]
    assert SYNCED_TAG not in half[RUN_IDS[1]].data.tags
    monkeypatch.undo()

    assert sync(results, name) == {"created": 2, "updated": 1, "unchanged": 1}
    children = children_of(client, name)
    assert sorted(children) == RUN_IDS
    assert all(SYNCED_TAG in child.data.tags for child in children.values())
    assert children[RUN_IDS[0]].info.run_id == half[RUN_IDS[0]].info.run_id


# -- failures ------------------------------------------------------------------------------


def test_an_unreachable_server_fails_fast_and_touches_nothing(results, client, monkeypatch):
    name = "recover"
    aggregate_dir = make_aggregate(results, name, RUN_IDS[:3])
    assert sync(results, name)["created"] == 3
    aggregate_dir = make_aggregate(results, name, RUN_IDS)  # a run finished later
    before = file_state(aggregate_dir)
    run_before = file_state(results / "exp" / "runs" / "ce-s0")
    monkeypatch.setenv(HTTP_ENV, "77")
    uri = f"http://127.0.0.1:{closed_port()}"

    started = time.monotonic()
    with pytest.raises(TrackingError) as info:
        sync(results, name, tracking_uri=uri, timeout_s=5)
    elapsed = time.monotonic() - started

    message = str(info.value)
    assert elapsed < 8, elapsed
    assert "\n" not in message
    assert message.startswith(f"MLflow tracking server at {uri} is unreachable: ")
    assert "re-run the tracking rule" in message
    assert os.environ[HTTP_ENV] == "77"  # restored
    assert file_state(aggregate_dir) == before
    assert file_state(results / "exp" / "runs" / "ce-s0") == run_before
    # the next good sync completes what the failed one could not
    assert sync(results, name) == {"created": 1, "updated": 0, "unchanged": 3}
    assert sorted(children_of(client, name)) == RUN_IDS


def test_a_server_that_never_answers_times_out(results, monkeypatch):
    make_aggregate(results, "hang", RUN_IDS[:1])
    monkeypatch.delenv(HTTP_ENV, raising=False)
    with socket.socket() as server:  # accepts connections (the kernel does), never replies
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError, match=r"is unreachable: .*[Tt]imed? ?out") as info:
            sync(results, "hang", tracking_uri=uri, timeout_s=3)
        assert "\n" not in str(info.value)
        elapsed = time.monotonic() - started
    assert 1 <= elapsed < 6, elapsed
    assert HTTP_ENV not in os.environ


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.do_GET()

    def log_message(self, *args) -> None:
        pass


def test_a_failing_server_is_reported_in_one_line(results):
    make_aggregate(results, "failing", RUN_IDS[:1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError) as info:
            sync(results, "failing", tracking_uri=uri, timeout_s=3)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server at {uri} failed: ")
    assert "500" in message
    assert message.endswith("re-run the tracking rule once it is fixed")
    assert "\n" not in message
    assert elapsed < 6, elapsed


def test_a_missing_aggregate_is_reported_before_mlflow_is_touched(tmp_path):
    with pytest.raises(TrackingError, match=r"runs\.parquet is missing; run the aggregate"):
        sync_experiment(tmp_path / "agg", experiment="x", results=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_the_marker_ties_a_sync_to_its_store_and_orphaned_artifacts_are_removed(results, tmp_path):
    name = "marker"
    make_aggregate(results, name)
    store = tmp_path / "store"  # a results folder of its own: its mlflow.db is deleted below
    database = (store / "mlflow.db").resolve()
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    kwargs = {"experiment": name, "results": store, "run_dirs": run_dirs(results)}
    sync_experiment(results / name / "aggregate", marker=first, **kwargs)
    marker = json.loads(first.read_text())
    assert marker["tracking_uri"] == default_tracking_uri(store)
    assert marker["experiment"] == name and marker["created"] == len(RUN_IDS)
    assert marker_staleness(first, tracking_uri=None, results=store) is None
    artifacts = store / "mlartifacts" / name
    before = {p.name for p in artifacts.iterdir()}
    assert len(before) == len(RUN_IDS)  # one folder per child (the parent has no artifacts)

    database.unlink()
    assert marker_staleness(first, tracking_uri=None, results=store) == (
        f"the MLflow store {database} is missing"
    )
    sync_experiment(results / name / "aggregate", marker=second, **kwargs)  # a new store
    assert marker_staleness(first, tracking_uri=None, results=store) == (
        f"the MLflow store {database} no longer holds the runs {first} describes"
    )
    assert marker_staleness(second, tracking_uri=None, results=store) is None
    after = {p.name for p in artifacts.iterdir()}
    assert len(after) == len(RUN_IDS) and not after & before  # the old ones are gone
    other = "http://tracking.example:5000"
    assert marker_staleness(second, tracking_uri=other, results=store) == (
        f"{second} describes the store {default_tracking_uri(store)}, not {other}"
    )
    assert marker_staleness(tmp_path / "absent.json", tracking_uri=None, results=store) is None


def test_two_processes_creating_one_store_take_turns(results, tmp_path):
    """Snakemake runs the tracking jobs of two experiments in two processes at once: both
    create the fresh SQLite store together. Without the store lock one of them failed in
    MLflow's schema migration ("Online migration expected to match one row")."""
    import subprocess
    import sys

    store = tmp_path / "store"
    store.mkdir()
    script = (
        "import sys; from pathlib import Path; from protolib.tracking import sync_experiment\n"
        "results, store, name = map(Path, sys.argv[1:])\n"
        "sync_experiment(results / name.name / 'aggregate', experiment=name.name, results=store,"
        " run_dirs={r: results / 'exp' / 'runs' / r for r in"
        f" {RUN_IDS!r}}})\n"
    )
    names = ["race_a", "race_b"]
    for name in names:
        make_aggregate(results, name)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(results), str(store), name],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=default_tracking_uri(store))
    for name in names:
        the_parent(client, name)
        assert set(children_of(client, name)) == set(RUN_IDS)
