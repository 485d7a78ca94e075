"""Models: backbones (registered in ``protolib.MODELS``, plus ``timm:<name>``) and heads.

Registered backbones: ``mlp``, ``cnn_small``, ``resnet18_cifar``,
``preact_resnet18_cifar`` (MATH.md §7), ``resnet32_cifar`` (the long-tail protocol's).
:func:`build_network` puts a backbone, an optional projector and the head a loss's
``LossNeeds`` asks for into one :class:`Network` returning ``NetworkOutput(features, logits)``.

The names below load their module on first use: the ``MODELS`` registry imports
``protolib.models.builtin`` (the backbones) alone.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
