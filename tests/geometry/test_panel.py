"""The registered evaluation metrics (METRICS) and how an evaluation runs them: class means
computed once, values equal to the geometry functions', plugins' names checked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import protolib.geometry.metrics as metrics_module
import protolib.train.evaluate as evaluate_module
from protolib.geometry import (
    class_means,
    delta_g_from_gram,
    gamma_distributions,
    neural_collapse,
    target_gram,
)
from protolib.geometry.panel import MetricContext
from protolib.registry import METRICS
from protolib.train.evaluate import evaluate_split_pair

K, D, N = 4, 6, 40


def inputs(*, missing_class: bool = False) -> dict[str, Any]:
    """Keyword arguments of :func:`evaluate_split_pair`: float32 embeddings, no logits
    (the class-mean classifier), a classifier of K rows, the ETF target."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % (K - 1 if missing_class else K)
    offsets = torch.randn(K, D, generator=gen)
    train = offsets[labels] + 0.5 * torch.randn(N, D, generator=gen)
    test = offsets[torch.arange(20) % K] + 0.5 * torch.randn(20, D, generator=gen)
    return {
        "train_features": train,
        "train_logits": None,
        "train_labels": labels,
        "test_features": test,
        "test_logits": None,
        "test_labels": torch.arange(20) % K,
        "num_classes": K,
        "target_gram": target_gram("etf", K),
        "classifier": torch.randn(K, D, generator=gen),
    }


@contextmanager
def registered(name: str, metric: Callable[[MetricContext], Any]) -> Iterator[None]:
    """``metric`` registered in METRICS under ``name`` for the duration of the block."""
    METRICS.register(name, metric)
    try:
        yield
    finally:
        METRICS.unregister(name)


def test_values_equal_the_geometry_functions_exactly():
    """Every built-in metric equals a direct call of its geometry function (each of which
    computes its own class means): the panel changed no value."""
    kw = inputs()
    got = evaluate_split_pair(**kw).metrics
    f, y, w = kw["train_features"], kw["train_labels"], kw["classifier"]
    rows = class_means(f, y, K).to(f.dtype).double()  # the class-mean classifier's rows
    expected = {"delta_g": delta_g_from_gram(rows @ rows.T, kw["target_gram"].double())}
    for name, values in gamma_distributions(f, y, classifier=w, num_classes=K).items():
        expected[f"gamma_{name}"] = float(values.mean())
    expected.update(neural_collapse(f, y, classifier=w, num_classes=K))
    geometry = {m: v for (split, m), v in got.items() if split == "train" and m != "error"}
    assert list(geometry) == list(expected)  # the order of metrics.parquet's rows, too
    assert geometry == expected


def test_class_means_are_computed_once_per_evaluation(monkeypatch):
    calls = []
    real = metrics_module.class_means

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics_module, "class_means", counting)
    monkeypatch.setattr(evaluate_module, "class_means", counting)
    evaluation = evaluate_split_pair(**inputs())
    assert ("train", "nc1") in evaluation.metrics and evaluation.gammas
    assert len(calls) == 1


def test_a_registered_metric_sees_the_context_and_is_recorded_after_the_builtins():
    seen: list[MetricContext] = []

    def spread(context: MetricContext) -> dict[str, float]:
        seen.append(context)
        return {"mean_norm": float(context.means.norm(dim=1).mean()), "k": context.num_classes}

    kw = inputs()
    with registered("spread", spread):
        got = evaluate_split_pair(**kw).metrics
    (context,) = seen
    means = class_means(kw["train_features"], kw["train_labels"], K)
    assert torch.equal(context.means, means) and context.means.dtype == torch.float64
    assert context.features is kw["train_features"] and context.classifier is kw["classifier"]
    assert torch.equal(context.target_gram, kw["target_gram"])
    assert got[("train", "mean_norm")] == float(means.norm(dim=1).mean())
    assert got[("train", "k")] == 4.0 and isinstance(got[("train", "k")], float)
    assert list(got)[-2:] == [("train", "mean_norm"), ("train", "k")]


def test_metrics_do_not_run_while_a_class_has_no_training_sample():
    calls = []
    with registered("called", lambda context: calls.append(1) or {"called": 1.0}):
        got = evaluate_split_pair(**inputs(missing_class=True))
    assert calls == [] and got.gammas == {}
    assert set(got.metrics) == {
        ("train", "error"),
        ("test", "accuracy"),
        ("test", "mean_classifier_accuracy"),
    }


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"error": 0.0}, "metric 'bad' returned 'error', which another metric or the training"),
        ({"loss": 0.0}, "metric 'bad' returned 'loss', which"),
        ({"loss.pull": 0.0}, "metric 'bad' returned 'loss.pull', which"),
        ({"lr": 0.0}, "metric 'bad' returned 'lr', which"),
        ({"nc1": 0.0}, "metric 'bad' returned 'nc1', which"),
        ({"fine": "high"}, "metric 'bad' returned fine='high'; it must be a real number"),
        ([("x", 1.0)], "metric 'bad' returned list; it must return a dict"),
        ({3: 1.0}, "metric 'bad' returned the name 3; need a string"),
    ],
)
def test_a_metric_may_not_replace_a_value_or_return_garbage(returned, message):
    """No recorded value is silently replaced: training error (time to fit), the loss,
    the learning rate, another metric's values."""
    with registered("bad", lambda context: returned), pytest.raises(ValueError) as caught:
        evaluate_split_pair(**inputs())
    assert str(caught.value).startswith(message), caught.value
