"""Several runs in one process (`protolib train --batch`): each run's tables and log are
those of the same run trained alone in a fresh process; a failing run does not stop the
others; a signal stops the batch; a bad batch file is refused before any work."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from protolib.train import command
from tests import launcher
from tests.conftest import tiny_run

# `protolib train ARGS` in a fresh interpreter: the command's own parser, and
# protolib.train.command.run, which the console script's `train` runs
TRAIN = [sys.executable, "-m", "protolib.cli", "train"]
TINY = tiny_run(
    model_options={"widths": [16], "out_dim": 10},
    iterations=30,
    eval_every=10,
    checkpoint_every=10,
    threads=1,
)
RUNS = {  # three losses and seeds; the last sets no threads (torch's default, as alone)
    "ce": {**TINY, "loss": "ce", "seed": 1, "label_corruption": 0.2},
    "supcon": {
        **TINY,
        "loss": "supcon",
        "n_w": 3,
        "seed": 2,
        "imbalance_ratio": 5,
        "views": 2,
        "crop_padding": 1,
        "probe_iterations": 10,
    },
    "limit": {**TINY, "loss": "supcon_limit", "seed": 3, "threads": None},
}
TABLES = ("metrics", "geometry", "gamma", "data")
# summary fields that hold timings or the process, not results
VOLATILE = {"wall_seconds", "train_seconds", "images_per_second", "pid", "manifest"}


def entry(run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"config": {**config, "run_id": run_id}, "out": f"runs/{run_id}", "log": f"{run_id}.log"}


def start(args: list[str], cwd: Path, stdin: str, output: Path | None = None):
    """`protolib train ARGS` with ``stdin`` on its standard input; its output to the file
    ``output`` (stdout and stderr), or kept apart for ``communicate()``."""
    stderr = subprocess.STDOUT if output is not None else None
    return launcher.Process([*TRAIN, *args], cwd=cwd, stdout=output, stderr=stderr, input=stdin)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """The three runs trained alone (one process each, `> LOG 2>&1`) and in one batch
    after a run that fails (an out that is a file), all at once."""
    alone, batch = tmp_path_factory.mktemp("alone"), tmp_path_factory.mktemp("batch")
    (batch / "a_file").write_text("not a run directory\n")
    spec = [entry(r, c) for r, c in RUNS.items()]
    spec.insert(1, {**entry("ce", RUNS["ce"]), "out": "a_file", "log": "failed/bad.log"})
    processes = []
    for run_id, config in RUNS.items():
        args = ["--config", "-", "--out", f"runs/{run_id}", "--no-progress"]
        log = alone / f"{run_id}.log"
        processes.append(start(args, alone, json.dumps(entry(run_id, config)["config"]), log))
    batch_process = start(["--batch", "-", "--no-progress"], batch, json.dumps({"runs": spec}))
    out, err = batch_process.communicate(timeout=120)
    assert all(p.wait(timeout=120) == 0 for p in processes)
    return {
        "alone": alone,
        "batch": batch,
        "code": batch_process.returncode,
        "out": out,
        "err": err,
    }


def assert_tables_equal(a: Path, b: Path) -> None:
    """Equal schemas (metadata included) and equal values (NaN equal to NaN)."""
    left, right = pq.read_table(a), pq.read_table(b)
    assert left.schema.equals(right.schema, check_metadata=True), a.name
    for name in left.column_names:
        x, y = left[name].to_pylist(), right[name].to_pylist()
        same = [
            u == v or (isinstance(u, float) and math.isnan(u) and math.isnan(v))
            for u, v in zip(x, y, strict=True)
        ]
        assert all(same), (a, name)


def test_batched_runs_equal_runs_alone(trained):
    for run_id in RUNS:
        alone, batched = trained["alone"] / "runs" / run_id, trained["batch"] / "runs" / run_id
        for table in TABLES:
            assert_tables_equal(alone / f"{table}.parquet", batched / f"{table}.parquet")
        assert (alone / "config.json").read_text() == (batched / "config.json").read_text()
        summaries = [json.loads((d / "summary.json").read_text()) for d in (alone, batched)]
        for summary in summaries:
            del summary["manifest"]["checkpoint.pt"]  # it holds the timings
        assert summaries[0]["manifest"] == summaries[1]["manifest"]  # the same bytes
        kept = [{k: v for k, v in s.items() if k not in VOLATILE} for s in summaries]
        assert kept[0] == kept[1] and kept[0]["status"] == "completed"
        assert not (batched / "resume.pt").exists() and not (batched / ".lock").exists()


def without_rates(text: str) -> str:
    return re.sub(r"\(\d+\.\d it/s\)", "(rate)", text)


def test_each_log_is_the_log_of_the_run_alone(trained):
    for run_id in RUNS:
        alone = (trained["alone"] / f"{run_id}.log").read_text()
        batched = (trained["batch"] / f"{run_id}.log").read_text()
        assert without_rates(batched) == without_rates(alone)
        assert batched.startswith(f"[{run_id}] started on ")
        assert batched.endswith(f"outputs in runs/{run_id}\n")
        assert batched.count("[") == 4  # started + three evaluations, no other run's lines


def test_a_failing_run_does_not_stop_the_others(trained):
    assert trained["code"] == 1, trained["err"]
    assert trained["err"] == ""  # everything a run says goes to its log
    lines = trained["out"].splitlines()
    assert len(lines) == 4, lines
    refusal = "protolib train: error: --out a_file is an existing file, not a directory"
    assert lines[1].startswith("runs[1] a_file: " + refusal)
    for line, run_id in zip([lines[0], *lines[2:]], RUNS, strict=True):
        assert line.startswith(f"{run_id}: completed; ") and line.endswith(f"runs/{run_id}")
        assert line == (trained["batch"] / f"{run_id}.log").read_text().splitlines()[-1]
    assert (trained["batch"] / "failed" / "bad.log").read_text().startswith(refusal)
    assert (trained["batch"] / "a_file").read_text() == "not a run directory\n"


def test_a_finished_batch_rerun_trains_nothing_and_marks_done(trained, capsys, monkeypatch):
    """Each run keeps its own run directory: a re-run (here in this process) returns the
    finished summaries, and only a batch whose runs all succeed writes its marker."""
    batch = trained["batch"]
    monkeypatch.chdir(batch)
    runs = [{**entry(r, c), "log": f"rerun/{r}.log"} for r, c in RUNS.items()]
    Path("rerun.json").write_text(json.dumps({"runs": runs, "done": "done/batch.json"}))
    before = {r: (batch / "runs" / r / "summary.json").stat().st_mtime_ns for r in RUNS}
    assert command.run(batch_args("rerun.json")) == 0
    expected = [line for line in trained["out"].splitlines() if not line.startswith("runs[1]")]
    assert capsys.readouterr().out.splitlines()[1::2] == expected  # each after the run's own
    assert json.loads(Path("done/batch.json").read_text()) == {"runs": [f"runs/{r}" for r in RUNS]}
    assert {r: (batch / "runs" / r / "summary.json").stat().st_mtime_ns for r in RUNS} == before


def test_a_signal_stops_the_batch_after_a_checkpoint(tmp_path):
    long = {**TINY, "iterations": 100_000}  # a checkpoint every 10 iterations
    spec = {"runs": [entry("long", long), entry("next", RUNS["ce"])]}
    process = start(["--batch", "-", "--no-progress"], tmp_path, json.dumps(spec))
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs" / "long" / "resume.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert out.startswith("runs[0] runs/long: protolib train: SIGTERM at step ")
    assert len(out.splitlines()) == 1
    assert "SIGTERM at step" in (tmp_path / "long.log").read_text()
    assert (tmp_path / "runs" / "long" / "resume.pt").exists()
    assert not (tmp_path / "runs" / "next").exists() and not (tmp_path / "next.log").exists()


def batch_args(batch: str | None, **given: Any) -> argparse.Namespace:
    defaults = {"config": None, "out": None, "threads": None, "overrides": [], "progress": False}
    return argparse.Namespace(batch=batch, **{**defaults, **given})


GOOD = entry("ok", RUNS["ce"])
BAD_BATCHES = [  # (batch file text, what the one line must say)
    ("{", "is not valid JSON"),
    ("[]", "must hold a JSON object ({...}), got a list"),
    ('{"runs": []}', "runs must be a non-empty list"),
    (json.dumps({"runs": [GOOD], "extra": 1}), "unknown key 'extra'"),
    (json.dumps({"run": [GOOD]}), "unknown key 'run'"),
    (json.dumps({"runs": [GOOD, "x"]}), "runs[1] must be an object"),
    (json.dumps({"runs": [GOOD, {"config": {}, "out": "b"}]}), "runs[1] has no 'log'"),
    (json.dumps({"runs": [{**GOOD, "seed": 1}]}), "runs[0] has unknown key 'seed'"),
    (json.dumps({"runs": [{**GOOD, "out": ""}]}), "runs[0].out must be a non-empty path"),
    (
        json.dumps({"runs": [GOOD, {**entry("b", RUNS["ce"]), "config": {"lr": -1}}]}),
        "runs[1].config: lr must be a finite number > 0, got -1",
    ),
    (
        json.dumps({"runs": [GOOD, {**entry("b", RUNS["ce"]), "config": []}]}),
        "runs[1].config: a run config must be a JSON object",
    ),
    (json.dumps({"runs": [GOOD, {**entry("b", {}), "out": "runs/ok"}]}), "runs[1].out"),
    (json.dumps({"runs": [GOOD, {**entry("b", {}), "log": "./ok.log"}]}), "runs[1].log"),
    (json.dumps({"runs": [GOOD, {**entry("b", {}), "log": "runs/ok"}]}), "is also runs[0].out"),
    ('{"runs": [], "runs": []}', "gives key 'runs' twice"),
]


@pytest.mark.parametrize(("text", "message"), BAD_BATCHES)
def test_bad_batch_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    Path("batch.json").write_text(text)
    assert command.run(batch_args("batch.json")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("protolib train: error: batch file 'batch.json'"), err
    assert message in err, err
    assert os.listdir(tmp_path) == ["batch.json"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"out": "run"}, "do not give --out with it"),
        ({"config": "c.json", "overrides": [("lr", 1)]}, "do not give --config, --set with it"),
        ({"batch": None}, "give --out DIR (the run directory), or --batch FILE"),
        ({"threads": 0}, "--threads must be an integer in 1..1024, got 0"),
        ({"batch": "missing.json"}, "batch file 'missing.json' does not exist"),
    ],
)
def test_batch_with_other_arguments_is_refused(tmp_path, capsys, monkeypatch, given, message):
    monkeypatch.chdir(tmp_path)
    assert command.run(batch_args(**{"batch": "missing.json", **given})) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("protolib train: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and os.listdir(tmp_path) == []
