"""One training run end to end: outputs, resume, signals, bad input, divergence."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from protolib import LOSSES
from protolib.cli import main as cli_main
from protolib.results import GAMMA_SCHEMA, GEOMETRY_SCHEMA, METRICS_SCHEMA, read_table
from protolib.train import RunConfig, train_run
from tests import launcher

QUICK = {
    "iterations": 60,
    "eval_every": 20,
    "batch_size": 64,
    "probe_iterations": 20,
    "threads": 1,
}
SYNTHETIC = {"num_classes": 4, "channels": 1, "image_size": 8, "train_size": 256, "test_size": 64}


def loss_options(name):
    if name == "composite":
        return {"loss_options": {"parts": {"bcl": {}, "ce_la": {"weight": 0.5}}}, "n_w": 5}
    needs = LOSSES.get(name).needs
    return {"n_w": 5} if needs.prototypes == "optional" else {}


@pytest.mark.parametrize("model", ["mlp", "cnn_small"])
@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_every_small_model(tmp_path, loss, model, dataset):
    config = {
        **QUICK,
        "loss": loss,
        "model": model,
        "dataset": dataset,
        "dataset_options": SYNTHETIC if dataset == "synthetic" else {},
        "lr": 0.05,
        **loss_options(loss),
    }
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["status"] == "completed"
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    losses = metrics[(metrics.metric == "loss") & (metrics.split == "train")].sort_values("step")
    assert list(losses.step) == [20, 40, 60]
    assert losses.value.iloc[-1] < losses.value.iloc[0], losses.value.tolist()
    assert all(math.isfinite(v) for v in losses.value)


def test_outputs_are_complete_and_self_describing(tmp_path):
    out = tmp_path / "run"
    config = {
        **QUICK,
        "run_id": "supcon-nw5",
        "loss": "supcon",
        "loss_name": "supcon_t0.1",
        "n_w": 5,
        "imbalance_ratio": 10,
        "label_corruption": 0.2,
        "views": 2,
        "crop_padding": 1,
        "flip": True,
    }
    summary = train_run(config, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "data.parquet",
        "gamma.parquet",
        "geometry.parquet",
        "metrics.parquet",
        "summary.json",
    ]
    assert json.loads((out / "config.json").read_text()) == RunConfig.from_dict(config).to_dict()
    metrics = read_table(out / "metrics.parquet", METRICS_SCHEMA)
    assert metrics.schema.equals(METRICS_SCHEMA, check_metadata=True)
    frame = metrics.to_pandas()
    assert set(frame.run_id) == {"supcon-nw5"} and set(frame.n_w) == {5}
    assert set(frame.loss) == {"supcon_t0.1"} and summary["loss_type"] == "supcon"
    assert set(frame.imbalance_ratio) == {10.0} and set(frame.label_corruption) == {0.2}
    for metric in [
        "loss",
        "loss.sample_anchors",
        "loss.prototype_anchors",
        "error",
        "delta_g",
        "nc1",
        "gamma_class_means",
        "gamma_within",
        "gamma_weights",
        "lr",
        "probe_error",
    ]:
        assert metric in set(frame[frame.split == "train"].metric), metric
    assert {"accuracy", "mean_classifier_accuracy", "probe_accuracy"} <= set(
        frame[frame.split == "test"].metric
    )
    # data.parquet records exactly what was trained on: STEP imbalance R=10, p=0.2
    data = pd.read_parquet(out / "data.parquet")
    counts = data.label.value_counts().sort_index()
    assert summary["n_train"] == len(data) == counts.sum()
    assert (data.label != data.train_label).sum() == data.corrupted.sum() == summary["n_corrupted"]
    assert summary["n_corrupted"] == math.floor(0.2 * len(data))
    assert counts.loc[5:].max() <= counts.loc[:4].min() // 10 + 1
    geometry = read_table(out / "geometry.parquet", GEOMETRY_SCHEMA).to_pandas()
    assert set(geometry.matrix) == {"class_means", "target", "prototypes"}
    assert len(geometry[geometry.matrix == "target"]) == 100
    gamma = read_table(out / "gamma.parquet", GAMMA_SCHEMA).to_pandas()
    sizes = gamma.groupby("distribution")["count"].sum().to_dict()
    assert sizes == {"class_means": 45, "weights": 45, "within": summary["n_train"]}
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 60 and state["status"] == "completed"
    assert summary["status"] == "completed" and summary["iterations"] == 60
    assert summary["images_per_second"] > 0 and summary["versions"]["torch"] == torch.__version__
    # re-running a finished run is a no-op
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert train_run(config, out, progress=False) == summary
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_default_digits_ce_fits_within_a_minute(tmp_path):
    start = time.perf_counter()
    # one thread: the suite runs a worker per core, and two threads per worker thrash
    summary = train_run({"threads": 1}, tmp_path / "run", progress=False)
    elapsed = time.perf_counter() - start
    assert summary["fitted"] and summary["train_error"] == 0.0
    assert summary["time_to_fit"] <= 1000
    assert elapsed < 60, elapsed
    assert summary["test_accuracy"] > 0.9


def run_cli(*args, **kw):
    return launcher.Process([sys.executable, "-m", "protolib.cli", "train", *args], **kw)


RESUME = {
    "loss": "supcon",
    "n_w": 3,
    "iterations": 400,
    "eval_every": 20,
    "checkpoint_every": 20,
    "batch_size": 64,
    "views": 2,
    "crop_padding": 1,
    "flip": True,
    "probe_iterations": 30,
    "threads": 1,
    "label_corruption": 0.3,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run of RESUME without interruption, in this process: its folder and summary."""
    out = tmp_path_factory.mktemp("uninterrupted") / "reference"
    return out, train_run(RESUME, out, progress=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_identical_metrics(tmp_path, signum, uninterrupted):
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(RESUME))
    reference_dir, reference = uninterrupted
    out = tmp_path / "killed"
    process = run_cli("--config", str(config_path), "--out", str(out), "--no-progress")
    deadline = time.time() + 120
    while not (out / "resume.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if signum == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "checkpoint saved" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    interrupted_at = torch.load(out / "resume.pt", weights_only=True)["step"]
    assert 0 < interrupted_at < 400
    resumed = run_cli("--config", str(config_path), "--out", str(out), "--no-progress")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    a = pd.read_parquet(reference_dir / "metrics.parquet")
    b = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    summary = json.loads((out / "summary.json").read_text())
    for key in ["time_to_fit", "train_error", "test_accuracy", "probe_accuracy", "delta_g"]:
        assert summary[key] == reference[key], key
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert not (out / "resume.pt").exists()


BAD = [
    (
        ["--set", "loss=supcn"],
        "unknown loss 'supcn'; known: bcl, ce, ce_fix, ce_la, composite, supcon",
    ),
    (["--set", "model=resnet"], "unknown model 'resnet'; known:"),
    (["--set", "dataset=mnist"], "unknown dataset 'mnist'; known:"),
    (
        ["--set", "loss=supcon", "--set", "n_w=2", "--set", "geometry=simplex"],
        "unknown geometry 'simplex'",
    ),
    (["--set", "loss=supcon", "--set", "n_w=-1"], "n_w must be an integer in 0..10000, got -1"),
    (["--set", "imbalance_ratio=0.5"], "imbalance_ratio must be a number >= 1"),
    (["--set", "label_corruption=1.5"], r"label_corruption must be in [0, 1]"),
    (["--set", "label_corruption=-0.1"], r"label_corruption must be in [0, 1]"),
    (
        ["--set", "loss=supcon", "--set", "n_w=2", "--set", 'model_options={"out_dim": 4}'],
        "geometry 'etf' with K=10 classes needs dim >= 9, got 4",
    ),
    (["--set", "loss=ce", "--set", "n_w=3"], "loss 'ce' does not take n_w"),
    (["--set", "lr=-1"], "lr must be a finite number > 0, got -1"),
    (["--set", "bogus=1"], "unknown run config key 'bogus'; allowed keys:"),
    (["--set", "dataset=cifar10", "--set", 'dataset_options={"root": "/nonexistent"}'], "cifar"),
    (["--set", "loss=supcon", "--set", 'loss_options={"tau": 0}'], "tau must be a positive number"),
    (["--set", 'loss_options={"tau": 0.1}'], "loss 'ce': got an unexpected keyword argument 'tau'"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = cli_main(["train", "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("protolib train: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_nan_loss_ends_as_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "lr=1e30",
            "--set",
            "iterations=200",
            "--set",
            "threads=1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["iterations"] < 200
    assert "diverged" in capsys.readouterr().out


def test_directory_holding_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    train_run({**QUICK, "iterations": 20}, out, progress=False)
    with pytest.raises(ValueError, match="already holds a different run"):
        train_run({**QUICK, "iterations": 40}, out, progress=False)


def test_progress_lines_in_batch_mode(tmp_path, capsys):
    train_run({**QUICK}, tmp_path / "run", progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[run] step")]
    assert len(lines) == 3 and "train_err" in lines[-1] and "60/60" in lines[-1]


def test_metrics_parquet_has_declared_schema_metadata(tmp_path):
    train_run({**QUICK, "iterations": 20}, tmp_path / "run", progress=False)
    meta = pq.read_schema(tmp_path / "run" / "metrics.parquet").metadata
    assert meta[b"protolib.table"] == b"metrics" and meta[b"protolib.schema_version"] == b"2"
    assert os.listdir(tmp_path / "run")  # and no temporary files were left behind
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        RunConfig.from_file(bad)
    with pytest.raises(ValueError, match="does not exist"):
        RunConfig.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="set exactly one of iterations and epochs"):
        RunConfig.from_dict({"epochs": 3})
    assert RunConfig.from_dict({"epochs": 3, "iterations": None}).epochs == 3
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        RunConfig.from_dict({"batch_size": "64"})
