"""A trained network against its loss bound, at the end of a run (MATH.md §4, last bullet).

Made only where the bound applies and the comparison cannot be wrong: the run completed,
its training labels (after balancing, imbalance and corruption) are exactly balanced,
``bound_batches > 0`` and a batch has two members or more. Then

- a ``supcon`` run (any ``n_w``; the comparison is plain SupCon on the embeddings): the
  SupCon loss summed over anchors per batch, at ``ρ² = 1/τ``, over ``bound_batches``
  batches of ``batch_size`` training points drawn with the run's sampling (one
  un-augmented view; bound members are not added), against the mean of the drawn
  batches' own bound terms (their sum over every multiset is Theorem 2). A term bounds
  the *expected* loss of a batch, not each batch (the SC-vs-CE study's Fig. 5), so the
  paired gap is a Monte-Carlo estimate of a non-negative number, exactly 0 at the
  simplex; its standard error, the exact expected term under the run's sampling and
  Theorem 2 per batch (uniform multisets, the study's yardstick) are in ``bounds``;
- a run whose loss has a trainable linear head on the embedding (``ce``, ``ce_la``): the
  mean training CE of ``W h + b`` against Theorem 1 (``‖W‖_F``, ``ρ = max ‖h_i‖``) and
  Corollary 1 (``r = max ‖w_y‖``). With exactly balanced labels the bias cancels in the
  bound, so the bounds hold with it.

Any other run records no comparison (every ``bound_*`` column null).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from protolib.train.build import Prepared

#: the ``bound_*`` columns of a run without a comparison
NO_COMPARISON: dict[str, Any] = {
    "bound_kind": None,
    "bound_attained": None,
    "bound_value": None,
    "bound_gap": None,
}


def compare_to_bound(prep: Prepared, train_features: Tensor) -> dict[str, Any]:
    """The ``bound_*`` columns and the ``bounds`` detail of a completed run (see the module
    docstring); ``train_features`` are the final embeddings of the training points, as
    the evaluation computed them (unit rows for a loss on normalised features)."""
    from protolib.theory.trained import balanced_classes, ce_vs_bounds, supcon_vs_bound

    config, labels = prep.config, prep.train_labels
    if config.bound_batches == 0 or config.batch_size < 2:
        return {**NO_COMPARISON, "bounds": None}
    try:  # the bounds need exactly balanced labels: any other run makes no comparison
        balanced_classes(labels.cpu(), prep.data.num_classes)
    except ValueError:
        return {**NO_COMPARISON, "bounds": None}
    features = train_features.detach().double().cpu()
    labels = labels.cpu()
    if config.loss == "supcon":
        result = supcon_vs_bound(
            features,
            labels,
            tau=float(prep.loss.tau),
            batch_size=config.batch_size,
            num_batches=config.bound_batches,
            sampling=config.sampling,
            seed=config.seed,
        )
        return _columns("supcon_batch", dict(result), "bound", "gap")
    head = prep.network.head
    if prep.needs.head == "linear" and prep.needs.head_input == "embedding" and head is not None:
        bias = None if head.bias is None else head.bias.detach().double().cpu()
        result = ce_vs_bounds(features, head.weight.detach().double().cpu(), bias, labels)
        return _columns("ce_theorem1", dict(result), "theorem1", "gap_theorem1")
    return {**NO_COMPARISON, "bounds": None}


def _columns(kind: str, detail: dict[str, Any], bound: str, gap: str) -> dict[str, Any]:
    """The ``bound_*`` columns from a comparison's ``detail`` (kept whole as ``bounds``)."""
    return {
        "bound_kind": kind,
        "bound_attained": detail["attained"],
        "bound_value": detail[bound],
        "bound_gap": detail[gap],
        "bounds": detail,
    }
