"""Losses (MATH.md §1): each a typed pure function plus a registered ``nn.Module``.

Registered names (``protolib.LOSSES``): ``ce``, ``ce_fix``, ``supcon``, ``bcl``,
``supcon_limit``, ``supcon_limit_paper``. Every loss returns ``{"loss": scalar, ...}``
with named, detached components, and declares its :class:`LossNeeds`.
"""

from protolib.losses.base import Loss, LossInputError, LossNeeds
from protolib.losses.ce import CrossEntropy, CrossEntropyFixed, ce_fix_loss, ce_loss
from protolib.losses.limit import (
    SupConLimit,
    SupConLimitPaper,
    supcon_limit_loss,
    supcon_limit_paper_loss,
)
from protolib.losses.supcon import BCL, SupCon, bcl_loss, supcon_loss

__all__ = [
    "BCL",
    "CrossEntropy",
    "CrossEntropyFixed",
    "Loss",
    "LossInputError",
    "LossNeeds",
    "SupCon",
    "SupConLimit",
    "SupConLimitPaper",
    "bcl_loss",
    "ce_fix_loss",
    "ce_loss",
    "supcon_limit_loss",
    "supcon_limit_paper_loss",
    "supcon_loss",
]
