"""Fuzzed run configs through `protolib train`: every config either trains or is refused
in one line naming a key, with nothing written; no other outcome, no exception."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protolib.cli import main as cli_main
from protolib.registry import GEOMETRIES, LOSSES
from protolib.train import RunConfig
from tests.train.test_refusals import TINY

FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
UNKNOWN_KEYS = ["bogus", "Lr", "lr ", "", "loss_options.tau", "n w"]

# Values a user could mean, per key, chosen to keep a run that trains under a second.
VALID: dict[str, list] = {
    "run_id": ["r1", "a.b=c,d+e-f"],
    "experiment": ["e", ""],
    "plugins": [[]],
    "dataset": ["digits"],
    "dataset_options": [{}, {"test_fraction": 0.5, "split_seed": 3}],
    "balance": [False, True],
    "imbalance": ["step", "exp"],
    "minority_fraction": [0.5, 0.3],
    "imbalance_ratio": [1, 2.5, 50, 130, 131, 1e308],
    "label_corruption": [0, 0.5, 1],
    "validation_fraction": [0, 0.25],
    "corruption_mode": ["other", "uniform"],
    "model": ["mlp", "cnn_small"],
    "model_options": [{"widths": [16], "out_dim": 8}, {"widths": [], "out_dim": 12}, {}],
    "projector": ["none", "mlp"],
    "projector_dim": [4, 16],
    "loss": LOSSES.names(),
    "loss_name": [None, "x_1"],
    "loss_options": [{}, {"tau": 0.5}],
    "n_w": [0, 1, 2],
    "geometry": GEOMETRIES.names(),
    "geometry_options": [{}],
    "batch_size": [1, 8, 64],
    "sampling": ["epoch", "replacement"],
    "binding": [0, 1, 2, 200],
    "views": [1, 2],
    "crop_padding": [0, 2, 8],
    "flip": [True, False],
    "iterations": [1, 3, None],
    "epochs": [None],
    "lr": [0.01, 0.5, 1e30],
    "momentum": [0, 0.5],
    "weight_decay": [0, 1e-4],
    "schedule": ["constant", "step", "cosine", "poly"],
    "milestones": [[], [1], [1, 2]],
    "lr_factor": [0.5, 2],
    "poly_power": [1, 2.5],
    "warmup": [0, 2],
    "eval_every": [1, 2, 3],
    "eval_batch_size": [256, 4096],
    "probe_iterations": [0, 2],
    "probe_lr": [0.1],
    "bound_batches": [0, 3],
    "metric_options": [{}, {"knn_accuracy": {"k": 3}}, {"group_accuracy": {"few_below": 5}}],
    "seed": [0, 1, 2**32 - 1],
    "device": ["auto", "cpu", "cuda", "tpu"],
    "amp": [True, False],
    "channels_last": [True, False],
    "threads": [1, None],
    "checkpoint_every": [1, 2],
    "compile": ["auto", "eager"],  # "model" compiles: seconds per example
    "sgd_impl": ["auto", "loop", "foreach", "fused"],
    "sync_batchnorm": [True, False],
}
assert sorted(VALID) == sorted(FIELDS)

NUMBERS = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.sampled_from([-1, -0.5, 0, 0.5, 1e308, -(2**31), 2**31, 2**63, 2**64, 10**30]),
)
SCALARS = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.sampled_from(["", "x", "supcn", "mnist", "resnet", "simplex", "timm:no_such_net", "NaN"]),
)
# nested junk: no huge integers (a model would try to allocate them)
NESTED_SCALARS = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -1, 0, 0.5, -0.5, 3]),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "x"]),
)
NESTED = st.recursive(
    NESTED_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["widths", "out_dim", "tau", "test_fraction", "junk", "channels"]),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=6,
)


# wrong numbers (most often), wrong types, unknown names, lists, nested junk
JUNK = st.one_of(NUMBERS, NUMBERS, SCALARS, NESTED, st.lists(SCALARS, max_size=3))


# the tiny valid config the examples below start from
BASE = {**TINY, "iterations": 2, "eval_every": 1, "batch_size": 16, "checkpoint_every": 1}


@st.composite
def run_configs(draw) -> tuple[dict, list[str]]:
    """A tiny valid config with 0–3 keys mutated; the config and the mutated keys."""
    config = {
        "model": "mlp",
        "model_options": {"widths": [16], "out_dim": 8},
        "iterations": draw(st.integers(1, 3)),
        "eval_every": draw(st.integers(1, 3)),
        "batch_size": draw(st.sampled_from([4, 16, 32])),
        "probe_iterations": draw(st.integers(0, 2)),
        "checkpoint_every": draw(st.integers(1, 3)),
        "threads": 1,
    }
    mutated = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(FIELDS + UNKNOWN_KEYS))
        if key in VALID:  # half the draws a value a user could mean, half junk
            value = draw(st.sampled_from(VALID[key])) if draw(st.booleans()) else draw(JUNK)
        else:
            value = draw(st.one_of(st.sampled_from([1, "x", None]), JUNK))
        config[key] = value
        mutated.append(key)
    return config, mutated


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _not_finite(literal: str) -> float:
    raise AssertionError(f"a run that trained recorded {literal} in its config")


def _names_a_key(line: str, mutated: list[str]) -> bool:
    words = set(re.findall(r"[A-Za-z_]+", line))
    return bool(words & set(FIELDS)) or any(key and key in line for key in mutated)


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=run_configs())
@example(case=({**BASE, "weight_decay": float("nan")}, ["weight_decay"]))
@example(case=({**BASE, "lr": float("inf")}, ["lr"]))
@example(case=({**BASE, "imbalance_ratio": 131}, ["imbalance_ratio"]))
@example(case=({**BASE, "seed": -1}, ["seed"]))
@example(case=({**BASE, "schedule": "poly", "poly_power": float("nan")}, ["poly_power"]))
@example(case=({**BASE, "lr_factor": -1, "milestones": [1]}, ["lr_factor"]))
@example(case=({**BASE, "model_options": {"widths": "x"}}, ["model_options"]))
@example(case=({**BASE, "loss_options": {"tau": float("nan")}}, ["loss_options"]))
def test_fuzzed_config_trains_or_is_refused_in_one_line(workdir, case):
    config, mutated = case
    folder = Path(tempfile.mkdtemp(dir=workdir))
    path = folder / "run.json"
    path.write_text(json.dumps(config, allow_nan=True))  # NaN and Infinity literals
    out = folder / "run"
    stderr, stdout = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = cli_main(["train", "--config", str(path), "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    err = stderr.getvalue()
    if code == 0:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged"), summary["status"]
        # honoured exactly: every key as given, every number finite, every class trained on
        saved = json.loads((out / "config.json").read_text(), parse_constant=_not_finite)
        given_back = json.loads(json.dumps(config, allow_nan=True))
        assert {key: saved[key] for key in given_back} == given_back, (config, saved)
        assert min(summary["class_counts"]) > 0, (config, summary["class_counts"])
    else:
        assert code == 2, (config, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("protolib train: error: "), (config, err)
        assert _names_a_key(lines[0], mutated), (config, lines[0])
        assert not out.exists(), (config, lines[0])
    shutil.rmtree(folder)
