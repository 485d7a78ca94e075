"""The evaluation metrics registered in :data:`~protolib.registry.METRICS` (MATH.md §3).

An evaluation metric is one decorated function of a :class:`MetricContext` returning
``{metric name: float}``; every registered metric runs at every evaluation in which every
class has a training sample, in registration order (the built-ins below, then plugins),
and its values are recorded under the ``train`` split of ``metrics.parquet``::

    from protolib.geometry.panel import MetricContext
    from protolib.registry import METRICS

    @METRICS.register("mean_norm")
    def mean_norm(context: MetricContext) -> dict[str, float]:
        return {"mean_norm": float(context.means.norm(dim=1).mean())}

The context holds what several metrics share, computed once per evaluation: the class
means, and (on first use) the γ distributions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from torch import Tensor

from protolib.geometry.metrics import delta_g_from_gram, gamma_distributions, neural_collapse
from protolib.registry import METRICS


@dataclass(frozen=True)
class MetricContext:
    """One evaluation of the training embeddings, as a metric sees it.

    - ``features`` (n, d): the training embeddings (unit rows when the loss normalises),
      as the network returned them (float32);
    - ``labels`` (n,) int64: the training (possibly corrupted) labels;
    - ``means`` (K, d) float64: the class means of ``features`` (every class present);
    - ``num_classes``: K;
    - ``classifier`` (K, d) or None: the head's weight, else the prototypes;
    - ``target_gram`` (K, K): the Δ_G target G* of the run's geometry.
    """

    features: Tensor
    labels: Tensor
    means: Tensor
    num_classes: int
    classifier: Tensor | None
    target_gram: Tensor

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


def run_metrics(context: MetricContext, taken: Callable[[str], bool]) -> dict[str, float]:
    """Every registered metric's values, in registration order.

    ``taken(name)`` is true for names recorded under the ``train`` split by someone else
    (``error``, ``loss``, …): a metric that returns one of them, or a name another metric
    returned, or anything but a mapping of names to real numbers, raises ``ValueError``
    naming the metric, so no value is silently replaced.
    """
    out: dict[str, float] = {}
    for entry, metric in METRICS.entries():
        values = metric(context)
        if not isinstance(values, Mapping):
            raise ValueError(
                f"metric {entry!r} returned {type(values).__name__}; "
                "it must return a dict {metric name: float}"
            )
        for name, value in values.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric {entry!r} returned the name {name!r}; need a string")
            if taken(name) or name in out:
                raise ValueError(
                    f"metric {entry!r} returned {name!r}, which another metric or the "
                    "training loop records already; choose another name"
                )
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"metric {entry!r} returned {name}={value!r}; it must be a real number"
                ) from None
    return out
