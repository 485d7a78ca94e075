"""Models: backbones (registered in ``protolib.MODELS``, plus ``timm:<name>``) and heads.

Registered backbones: ``mlp``, ``cnn_small``, ``resnet18_cifar``,
``preact_resnet18_cifar`` (MATH.md §7). :func:`build_network` puts a backbone, an
optional projector and the head a loss's ``LossNeeds`` asks for into one
:class:`Network` returning ``NetworkOutput(features, logits)``.

The names below load their module on first use: the ``MODELS`` registry imports
``protolib.models.backbones`` alone.
"""

from __future__ import annotations

import importlib
from typing import Any

_HEADS = "protolib.models.heads"

#: exported name → the module that defines it
_EXPORTS = {
    "FixedLinear": _HEADS,
    "Network": _HEADS,
    "NetworkOutput": _HEADS,
    "Projector": _HEADS,
    "build_backbone": "protolib.models.backbones",
    "build_network": _HEADS,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
