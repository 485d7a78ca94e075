"""The assessment of a run at one step: both splits embedded and evaluated (MATH.md §3),
plus the accuracy on the held-out validation points when the run has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from protolib.geometry import class_means
from protolib.train.evaluate import Evaluation, embed, error_rate, evaluate_split_pair, predict

if TYPE_CHECKING:
    from protolib.train.build import Prepared


@dataclass
class Assessment:
    """The embeddings of both splits at ``step`` and what their evaluation found (one
    pass per step: the final evaluation's is reused for the outputs)."""

    step: int
    train_features: Tensor
    test_features: Tensor
    evaluation: Evaluation


def assess(prep: Prepared, step: int) -> Assessment:
    """Embed both splits of ``prep`` and evaluate them at ``step``; the metrics registered
    as expensive only at the final step (:mod:`protolib.geometry.panel`)."""
    size = prep.config.eval_batch_size
    kw = {
        "normalize": prep.needs.normalized,
        "autocast": prep.autocast,
        "channels_last": prep.channels_last,
    }
    train_f, train_l = embed(prep.network, prep.loader.iterate(size), **kw)
    test_f, test_l = embed(prep.network, prep.test_loader.iterate(size), **kw)
    evaluation = evaluate_split_pair(
        train_features=train_f,
        train_logits=train_l,
        train_labels=prep.train_labels,
        test_features=test_f,
        test_logits=test_l,
        test_labels=prep.test_labels,
        num_classes=prep.data.num_classes,
        target_gram=prep.target,
        # a head over the encoder (a composite loss) is not in the embedding's space
        classifier=classifier_rows(prep) if prep.network.head_input == "embedding" else None,
        # class sizes after imbalance, before label corruption (MATH.md §3)
        class_counts=torch.bincount(prep.original_labels, minlength=prep.data.num_classes),
        expensive=step >= prep.total_steps,
        metric_options=prep.config.metric_options,
    )
    if prep.validation_loader is not None:
        evaluation.metrics[("validation", "accuracy")] = _validation_accuracy(
            prep, train_f, size, kw
        )
    return Assessment(step, train_f, test_f, evaluation)


def classifier_rows(prep: Prepared) -> Tensor | None:
    """The classifier rows: the head's weight, else the prototypes, else None."""
    weight = prep.network.classifier_weight()
    if weight is None:
        weight = prep.prototypes
    return None if weight is None else weight.detach().float()


def _validation_accuracy(prep: Prepared, train_f: Tensor, size: int, kw: dict[str, Any]) -> float:
    """Accuracy on the held-out training points, by the run's own classifier (its
    logits, else the class means of the training embeddings), for model selection."""
    assert prep.validation_loader is not None and prep.validation_labels is not None
    features, logits = embed(prep.network, prep.validation_loader.iterate(size), **kw)
    if logits is not None:
        predictions = logits.argmax(1)
    else:
        K = prep.data.num_classes
        means = class_means(train_f, prep.train_labels, K, allow_missing=True)
        predictions = predict(features, means.to(features.dtype))
    return 1.0 - error_rate(predictions, prep.validation_labels)
