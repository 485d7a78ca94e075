"""Learning-rate schedules, the linear probe and the class-mean classifier."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from protolib.train import train_run
from protolib.train.evaluate import class_mean_classifier, predict
from protolib.train.probe import linear_probe
from protolib.train.schedule import lr_multiplier


def test_schedules_closed_forms():
    T = 100
    constant = lr_multiplier("constant", total=T)
    step = lr_multiplier("step", total=T, milestones=[30, 60], factor=0.1)
    cosine = lr_multiplier("cosine", total=T)
    poly = lr_multiplier("poly", total=T, power=5)
    for t in range(T):
        assert constant(t) == 1.0
        assert step(t) == pytest.approx(1.0 if t < 30 else 0.1 if t < 60 else 0.01)
        assert cosine(t) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / T)))
        assert poly(t) == pytest.approx(((T - t) / T) ** 5)
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        lr_multiplier("exp", total=T)


def test_warmup_ramps_linearly_then_follows_the_schedule():
    T, W = 100, 10
    step = lr_multiplier("step", total=T, milestones=[5, 60], factor=0.1, warmup=W)
    cosine = lr_multiplier("cosine", total=T, warmup=W)
    for t in range(T):
        ramp = (t + 1) / W if t < W else 1.0
        assert step(t) == pytest.approx(ramp * (1.0 if t < 5 else 0.1 if t < 60 else 0.01))
        assert cosine(t) == pytest.approx(ramp * 0.5 * (1 + math.cos(math.pi * t / T)))
    assert step(0) == pytest.approx(0.1) and step(W - 1) == pytest.approx(0.1)
    assert lr_multiplier("constant", total=T, warmup=0)(0) == 1.0


def test_epoch_budget_and_step_milestones_in_epochs(tmp_path):
    config = {
        "epochs": 4,
        "iterations": None,
        "sampling": "epoch",
        "batch_size": 128,
        "schedule": "step",
        "milestones": [2, 3],
        "warmup": 1,
        "lr": 0.1,
        "eval_every": 1,
        "probe_iterations": 0,
        "threads": 1,
    }
    summary = train_run(config, tmp_path / "run", progress=False)
    steps_per_epoch = 1347 // 128  # digits: 1347 training images, drop_last
    assert summary["iterations"] == 4 * steps_per_epoch and summary["epochs"] == 4.0
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    lr = metrics[metrics.metric == "lr"].set_index("step").value
    # the lr logged at step t is the one for the next step: milestones at epochs 2 and 3
    # a one-epoch linear warm-up: (t + 1) / steps_per_epoch of the rate during epoch 1
    assert lr.loc[4] == pytest.approx(0.1 * 5 / steps_per_epoch)
    assert lr.loc[steps_per_epoch] == pytest.approx(0.1)
    assert lr.loc[2 * steps_per_epoch - 1] == pytest.approx(0.1)
    assert lr.loc[2 * steps_per_epoch] == pytest.approx(0.01)
    assert lr.loc[3 * steps_per_epoch] == pytest.approx(0.001)
    epochs = metrics[metrics.metric == "lr"].set_index("step").epoch
    assert epochs.loc[steps_per_epoch] == 1.0


def test_probe_fits_separable_features_and_class_mean_classifier():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(5, 16, generator=g)
    labels = torch.arange(500) % 5
    features = centres[labels] + 0.3 * torch.randn(500, 16, generator=g)
    out = linear_probe(
        features, labels, features[:100], labels[:100], num_classes=5, iterations=300
    )
    assert out["probe_train_error"] == 0.0 and out["probe_accuracy"] == 1.0
    means = class_mean_classifier(features, labels, 5)
    for c in range(5):  # rows are explicit per-class means
        torch.testing.assert_close(means[c], features[labels == c].mean(0))
    scores = features @ means.T
    assert torch.equal(predict(features, means), scores.argmax(1))
    # a class absent from the training labels gets NaN and is never predicted
    sparse = class_mean_classifier(features[labels != 2], labels[labels != 2], 5)
    assert sparse[2].isnan().all() and (predict(features, sparse) != 2).all()
