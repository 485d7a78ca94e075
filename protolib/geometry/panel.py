"""The evaluation metrics registered in :data:`~protolib.registry.METRICS` (MATH.md §3).

An evaluation metric is one decorated function of a :class:`MetricContext` returning
``{metric name: float | None}``; ``None`` means "no value at this evaluation" (a class-size
group without classes): no row is recorded, so the value is null wherever the metrics are
read by name (a pivot, the aggregate's tables), never 0::

    from protolib.geometry.panel import MetricContext
    from protolib.registry import METRICS

    @METRICS.register("mean_norm")
    def mean_norm(context: MetricContext) -> dict[str, float]:
        return {"mean_norm": float(context.means.norm(dim=1).mean())}

Registration facts say where and when a metric runs:

- ``split``: ``"train"`` (the default) or ``"test"``, the split of ``metrics.parquet``
  its values are recorded under (a metric of the test points says ``"test"``);
- ``cost``: ``"cheap"`` (the default) or ``"expensive"``. **The rule**: cheap metrics run
  at every evaluation; expensive ones (work of order N_train² or N_test·N_train, such as
  kNN accuracy and uniformity) only at evaluations that ask for them, which the training
  loop does at its final evaluation (the last step) only;
- ``options``: a function that turns the metric's options (a mapping, from
  ``metric_options[name]`` of the evaluation) into what it uses, raising ``ValueError``
  for an option it does not allow (:func:`check_metric_options` runs them all).

Every registered metric runs in every evaluation in which every class has a training
sample, in registration order (the built-ins below, then plugins). The context holds what
several metrics share, each computed once per evaluation and only when first used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch import Tensor

from protolib.geometry.groups import accuracy_by_group, group_thresholds
from protolib.geometry.hypersphere import alignment, uniformity
from protolib.geometry.metrics import delta_g_from_gram, gamma_distributions, neural_collapse
from protolib.geometry.neighbours import KNN_K, knn_accuracy, ncc_predictions
from protolib.geometry.variability import cdnv, effective_rank
from protolib.registry import METRICS

SPLITS = ("train", "test")
COSTS = ("cheap", "expensive")


@dataclass(frozen=True)
class MetricContext:
    """One evaluation of the embeddings, as a metric sees it.

    - ``features`` (n, d): the training embeddings (unit rows when the loss normalises),
      as the network returned them (float32);
    - ``labels`` (n,) int64: the training (possibly corrupted) labels;
    - ``means`` (K, d) float64: the class means of ``features`` (every class present);
    - ``num_classes``: K;
    - ``classifier`` (K, d) or None: the head's weight, else the prototypes;
    - ``target_gram`` (K, K): the Δ_G target G* of the run's geometry;
    - ``test_features`` (m, d), ``test_labels`` (m,): the test embeddings and labels;
    - ``test_predictions`` (m,): the run's prediction of each test point, the one its
      ``test/accuracy`` scores (the logits' argmax with a head, else the class-mean
      classifier ``argmax_c <h, μ_c>``);
    - ``class_counts`` (K,) int64: training images per class after imbalance, before
      label corruption;
    - ``metric_options``: metric name → its options (see ``options`` above).

    Derived values (:attr:`gammas`, :attr:`ncc_test_predictions`) are computed on first
    use and kept for the evaluation.
    """

    features: Tensor
    labels: Tensor
    means: Tensor
    num_classes: int
    classifier: Tensor | None
    target_gram: Tensor
    test_features: Tensor
    test_labels: Tensor
    test_predictions: Tensor
    class_counts: Tensor
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @cached_property
    def gammas(self) -> dict[str, Tensor]:
        """The γ distributions of :func:`~protolib.geometry.gamma_distributions`."""
        return gamma_distributions(
            self.features,
            self.labels,
            classifier=self.classifier,
            num_classes=self.num_classes,
            means=self.means,
        )

    @cached_property
    def ncc_test_predictions(self) -> Tensor:
        """(m,) the nearest-class-mean prediction of each test point (NC4)."""
        return ncc_predictions(self.test_features, self.means)

    def options(self, metric: str) -> Mapping[str, Any]:
        """The options given for the registered metric ``metric`` (empty when none)."""
        return self.metric_options.get(metric, {})


@METRICS.register("delta_g")
def delta_g(context: MetricContext) -> dict[str, float]:
    """Δ_G of the class-mean Gram against the target Gram (MATH.md §3).

    The Gram is taken of the class means rounded to the features' dtype: the class-mean
    classifier's rows, as recorded since metrics v1.
    """
    rows = context.means.to(context.features.dtype).double()
    gram = rows @ rows.T
    return {"delta_g": delta_g_from_gram(gram, context.target_gram.to(gram))}


@METRICS.register("gamma")
def gamma_means(context: MetricContext) -> dict[str, float]:
    """The mean of each γ distribution: ``gamma_class_means``, ``gamma_weights`` (with a
    classifier) and ``gamma_within``."""
    return {f"gamma_{name}": float(values.mean()) for name, values in context.gammas.items()}


@METRICS.register("neural_collapse")
def collapse(context: MetricContext) -> dict[str, float]:
    """NC1, equinorm, equiangularity, max-angle and, with a classifier, self-duality and
    the classifier's equinorm (:func:`~protolib.geometry.neural_collapse`)."""
    values = neural_collapse(
        context.features,
        context.labels,
        classifier=context.classifier,
        num_classes=context.num_classes,
        means=context.means,
    )
    return {name: float(value) for name, value in values.items()}


