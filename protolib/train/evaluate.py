"""Evaluation of a network on whole splits (MATH.md §3, §7): errors, accuracies and the
registered evaluation metrics (:data:`~protolib.registry.METRICS`: the geometry of the
embeddings, and whatever plugins add)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protolib.geometry import class_means
from protolib.geometry.panel import MetricContext, run_metrics

#: names the training loop records under the ``train`` split beside the evaluation (the
#: mean training loss, its components ``loss.<name>``, the learning rate, the probe's
#: training error); no registered metric may return one of them
LOOP_METRICS = frozenset({"loss", "lr", "probe_error"})
LOOP_PREFIXES = ("loss.",)
#: names the training loop records under the ``test`` split (the probe's accuracy)
LOOP_TEST_METRICS = frozenset({"probe_accuracy"})


@torch.no_grad()
def embed(
    network: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    *,
    normalize: bool,
    autocast: bool = False,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Features ``(N, d)`` (unit rows when ``normalize``) and logits ``(N, K)`` or None of
    every batch, in eval mode, as float32 on the network's device."""
    was_training = network.training
    network.eval()
    features, logits = [], []
    try:
        for x, _, _ in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            context = (
                torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else nullcontext()
            )
            with context:
                out = network(x)
            h = out.features.float()
            features.append(F.normalize(h, dim=-1) if normalize else h)
            if out.logits is not None:
                logits.append(out.logits.float())
    finally:
        network.train(was_training)
    return torch.cat(features), (torch.cat(logits) if logits else None)


def class_mean_classifier(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Rows are the un-centred class means of the training embeddings (MATH.md §7a);
    a class without samples gets a row of NaN (it is never predicted)."""
    means = class_means(features, labels, num_classes, allow_missing=True)
    return means.to(features.dtype)


def predict(features: Tensor, weight: Tensor) -> Tensor:
    """argmax_c <h, w_c>; NaN rows never win."""
    scores = features @ weight.nan_to_num(0.0).T
    scores = scores.masked_fill(weight.isnan().any(dim=1).unsqueeze(0), float("-inf"))
    return scores.argmax(dim=1)


def error_rate(predictions: Tensor, labels: Tensor) -> float:
    return float((predictions != labels).double().mean())


def error_rates(*pairs: tuple[Tensor, Tensor]) -> list[float]:
    """:func:`error_rate` of each ``(predictions, labels)`` pair, the same values, read
    back from the device at once (one wait for the device instead of one per pair)."""
    return torch.stack([(p != y).double().mean() for p, y in pairs]).tolist()


class Evaluation(NamedTuple):
    """What one evaluation finds: the metrics ``{(split, metric): value}``, the class-mean
    Gram ``G_M`` of the training embeddings (K×K, float64; NaN rows for absent classes)
    and the γ distributions (MATH.md §3; empty unless every class is present)."""

    metrics: dict[tuple[str, str], float]
    gram: Tensor
    gammas: dict[str, Tensor]


def evaluate_split_pair(
    *,
    train_features: Tensor,
    train_logits: Tensor | None,
    train_labels: Tensor,
    test_features: Tensor,
    test_logits: Tensor | None,
    test_labels: Tensor,
    num_classes: int,
    target_gram: Tensor,
    classifier: Tensor | None,
    class_counts: Tensor | None = None,
    expensive: bool = True,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Evaluation:
    """All evaluation metrics, with the Gram and γ distributions they come from.

    ``error``/``accuracy`` use the run's classifier: the model's logits when it has a
    head, the class-mean classifier otherwise; ``mean_classifier_accuracy`` is the
    class-mean classifier for every loss. When every class has a training sample, every
    registered metric (:func:`~protolib.geometry.panel.run_metrics`) runs on the training
    embeddings against the training (possibly corrupted) labels, with the class means
    computed here once, and sees the test embeddings, labels and the run's test
    predictions; those registered ``cost="expensive"`` only when ``expensive`` (the
    training loop asks for them at its final evaluation). ``class_counts`` (K,) are the
    training images per class before label corruption (default: counted from
    ``train_labels``); ``metric_options`` maps a metric to its options.
    """
    exact_means = class_means(train_features, train_labels, num_classes, allow_missing=True)
    means = exact_means.to(train_features.dtype)  # the class-mean classifier
    train_pred = (
        train_logits.argmax(1) if train_logits is not None else predict(train_features, means)
    )
    test_pred = test_logits.argmax(1) if test_logits is not None else predict(test_features, means)
    train_error, test_error, mean_classifier_error = error_rates(
        (train_pred, train_labels),
        (test_pred, test_labels),
        (predict(test_features, means), test_labels),
    )
    out: dict[tuple[str, str], float] = {
        ("train", "error"): train_error,
        ("test", "accuracy"): 1.0 - test_error,
        ("test", "mean_classifier_accuracy"): 1.0 - mean_classifier_error,
    }
    gammas: dict[str, Tensor] = {}
    present = ~means.isnan().any(dim=1)
    if bool(present.all()):
        context = MetricContext(
            features=train_features,
            labels=train_labels,
            means=exact_means,
            num_classes=num_classes,
            classifier=classifier,
            target_gram=target_gram,
            test_features=test_features,
            test_labels=test_labels,
            test_predictions=test_pred,
            class_counts=(
                torch.bincount(train_labels.long(), minlength=num_classes)
                if class_counts is None
                else class_counts
            ),
            metric_options=metric_options or {},
        )
        own = set(out)

        def taken(split: str, name: str) -> bool:
            if (split, name) in own:
                return True
            if split == "test":
                return name in LOOP_TEST_METRICS
            return name in LOOP_METRICS or name.startswith(LOOP_PREFIXES)

        out.update(run_metrics(context, taken, expensive=expensive))
        gammas = context.gammas
    return Evaluation(out, exact_means @ exact_means.T, gammas)
