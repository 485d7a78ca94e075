"""The studies' remaining run-level pieces, trained for real on tiny digits runs: exact
class balancing, batch binding, logit-adjusted and composite losses, and the trained
network against its loss bound (MATH.md §1.7–1.8, §4, §6)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from protolib.train import ConfigError, RunConfig, train_run
from protolib.train.build import prepare
from tests.conftest import tiny_run

BALANCED = tiny_run(balance=True, iterations=30, eval_every=15, batch_size=64, bound_batches=50)


def counts(labels) -> list[int]:
    return torch.bincount(torch.as_tensor(labels), minlength=10).tolist()


def test_balance_subsamples_every_class_to_the_smallest():
    prep = prepare(RunConfig.from_dict(tiny_run(balance=True)))
    plain = prepare(RunConfig.from_dict(tiny_run()))
    smallest = min(counts(plain.train_labels))
    assert counts(prep.train_labels) == [smallest] * 10
    assert set(prep.kept.tolist()) <= set(plain.kept.tolist())
    # balancing comes first: STEP imbalance then cuts the minority classes of the balanced set
    skewed = prepare(RunConfig.from_dict(tiny_run(balance=True, imbalance_ratio=2)))
    assert counts(skewed.train_labels) == [smallest] * 5 + [smallest // 2] * 5


@pytest.fixture(scope="module")
def bound_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    return {
        loss: train_run({**BALANCED, "loss": loss}, root / loss, progress=False)
        for loss in ("ce", "supcon", "ce_la")
    } | {"unbalanced": train_run({**BALANCED, "balance": False}, root / "plain", progress=False)}


def test_trained_networks_sit_above_their_bounds(bound_runs):
    supcon, ce = bound_runs["supcon"], bound_runs["ce"]
    assert supcon["bound_kind"] == "supcon_batch"
    assert ce["bound_kind"] == "ce_theorem1"
    for summary in (supcon, ce, bound_runs["ce_la"]):
        assert summary["bound_gap"] >= 0
        assert summary["bound_gap"] == pytest.approx(
            summary["bound_attained"] - summary["bound_value"], abs=1e-9
        )
    assert supcon["bounds"]["num_batches"] == 50
    # Theorem 2 per batch for the run's (N, K, b, ρ²= 1/τ) is reported beside the drawn batches'
    from protolib.theory.bounds import supcon_bound

    expected = supcon_bound(supcon["n_train"], 10, 64, (1 / 0.1) ** 0.5).per_batch
    assert supcon["bounds"]["theorem2_per_batch"] == pytest.approx(expected, rel=1e-12)


def test_runs_without_balanced_labels_report_no_comparison(bound_runs):
    summary = bound_runs["unbalanced"]
    assert summary["balance"] is False
    for key in ("bound_kind", "bound_attained", "bound_value", "bound_gap", "bounds"):
        assert summary[key] is None


def test_binding_trains_and_is_recorded(tmp_path):
    summary = train_run(
        tiny_run(loss="bcl", binding=2, views=2, crop_padding=1), tmp_path / "r", progress=False
    )
    assert summary["status"] == "completed" and summary["binding"] == 2
    assert json.loads((tmp_path / "r" / "config.json").read_text())["binding"] == 2


def test_binding_beyond_the_smallest_class_is_refused():
    smallest = min(counts(prepare(RunConfig.from_dict(tiny_run(imbalance_ratio=10))).train_labels))
    with pytest.raises(ConfigError, match="binding"):
        prepare(RunConfig.from_dict(tiny_run(imbalance_ratio=10, binding=smallest + 1)))


def test_a_composite_loss_logs_each_component(tmp_path):
    options = {"parts": {"bcl": {"tau": 0.1}, "ce_la": {"weight": 0.5}}}
    config = tiny_run(loss="composite", loss_options=options, projector="mlp", projector_dim=8)
    summary = train_run(config, tmp_path / "r", progress=False)
    assert summary["status"] == "completed"
    metrics = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    train = metrics[metrics.split == "train"]
    logged = train.pivot(index="step", columns="metric", values="value")
    assert {"loss", "loss.bcl", "loss.ce_la"} <= set(logged.columns)
    total = logged["loss.bcl"] + 0.5 * logged["loss.ce_la"]
    assert logged["loss"].to_numpy() == pytest.approx(total.to_numpy(), rel=1e-5)


def test_a_validation_split_is_held_out_and_evaluated_at_every_step(tmp_path):
    summary = train_run(
        tiny_run(validation_fraction=0.2, iterations=4, eval_every=2),
        tmp_path / "v",
        progress=False,
    )
    plain = prepare(RunConfig.from_dict(tiny_run()))
    prep = prepare(RunConfig.from_dict(tiny_run(validation_fraction=0.2)))
    held = prep.validation_loader.num_samples
    assert held == sum(int(0.2 * n) for n in counts(plain.train_labels))
    assert summary["n_train"] == plain.kept.numel() - held
    # the run trains on exactly what the pure split leaves, and never on a held-out point
    from protolib.data.transforms import split_validation

    (rest, _, _), (out, _) = split_validation(
        plain.kept, plain.train_labels, plain.changed, 0.2, 10, seed=0
    )
    assert prep.kept.tolist() == rest.tolist() and not set(rest.tolist()) & set(out.tolist())
    metrics = pd.read_parquet(tmp_path / "v" / "metrics.parquet")
    validation = metrics[metrics.split == "validation"]
    assert list(validation.step) == [2, 4] and set(validation.metric) == {"accuracy"}
    assert validation.value.between(0, 1).all()
    # the summary's figures stay the final ones on the test set
    assert summary["test_accuracy"] == summary["final"]["test/accuracy"]


def test_a_validation_fraction_that_holds_out_nothing_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"validation_fraction 0.001 holds out no training point"):
        prepare(RunConfig.from_dict(tiny_run(validation_fraction=0.001)))


def test_single_member_batches_make_no_bound_comparison(tmp_path):
    summary = train_run(
        {**BALANCED, "loss": "supcon", "batch_size": 1, "iterations": 2, "eval_every": 2},
        tmp_path / "b1",
        progress=False,
    )
    assert summary["status"] == "completed" and summary["bound_kind"] is None


def test_a_checkpoint_written_before_a_key_existed_resumes(tmp_path):
    from protolib.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEYS, load_resume

    out = tmp_path / "r"
    config = RunConfig.from_dict(tiny_run(iterations=4, checkpoint_every=2))
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": {k: v for k, v in config.to_dict().items() if k != "validation_fraction"},
    }
    state |= {key: state.get(key, 0) for key in CHECKPOINT_KEYS}
    out.mkdir()
    torch.save(state, out / "resume.pt")
    assert load_resume(out / "resume.pt", config.to_dict())["config"] == state["config"]
    changed = {**config.to_dict(), "validation_fraction": 0.2}
    with pytest.raises(ConfigError, match="different config"):
        load_resume(out / "resume.pt", changed)