@METRICS.register("ncc_agreement", split="test")
def nc4_agreement(context: MetricContext) -> dict[str, float]:
    """NC4: the fraction of test points whose run prediction (``test_predictions``: for a
    head-less loss the class-mean classifier, as ``test/accuracy``) equals the nearest-
    class-mean prediction from the training class means (MATH.md §3)."""
    agree = context.ncc_test_predictions == context.test_predictions.to(
        context.ncc_test_predictions.device
    )
    return {"ncc_agreement": float(agree.double().mean()) if agree.numel() else float("nan")}


def _knn_options(options: Mapping[str, Any]) -> int:
    """``k`` (default :data:`KNN_K`) from kNN accuracy's options."""
    unknown = [key for key in options if key not in {"k"}]
    if unknown:
        key = unknown[0]
        raise ValueError(f"{key}: {options[key]!r} is not an option; allowed: k")
    k = options.get("k", KNN_K)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: {k!r} is not allowed; allowed: an integer >= 1")
    return k


@METRICS.register("knn_accuracy", split="test", cost="expensive", options=_knn_options)
def knn(context: MetricContext) -> dict[str, float]:
    """kNN accuracy of the test points against the training embeddings, k = 20 by
    cosine (option ``k``), ties to the smaller label (MATH.md §3)."""
    value = knn_accuracy(
        context.features,
        context.labels,
        context.test_features,
        context.test_labels,
        num_classes=context.num_classes,
        k=_knn_options(context.options("knn_accuracy")),
    )
    return {"knn_accuracy": value}


@METRICS.register("effective_rank")
def rank(context: MetricContext) -> dict[str, float]:
    """Effective rank of the centred class means (MATH.md §3; K − 1 at a simplex)."""
    return {"effective_rank": effective_rank(context.means)}


@METRICS.register("alignment")
def align(context: MetricContext) -> dict[str, float]:
    """Alignment of the unit training embeddings over same-class pairs (MATH.md §3)."""
    return {
        "alignment": alignment(context.features, context.labels, num_classes=context.num_classes)
    }


@METRICS.register("uniformity", cost="expensive")
def uniform(context: MetricContext) -> dict[str, float]:
    """Uniformity of the unit training embeddings over all pairs, exact (MATH.md §3)."""
    return {"uniformity": uniformity(context.features)}


@METRICS.register("cdnv")
def variability(context: MetricContext) -> dict[str, float]:
    """CDNV of the training embeddings, averaged over class pairs (MATH.md §3)."""
    return {"cdnv": cdnv(context.features, context.labels, context.means)}


@METRICS.register("group_accuracy", split="test", options=group_thresholds)
def groups(context: MetricContext) -> dict[str, float | None]:
    """Test accuracy by class-size group: ``accuracy_many``, ``accuracy_medium``,
    ``accuracy_few`` (options ``many_above``, default 100, and ``few_below``, default 20;
    :mod:`protolib.geometry.groups`); None (no row) for a group without classes or test
    points, never 0 (MATH.md §3)."""
    many, few = group_thresholds(context.options("group_accuracy"))
    values = accuracy_by_group(
        context.test_predictions,
        context.test_labels,
        context.class_counts,
        many_above=many,
        few_below=few,
    )
    return {f"accuracy_{name}": value for name, value in values.items()}


def metric_facts(entry: str) -> tuple[str, str]:
    """``(split, cost)`` of the registered metric ``entry``, checked."""
    facts = METRICS.facts(entry)
    split, cost = facts.get("split", "train"), facts.get("cost", "cheap")
    if split not in SPLITS:
        raise ValueError(f"metric {entry!r} has split {split!r}; allowed: train, test")
    if cost not in COSTS:
        raise ValueError(f"metric {entry!r} has cost {cost!r}; allowed: cheap, expensive")
    return split, cost


def check_metric_options(options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (one line: the metric, the value, what is allowed) unless
    ``options`` maps registered metrics that take options to options they allow."""
    takes = [name for name in METRICS.names() if "options" in METRICS.facts(name)]
    for name, given in options.items():
        if name not in takes:
            raise ValueError(
                f"metric_options: {name!r} is not a metric with options; "
                f"allowed: {', '.join(takes)}"
            )
        if not isinstance(given, Mapping):
            raise ValueError(
                f"metric_options.{name}: {given!r} is not allowed; allowed: a mapping of options"
            )
        try:
            METRICS.facts(name)["options"](given)
        except ValueError as error:
            raise ValueError(f"metric_options.{name}.{error}") from None


def run_metrics(
    context: MetricContext,
    taken: Callable[[str, str], bool],
    *,
    expensive: bool = True,
) -> dict[tuple[str, str], float]:
    """Every registered metric's values ``{(split, name): value}``, in registration
    order; metrics registered with ``cost="expensive"`` only when ``expensive``.

    ``taken(split, name)`` is true for names recorded under that split by someone else
    (``error``, ``loss``, ``accuracy``, …): a metric that returns one of them, or a name
    another metric returned under its split, or anything but a mapping of names to real
    numbers or None, raises ``ValueError`` naming the metric, so no value is silently
    replaced. A None value is left out of the result (no row).
    """
    out: dict[tuple[str, str], float] = {}
    seen: set[tuple[str, str]] = set()
    for entry, metric in METRICS.entries():
        split, cost = metric_facts(entry)
        if cost == "expensive" and not expensive:
            continue
        values = metric(context)
        if not isinstance(values, Mapping):
            raise ValueError(
                f"metric {entry!r} returned {type(values).__name__}; "
                "it must return a dict {metric name: float or None}"
            )
        for name, value in values.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric {entry!r} returned the name {name!r}; need a string")
            if taken(split, name) or (split, name) in seen:
                raise ValueError(
                    f"metric {entry!r} returned {name!r}, which another metric or the "
                    "training loop records already; choose another name"
                )
            seen.add((split, name))
            if value is None:
                continue
            try:
                out[(split, name)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"metric {entry!r} returned {name}={value!r}; it must be a real number"
                ) from None
    return out
