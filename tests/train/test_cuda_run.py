"""``protolib train`` on CUDA, end to end, as a cluster job runs it (issue 15).

The prototype preset's path at toy size (CIFAR ResNet-18 with a projector, two augmented
views, SupCon with prototype copies, bfloat16 autocast, channels-last; eager) writes
every output, each matching its manifest; a run stopped by SIGTERM saves a checkpoint,
exits 143 and resumes to the metrics of an uninterrupted run (with the default
``compile``: compiled where Triton is); and the CUDA-trained network fits digits.
Skipped without CUDA (the ``cuda`` marker, tests/conftest.py);
``benchmarks/gpu_check.sh`` runs these on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from protolib.results.contract import RUN_FILES, SUMMARY

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*RUN_FILES, SUMMARY])  # the run files the results contract declares


def start(config: dict, out: Path) -> subprocess.Popen:
    """``python -m protolib train`` on ``config`` into ``out`` (protolib from this
    checkout: a GPU machine may not have it installed)."""
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(config))
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    command = [sys.executable, "-m", "protolib", "train", "--config", str(path), "--out", str(out)]
    return subprocess.Popen(
        [*command, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)),
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a run that must succeed; its standard error."""
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stderr


PRESET_PATH = {
    "dataset": "synthetic",
    "dataset_options": {"num_classes": 10, "image_size": 32, "train_size": 512, "test_size": 128},
    "model": "resnet18_cifar",
    "projector": "mlp",
    "views": 2,
    "crop_padding": 4,
    "flip": True,
    "batch_size": 64,
    "loss": "supcon",
    "loss_options": {"tau": 0.1},
    "n_w": 2,
    "iterations": 6,
    "eval_every": 3,
    "eval_batch_size": 256,
    "probe_iterations": 5,
    "device": "cuda",
    # compiling a ResNet-18 takes about a minute; the compiled preset run is the GPU
    # check's prototype_epoch step, compiled against eager test_speed_cuda.py's
    "compile": "eager",
}


def test_preset_path_on_cuda_writes_every_output(tmp_path):
    out = tmp_path / "run"
    finish(start(PRESET_PATH, out))
    assert sorted(p.name for p in out.iterdir()) == FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 6
    assert summary["device_type"] == "cuda"
    # every file is the one the manifest describes (size and SHA-256, computed here)
    for name, entry in summary["manifest"].items():
        data = (out / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    metrics = pd.read_parquet(out / "metrics.parquet")
    train = metrics[metrics.split == "train"]
    assert sorted(set(train[train.metric == "loss"].step)) == [3, 6]
    assert metrics.value.map(math.isfinite).all(), metrics[~metrics.value.map(math.isfinite)]
    assert {"accuracy", "probe_accuracy"} <= set(metrics[metrics.split == "test"].metric)
    # the checkpoint is portable: it loads on the CPU
    import torch

    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 6 and state["status"] == "completed"


DIGITS = {
    "loss": "ce",
    "iterations": 3000,
    "eval_every": 50,
    "checkpoint_every": 50,
    "batch_size": 128,
    "probe_iterations": 0,
    "device": "cuda",
}


def test_sigterm_on_cuda_resumes_to_the_uninterrupted_metrics(tmp_path):
    reference = start(DIGITS, tmp_path / "reference")
    finish(reference)
    out = tmp_path / "stopped"
    process = start(DIGITS, out)
    deadline = time.time() + 240
    while not (out / "resume.pt").exists():  # the first periodic checkpoint (step 50)
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "checkpoint saved" in stderr
    assert not (out / "summary.json").exists()
    finish(start(DIGITS, out))
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["attempts"]
    assert first["stopped_by"] == "SIGTERM" and 0 < first["stop_step"] < 3000
    assert second["start_step"] == first["stop_step"]
    a = pd.read_parquet(tmp_path / "reference" / "metrics.parquet")
    b = pd.read_parquet(out / "metrics.parquet")
    # the same steps and metrics; values equal to float32 round-off (CUDA reductions are
    # not bit-reproducible), far below what a wrongly restored state would change
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
    reference_summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert summary["time_to_fit"] == reference_summary["time_to_fit"]
    # trained on CUDA, the default MLP fits digits and generalises
    assert summary["train_error"] == 0.0 and summary["test_accuracy"] > 0.9
    assert not (out / "resume.pt").exists()
