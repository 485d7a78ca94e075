"""An extension is one file: a plugin module, written here into tmp_path, registers a loss,
a dataset, a model, a prototype geometry and an evaluation metric, each one decorated
definition; `protolib train` and the Snakemake pipeline use all of them, and nothing in
the repository changes for it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from protolib import resources
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, METRICS, MODELS, load_plugins
from tests.workflow.test_pipeline import snakemake, tiny_config

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "protolib_extension_plugin"

PLUGIN_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn

from protolib.data import Split, make_splits
from protolib.losses import Loss, LossNeeds
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, METRICS, MODELS


@LOSSES.register("prototype_pull")
class PrototypePull(Loss):
    """Hinge on the cosine of each embedding to its class prototype."""

    needs = LossNeeds(head="none", normalized=True, prototypes="yes")

    def __init__(self, *, prototypes, margin=0.9):
        super().__init__(prototypes=prototypes)
        self.margin = margin

    def forward(self, features, labels, *, logits=None):
        own = (F.normalize(features, dim=-1) @ self.prototypes.T).gather(1, labels[:, None])
        loss = F.relu(self.margin - own).mean()
        return {"loss": loss, "pull": loss.detach()}


@DATASETS.register(
    "blobs",
    size=lambda o: o["n_train"] + o["n_test"],
    num_classes=3,
    image_shape=(1, 4, 4),
)
def blobs(*, n_train=60, n_test=30, seed=0):
    """Three Gaussian blobs of 1x4x4 images, balanced classes (i mod 3)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(3, 1, 4, 4, generator=g)

    def split(n):
        labels = torch.arange(n) % 3
        noise = 0.1 * torch.randn(n, 1, 4, 4, generator=g)
        return Split((centres[labels] + noise).clamp(0, 1), labels)

    return make_splits("blobs", split(n_train), split(n_test), num_classes=3)


@MODELS.register("flat_linear")
def flat_linear(*, in_shape, out_dim=8):
    """One linear map of the flattened image (declares no costs: the defaults apply)."""
    channels, height, width = in_shape
    model = nn.Sequential(nn.Flatten(1), nn.Linear(channels * height * width, out_dim))
    model.out_dim = out_dim
    return model


@GEOMETRIES.register("tilted")
def tilted(num_classes, *, c=0.2):
    """Every pair of prototypes at cosine c: (1 - c) I + c 11^T."""
    ones = torch.ones(num_classes, num_classes, dtype=torch.float64)
    return (1 - c) * torch.eye(num_classes, dtype=torch.float64) + c * ones


@METRICS.register("blob_counts")
def blob_counts(context):
    """Training points and the smallest class's share of them."""
    counts = torch.bincount(context.labels, minlength=context.num_classes)
    return {"train_points": float(counts.sum()), "smallest_class": float(counts.min())}
