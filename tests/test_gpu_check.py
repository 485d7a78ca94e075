"""The prepared GPU check's dry run: ``benchmarks/gpu_check.sh --cpu`` runs every step at
tiny sizes on the CPU and writes a complete JSON whose figures are checked here against
independent references (the issue's FLOP figure, SupCon recomputed in numpy, the presets'
runs and steps counted by hand); a time box ends a step and its processes without losing
the JSON; bad arguments are refused before anything is written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["cuda_tests", "resnet18_throughput", "supcon_blockwise", "prototype_epoch"]


def check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    done = check("--cpu", "--out", str(out))
    report = json.loads((out / "gpu_check.json").read_text())
    return done, report, out


def test_every_step_runs_and_the_json_is_complete(dry_run):
    done, report, out = dry_run
    assert done.returncode == 0, (done.stdout, done.stderr, report)
    assert report["ok"] is True and report["mode"] == "cpu"
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] == "ok" and step["errors"] == {}, (name, step)
        assert 0 < step["seconds"] <= step["time_box"]
    machine = report["machine"]
    assert machine["cpu_count"] == os.cpu_count()
    assert machine["torch"] == torch.__version__.split("+")[0]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    log = (out / "gpu_check.log").read_text()
    assert all(f"== {name}: ok after" in log for name in STEPS)


def test_cuda_tests_are_selected_by_their_marker(dry_run):
    step = dry_run[1]["steps"]["cuda_tests"]
    assert {"tests/data/test_loader.py", "tests/train/test_cuda_run.py"} <= set(step["files"])
    outcomes = step["outcomes"]
    # without CUDA every selected test is skipped, and only CUDA tests are selected
    assert set(outcomes.values()) == {"skipped"}
    assert (
        "tests/train/test_cuda_run.py::test_sigterm_on_cuda_resumes_to_the_uninterrupted_metrics"
        in outcomes
    )
    assert "tests/data/test_loader.py::test_inactive_augment_is_identity[cuda]" in outcomes
    assert "tests/data/test_loader.py::test_inactive_augment_is_identity[cpu]" not in outcomes
    assert step["counts"] == {"skipped": len(outcomes)}


def test_throughput_figures_are_consistent(dry_run):
    step = dry_run[1]["steps"]["resnet18_throughput"]
    flops = step["flops_per_image"]
    # the figure: a CIFAR ResNet-18 forward pass is about 1.11 GFLOP per image;
    # backward costs about twice that (no input gradient for the first convolution)
    assert flops["forward_gflop"] == pytest.approx(1.11, rel=0.01)
    assert 2.9 < flops["train_gflop"] / flops["forward_gflop"] <= 3.0
    rates = step["images_per_second"]
    assert rates["device_loader"]["eager"] > 0 and rates["dataloader"]["eager"] > 0
    assert min(step["data_only_images_per_second"].values()) > 0
    best = max(rates["device_loader"].values())
    assert step["speedup_over_dataloader"] == pytest.approx(best / rates["dataloader"]["eager"])
    peak = step["matmul_peak"]["tflops"]
    measured = step["flops_per_image_measured"]["train_gflop"]  # at the dry run's 8 × 8
    assert measured < flops["train_gflop"] / 10
    assert step["model_tflops"] == pytest.approx(best * measured / 1e3)
    assert step["fraction_of_matmul_peak"] == pytest.approx(step["model_tflops"] / peak)
    assert 0 < step["fraction_of_matmul_peak"] < 5  # tiny sizes on a shared CPU: loose
    profile = step["profile.eager"]  # what limits the step: convolutions, on the CPU
    assert profile["busy_fraction"] > 0 and profile["wall_ms_per_step"] > 0
    assert sum(t["share"] for t in profile["top"]) <= 1 + 1e-9
    assert any("convolution" in t["name"] for t in profile["top"][:3]), profile["top"]


def numpy_supcon(z: np.ndarray, y: np.ndarray, tau: float) -> float:
    """SupCon, mean over anchors with a positive (MATH.md §1.3), in float64."""
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    top = s.max(axis=1, keepdims=True)
    log_denominator = np.log(np.exp(s - top).sum(axis=1)) + top[:, 0]
    positives = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    count = positives.sum(axis=1)
    mean_positive = np.where(positives, s, 0).sum(axis=1) / np.maximum(count, 1)
    anchors = count > 0
    return float((log_denominator - mean_positive)[anchors].mean())


def test_supcon_values_match_numpy(dry_run):
    step = dry_run[1]["steps"]["supcon_blockwise"]
    for n in dry_run[1]["sizes"]["supcon_n"]:
        result = step[f"n{n}"]
        # the inputs of benchmarks/supcon_scale.py's measurement, drawn again here
        g = torch.Generator().manual_seed(0)
        z = F.normalize(torch.randn(n, 128, generator=g), dim=1)
        y = torch.randint(0, 100, (n,), generator=g)
        reference = numpy_supcon(z.double().numpy(), y.numpy(), 0.1)
        assert result["value"] == pytest.approx(reference, rel=1e-5)
        assert result["expected_near"] == pytest.approx(math.log(n - 1) + 0.390625)
        assert result["seconds"] > 0 and result["peak_gib"] > 0
    agreement = step["agreement"]
    assert agreement["value_relative_difference"] < 1e-5
    assert agreement["gradient_relative_difference"] < 1e-5


def test_preset_hours_follow_the_plan(dry_run):
    step = dry_run[1]["steps"]["prototype_epoch"]
    assert step["planned_by"] == "protolib.pipeline.plan"
    config = step["config"]
    assert (config["model"], config["projector"], config["views"]) == ("resnet18_cifar", "mlp", 2)
    assert (config["loss"], config["epochs"], config["dataset"]) == ("supcon", 3, "synthetic")
    # 100 synthetic images, 10 per class; STEP R = 10 keeps 5·10 + 5·1; batch 16
    assert step["steps_per_epoch"] == 55 // 16 and step["members_per_step"] == 32
    assert step["epoch_seconds"] > 0 and step["first_epoch_seconds"] > 0
    cost = step["seconds_per_member"]["resnet18_cifar"]
    assert cost == pytest.approx(step["epoch_seconds"] / (3 * 32))
    presets = step["presets"]
    # 4 experiments × 3 losses × 11 corruptions × 3 seeds, 100 000 steps of 256 each
    sc = presets["sc_vs_ce"]
    assert (sc["runs"], sc["steps"]) == (396, 396 * 100_000)
    assert sc["gpu_hours"] == pytest.approx(396 * 100_000 * 256 * cost / 3600)
    # CIFAR-10, STEP imbalance: R = 10 keeps 27 500 images (26 batches of 1 024), R = 100
    # 25 250 (24); 350 epochs. Per R: 27 unbound and 6 bound (binding 1: 10 more images
    # per batch) step-imbalance runs, 9 limit runs; 2 views.
    proto = presets["prototypes"]
    assert proto["runs"] == 84 and proto["steps"] == 42 * 350 * (26 + 24)
    members = 36 * 2048 + 6 * 2068
    assert proto["gpu_hours"] == pytest.approx(350 * (26 + 24) * members * cost / 3600)
    long_tail = presets["long_tail"]
    assert long_tail["runs"] == 108 and long_tail["gpu_hours"] > 0
    assert all(p["unmeasured_models"] == [] for p in presets.values())


def test_time_boxes_end_each_step_and_keep_the_json(tmp_path):
    out = tmp_path / "out"
    boxes = [arg for name in STEPS for arg in ("--box", f"{name}=0.5")]
    done = check("--cpu", "--out", str(out), *boxes)  # too short to import torch, or pytest
    assert done.returncode == 1, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] is False
    assert [report["steps"][name]["status"] for name in STEPS] == ["timeout"] * 4
    # each step's process group is gone: no pytest of this check is left running
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert not ("pytest" in text and "-m cuda" in text and "-rfE" in text), text


def test_a_spent_budget_skips_the_steps_and_keeps_the_json(tmp_path):
    out = tmp_path / "out"
    done = check("--cpu", "--out", str(out), "--budget", "0.001")
    assert done.returncode == 1, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert [report["steps"][name]["status"] for name in STEPS] == ["skipped"] * 4
    assert report["machine"]["cpu_count"] == os.cpu_count()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--cpu", "--box", "warp=3"], "--box 'warp=3' is not allowed; allowed: STEP=SECONDS"),
        (["--cpu", "--budget", "-1"], "--budget must be a number of seconds > 0, got -1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "out"
    done = check(*args, "--out", str(out))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()
