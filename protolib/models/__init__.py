"""Models: backbones (registered in ``protolib.MODELS``, plus ``timm:<name>``) and heads.

Registered backbones: ``mlp``, ``cnn_small``, ``resnet18_cifar``,
``preact_resnet18_cifar`` (MATH.md §7). :func:`build_network` puts a backbone, an
optional projector and the head a loss's ``LossNeeds`` asks for into one
:class:`Network` returning ``NetworkOutput(features, logits)``.
"""

from protolib.models.backbones import build_backbone
from protolib.models.heads import (
    FixedLinear,
    Network,
    NetworkOutput,
    Projector,
    build_network,
)

__all__ = [
    "FixedLinear",
    "Network",
    "NetworkOutput",
    "Projector",
    "build_backbone",
    "build_network",
]
