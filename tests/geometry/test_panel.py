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
from protolib.geometry.hypersphere import alignment, uniformity
from protolib.geometry.neighbours import knn_accuracy, ncc_predictions
from protolib.geometry.panel import MetricContext, check_metric_options
from protolib.geometry.variability import cdnv, effective_rank
from protolib.registry import METRICS, RegistryError
from protolib.train.evaluate import evaluate_split_pair, predict

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
def registered(name: str, metric: Callable[[MetricContext], Any], **facts: Any) -> Iterator[None]:
    """``metric`` registered in METRICS under ``name`` (with ``facts``) for the duration
    of the block."""
    METRICS.register(name, metric, **facts)
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
    means = class_means(f, y, K)
    expected["effective_rank"] = effective_rank(means)
    expected["alignment"] = alignment(f, y, num_classes=K)
    expected["uniformity"] = uniformity(f)
    expected["cdnv"] = cdnv(f, y, means)
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
        ({"nc1": None}, "metric 'bad' returned 'nc1', which"),
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


# -- the neural-collapse panel: splits, costs, options --------------------------------------

EXPENSIVE = {("test", "knn_accuracy"), ("train", "uniformity")}


def test_panel_records_test_metrics_under_test_and_expensive_ones_only_when_asked():
    kw = inputs()
    every = evaluate_split_pair(**kw).metrics
    cheap = evaluate_split_pair(**kw, expensive=False).metrics
    assert set(every) >= EXPENSIVE and not EXPENSIVE & set(cheap)
    assert set(every) - set(cheap) == EXPENSIVE
    assert {key: every[key] for key in cheap} == cheap
    for name in ("ncc_agreement", "accuracy_few"):
        assert ("test", name) in cheap and ("train", name) not in cheap, name
    f, y = kw["train_features"], kw["train_labels"]
    expected = knn_accuracy(f, y, kw["test_features"], kw["test_labels"], num_classes=K)
    assert every[("test", "knn_accuracy")] == expected


def test_ncc_agreement_compares_the_runs_own_test_predictions():
    """With logits, the model's argmax is compared with the nearest class mean: logits
    planted to disagree on the first 5 of 20 test points give 15/20."""
    kw = inputs()
    means = class_means(kw["train_features"], kw["train_labels"], K)
    nearest = ncc_predictions(kw["test_features"], means)
    planted = nearest.clone()
    planted[:5] = (planted[:5] + 1) % K
    logits = torch.nn.functional.one_hot(planted, K).float()
    got = evaluate_split_pair(**{**kw, "test_logits": logits}).metrics
    assert got[("test", "ncc_agreement")] == 15 / 20
    assert got[("test", "accuracy")] == float((planted == kw["test_labels"]).double().mean())


def test_group_accuracy_uses_the_class_counts_given_and_no_value_for_an_empty_group():
    """The balanced default (10 images a class) is all "few"; planted counts split the
    classes into the three groups; a group without classes records no value, not 0."""
    kw = inputs()
    got = evaluate_split_pair(**kw).metrics
    assert {m for split, m in got if m.startswith("accuracy_")} == {"accuracy_few"}
    assert got[("test", "accuracy_few")] == got[("test", "accuracy")]
    counts = torch.tensor([500, 50, 5, 5])  # many: 0, medium: 1, few: 2, 3
    got = evaluate_split_pair(**kw, class_counts=counts).metrics
    means = class_means(kw["train_features"], kw["train_labels"], K).float()
    hits = predict(kw["test_features"], means) == kw["test_labels"]
    for name, classes in {"many": [0], "medium": [1], "few": [2, 3]}.items():
        members = torch.isin(kw["test_labels"], torch.tensor(classes))
        assert got[("test", f"accuracy_{name}")] == float(hits[members].double().mean())
    options = {"group_accuracy": {"many_above": 1000}}  # nothing is "many" any more
    got = evaluate_split_pair(**kw, class_counts=counts, metric_options=options).metrics
    assert ("test", "accuracy_many") not in got
    assert got[("test", "accuracy_medium")] == float(
        hits[torch.isin(kw["test_labels"], torch.tensor([0, 1]))].double().mean()
    )


def test_knn_option_k_is_honoured():
    """k = N: every point votes, the classes tie 10–10–10–10, label 0 wins for every test
    point, and the accuracy is the share of label 0 in the test set (5 of 20)."""
    kw = inputs()
    got = evaluate_split_pair(**kw, metric_options={"knn_accuracy": {"k": N}}).metrics
    assert got[("test", "knn_accuracy")] == 5 / 20
    f, y = kw["train_features"], kw["train_labels"]
    one = knn_accuracy(f, y, kw["test_features"], kw["test_labels"], num_classes=K, k=1)
    got = evaluate_split_pair(**kw, metric_options={"knn_accuracy": {"k": 1}}).metrics
    assert got[("test", "knn_accuracy")] == one


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"knn": {"k": 3}}, "metric_options: 'knn' is not a metric with options; allowed: "),
        ({"knn_accuracy": {"k": 0}}, "metric_options.knn_accuracy.k: 0 is not allowed; allowed:"),
        ({"knn_accuracy": 3}, "metric_options.knn_accuracy: 3 is not allowed; allowed: a mapping"),
        (
            {"group_accuracy": {"few_below": -2}},
            "metric_options.group_accuracy.few_below: -2 is not allowed; allowed: an integer",
        ),
    ],
)
def test_metric_options_are_checked_in_one_line(options, message):
    with pytest.raises(ValueError) as caught:
        check_metric_options(options)
    assert str(caught.value).startswith(message), caught.value
    assert "\n" not in str(caught.value)
    check_metric_options({"knn_accuracy": {"k": 5}, "group_accuracy": {"few_below": 10}})


@pytest.mark.parametrize("name", ["accuracy", "mean_classifier_accuracy", "probe_accuracy"])
def test_a_test_split_metric_may_not_replace_a_test_value(name):
    with (
        registered("bad_test", lambda context: {name: 1.0}, split="test"),
        pytest.raises(ValueError, match=f"metric 'bad_test' returned '{name}', which"),
    ):
        evaluate_split_pair(**inputs())


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"split": "validation"}, "fact split='validation' is not allowed; allowed: train or test"),
        ({"cost": "high"}, "fact cost='high' is not allowed; allowed: cheap or expensive"),
    ],
)
def test_a_metric_with_an_unknown_split_or_cost_is_refused_when_registered(facts, message):
    with pytest.raises(RegistryError) as e:
        METRICS.register("odd", lambda context: {"odd": 1.0}, **facts)
    assert str(e.value) == f"metric 'odd': {message}"
    assert "odd" not in METRICS.names()