'''

#: the run every test trains: all five plugin entries, a few iterations
RUN = {
    "dataset": "blobs",
    "dataset_options": {"n_train": 60, "n_test": 30},
    "model": "flat_linear",
    "model_options": {"out_dim": 8},
    "loss": "prototype_pull",
    "loss_options": {"margin": 0.9},
    "geometry": "tilted",
    "geometry_options": {"c": 0.2},
    "iterations": 20,
    "eval_every": 10,
    "batch_size": 16,
    "probe_iterations": 0,
}
TILTED = 0.8 * torch.eye(3, dtype=torch.float64) + 0.2  # the Gram the plugin declares


#: what a plugin could need edited if an extension were more than one file: the library,
#: the workflow and its schema, the configs and profiles, the package metadata
SOURCES = [
    "protolib",
    "workflow",
    "Snakefile",
    "config.yaml",
    "configs",
    "profiles",
    "slurm",
    "pyproject.toml",
]


def repository_state() -> str | None:
    """The checkout's sources as git sees them: changed and untracked files, and a hash of
    every change against the last commit; None outside a git work tree."""
    outputs = []
    for args in (["status", "--porcelain", "--untracked-files=all"], ["diff", "--binary", "HEAD"]):
        try:
            process = subprocess.run(
                ["git", "-C", str(ROOT), *args, "--", *SOURCES], capture_output=True, check=False
            )
        except OSError:
            return None
        if process.returncode != 0:
            return None
        outputs.append(process.stdout)
    return outputs[0].decode() + hashlib.sha256(outputs[1]).hexdigest()


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    return folder


@pytest.fixture(scope="module")
def trained(plugin_dir, tmp_path_factory) -> tuple[Path, str | None, str | None]:
    """One `protolib train` run in a real subprocess, and the repository's state before
    and after it."""
    before = repository_state()
    out = tmp_path_factory.mktemp("run") / "run"
    overrides = [f"{key}={json.dumps(value)}" for key, value in RUN.items()]
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    sets = [
        arg for item in [f"plugins={json.dumps([PLUGIN])}", *overrides] for arg in ("--set", item)
    ]
    process = subprocess.run(
        [sys.executable, "-m", "protolib.cli", "train", "--out", str(out), *sets],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return out, before, repository_state()


def test_protolib_train_uses_every_plugin_entry(trained):
    out, _, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["model"], config["loss"], config["geometry"]) == (
        "blobs",
        "flat_linear",
        "prototype_pull",
        "tilted",
    )
    metrics = pd.read_parquet(out / "metrics.parquet")
    train = metrics[metrics.split == "train"]
    # the plugin metric at every evaluation (steps 10 and 20), with the dataset's counts:
    # 60 balanced training points over 3 classes
    for name, expected in {"train_points": 60.0, "smallest_class": 20.0}.items():
        rows = train[train.metric == name]
        assert sorted(rows.step) == [10, 20], name
        assert (rows.value == expected).all(), rows
    # the built-in metrics still run beside it, and the loss's component is logged
    assert {"delta_g", "gamma_within", "nc1", "loss.pull"} <= set(train.metric)
    # the prototypes are the plugin geometry's: Gram (1 - c) I + c 11ᵀ
    geometry = pd.read_parquet(out / "geometry.parquet")
    for matrix in ("target", "prototypes"):
        rows = geometry[geometry.matrix == matrix].sort_values(["row", "col"])
        gram = torch.tensor(rows.value.to_numpy()).reshape(3, 3)
        torch.testing.assert_close(gram, TILTED, atol=1e-6, rtol=0)
    # the model is the plugin's: one linear map 16 → 8
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    shapes = {tuple(v.shape) for v in state["network"].values() if v.ndim == 2}
    assert (8, 16) in shapes, shapes


#: every name the plugin adds: registry entries, metric names, the loss's component
PLUGIN_NAMES = (
    "prototype_pull",
    "blobs",
    "flat_linear",
    "tilted",
    "blob_counts",
    "train_points",
    "smallest_class",
)


def test_nothing_in_the_repository_changed(trained):
    """Training with the plugin left the sources as they were, and none of them names any
    of the plugin's entries: nothing had to be listed elsewhere."""
    _, before, after = trained
    if before is None:
        pytest.skip("not a git work tree: nothing to compare")
    assert after == before
    for name in PLUGIN_NAMES:
        grep = ["grep", "--untracked", "-l", "-w", "-e", name, "--", *SOURCES]
        found = subprocess.run(
            ["git", "-C", str(ROOT), *grep],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert found == [], (name, found)


def test_the_pipeline_runs_an_experiment_of_plugin_entries(plugin_dir, tmp_path):
    (tmp_path / f"{PLUGIN}.py").write_text((plugin_dir / f"{PLUGIN}.py").read_text())
    config = tiny_config(plugins=[PLUGIN])
    config["experiments"]["tiny"] = {
        "base": {k: v for k, v in RUN.items() if k != "loss"},
        "losses": {"pull": {"loss": "prototype_pull"}},
        "grid": {"seed": [0]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/tiny/aggregate/runs.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    aggregate = tmp_path / "results" / "tiny" / "aggregate"
    runs = pd.read_parquet(aggregate / "runs.parquet")
    assert list(runs.run_id) == ["pull_R1_p0_s0"]
    assert runs.loc[0, "loss_type"] == "prototype_pull"
    metrics = pd.read_parquet(aggregate / "metrics.parquet")
    points = metrics[metrics.metric == "train_points"]
    assert sorted(points.step) == [10, 20] and (points.value == 60.0).all()


def test_resources_read_plugin_facts_and_default_the_rest(plugin_dir, monkeypatch):
    """The dataset's declared size (a function of its options) is honoured; the model
    declared no costs, so the documented conservative defaults apply."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    try:
        load_plugins([PLUGIN])
        assert resources.OTHER_SECONDS_PER_SAMPLE == {"gpu": 1e-3, "cpu": 1e-1}
        for device, cost in (("cpu", 1e-1), ("auto", 1e-3)):
            run = {**RUN, "dataset_options": {"n_train": 90}, "device": device}
            size = 90 + 30  # n_train as set, n_test from the factory's default
            seconds = 20 * 16 * 1 * cost + (20 // 10 + 1) * size * cost / 3
            assert resources.training_seconds(run) == pytest.approx(seconds, rel=1e-12)
        # an unknown dataset name (a plugin this process did not import) gets 60 000
        other = {**RUN, "dataset": "not_imported_here", "device": "cpu"}
        seconds = 20 * 16 * 1e-1 + 3 * 60000 * 1e-1 / 3
        assert resources.training_seconds(other) == pytest.approx(seconds, rel=1e-12)
    finally:
        for registry, name in (
            (LOSSES, "prototype_pull"),
            (DATASETS, "blobs"),
            (MODELS, "flat_linear"),
            (GEOMETRIES, "tilted"),
            (METRICS, "blob_counts"),
        ):
            if name in registry:
                registry.unregister(name)
        sys.modules.pop(PLUGIN, None)
