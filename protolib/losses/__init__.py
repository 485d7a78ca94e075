"""Losses (MATH.md §1): each a typed pure function plus a registered ``nn.Module``.

Registered names (``protolib.LOSSES``): ``ce``, ``ce_fix``, ``ce_la``, ``supcon``,
``bcl``, ``supcon_limit``, ``supcon_limit_paper`` and ``composite`` (a weighted sum of
the others). Every loss returns ``{"loss": scalar, ...}`` with named, detached
components, and declares its :class:`LossNeeds` (``Loss.needs_for(options)``: a
composite's depend on its parts).
"""

from protolib.losses.base import REDUCTIONS, Loss, LossInputError, LossNeeds, Reduction, Shard
from protolib.losses.ce import CrossEntropy, CrossEntropyFixed, ce_fix_loss, ce_loss
from protolib.losses.ce_la import CrossEntropyLogitAdjusted, ce_la_loss
from protolib.losses.composite import Composite
from protolib.losses.limit import (
    SupConLimit,
    SupConLimitPaper,
    supcon_limit_loss,
    supcon_limit_paper_loss,
)
from protolib.losses.supcon import BCL, SupCon, bcl_loss, supcon_loss

__all__ = [
    "BCL",
    "REDUCTIONS",
    "Composite",
    "CrossEntropy",
    "CrossEntropyFixed",
    "CrossEntropyLogitAdjusted",
    "Loss",
    "LossInputError",
    "LossNeeds",
    "Reduction",
    "Shard",
    "SupCon",
    "SupConLimit",
    "SupConLimitPaper",
    "bcl_loss",
    "ce_fix_loss",
    "ce_la_loss",
    "ce_loss",
    "supcon_limit_loss",
    "supcon_limit_paper_loss",
    "supcon_loss",
]
