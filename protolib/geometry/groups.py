"""Test accuracy by class-size group (MATH.md §3, "beyond the studies").

A class is in group ``many`` when it has more than ``many_above`` training images,
``few`` when it has fewer than ``few_below``, ``medium`` otherwise (defaults 100 and 20:
many > 100, medium 20–100, few < 20), counted on the run's training set after
imbalance (and the validation hold-out, when the run has one) and before label
corruption. A group's accuracy is over the test points whose
label is in it; a group without a class (or without test points) has no accuracy
(``None``), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

GROUPS = ("many", "medium", "few")
#: the default thresholds: many > 100 training images, few < 20
DEFAULT_THRESHOLDS = {"many_above": 100, "few_below": 20}


def group_thresholds(options: Mapping[str, Any]) -> tuple[int, int]:
    """``(many_above, few_below)`` from a metric's options (each key optional); raises
    ``ValueError`` naming the key, the value and what is allowed."""
    unknown = [key for key in options if key not in DEFAULT_THRESHOLDS]
    if unknown:
        key = unknown[0]
        raise ValueError(
            f"{key}: {options[key]!r} is not an option; allowed: {', '.join(DEFAULT_THRESHOLDS)}"
        )
    values = {**DEFAULT_THRESHOLDS, **options}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}: {value!r} is not allowed; allowed: an integer >= 0")
    many, few = values["many_above"], values["few_below"]
    if few > many + 1:
        raise ValueError(
            f"few_below: {few!r} is not allowed with many_above: {many}; allowed: an "
            f"integer <= {many + 1} (a class may not be both few and many)"
        )
    return many, few


def class_groups(counts: Tensor, *, many_above: int, few_below: int) -> dict[str, Tensor]:
    """Group name → boolean mask (K,) of its classes, from training counts (K,)."""
    many = counts > many_above
    few = counts < few_below
    return {"many": many, "medium": ~(many | few), "few": few}


def accuracy_by_group(
    predictions: Tensor,
    labels: Tensor,
    counts: Tensor,
    *,
    many_above: int = DEFAULT_THRESHOLDS["many_above"],
    few_below: int = DEFAULT_THRESHOLDS["few_below"],
) -> dict[str, float | None]:
    """Accuracy of ``predictions`` (m,) against ``labels`` (m,) over the test points of
    each group of classes (:func:`class_groups` of the training ``counts`` (K,)):
    ``{"many": …, "medium": …, "few": …}``, ``None`` for a group without test points."""
    masks = class_groups(counts.to(labels.device), many_above=many_above, few_below=few_below)
    correct = predictions.to(labels.device) == labels
    out: dict[str, float | None] = {}
    for name in GROUPS:
        members = masks[name][labels.long()]
        out[name] = float(correct[members].double().mean()) if bool(members.any()) else None
    return out


__all__ = ["DEFAULT_THRESHOLDS", "GROUPS", "accuracy_by_group", "class_groups", "group_thresholds"]
