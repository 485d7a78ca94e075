"""Heads and the full network: backbone → optional projector → optional classifier.

The head a run needs comes from its loss's :class:`~protolib.losses.base.LossNeeds`
(``needs.head``), never from the loss's name: ``"none"`` (embeddings only),
``"linear"`` (a trainable classifier with bias, MATH.md §1.1) or ``"fixed_linear"``
(a bias-free classifier fixed to the prototypes, MATH.md §1.2). ``needs.head_input``
says whether the head reads the embedding (the projector's output) or the encoder (the
backbone's output), as a composite loss's classifier part does (MATH.md §1.8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from protolib.choices import PROJECTOR_KINDS, ProjectorKind
from protolib.losses.base import HEAD_INPUTS, HEAD_KINDS, HeadInput, HeadKind, LossNeeds
from protolib.models.backbones import build_backbone

#: Output width of the "mlp" projector unless told otherwise (SupContrast uses 128).
DEFAULT_PROJECTOR_DIM = 128


class FixedLinear(nn.Module):
    """Bias-free linear map ``h ↦ h Wᵀ`` with a fixed weight ``W`` ``(K, d)`` (MATH.md §1.2).

    ``W`` is a buffer: ``.to()`` and ``state_dict`` carry it, it never appears in
    ``parameters()`` and gets no gradient. It is stored in the default floating dtype
    (like a freshly built ``nn.Linear``) and used in the dtype of the input.
    """

    weight: Tensor

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        weight = torch.as_tensor(weight).detach()
        if weight.ndim != 2 or weight.numel() == 0:
            raise ValueError(
                f"FixedLinear weight must have shape (K, d), got {tuple(weight.shape)}"
            )
        if not torch.isfinite(weight).all():
            raise ValueError("FixedLinear weight must be finite")
        self.register_buffer("weight", weight.to(torch.get_default_dtype()).clone())

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        """``(..., d)`` → ``(..., K)``: ``features @ Wᵀ``."""
        return features @ self.weight.to(features.dtype).T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fixed"


class Projector(nn.Module):
    """Two-layer MLP projector ``Linear(d → hidden) → ReLU → Linear(hidden → out_dim)``
    (SupContrast's "mlp" head); ``hidden_dim`` defaults to ``in_dim``."""

    def __init__(
        self, in_dim: int, *, hidden_dim: int | None = None, out_dim: int = DEFAULT_PROJECTOR_DIM
    ) -> None:
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Projector {name} must be a positive int; got {value!r}")
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim)`` → ``(B, out_dim)``."""
        return self.layers(x)


class NetworkOutput(NamedTuple):
    """What :class:`Network` returns: ``features`` ``(B, d)`` or ``(B, V, d)``, not
    normalised (the losses normalise), and ``logits`` ``(B, K)`` / ``(B, V, K)`` or
    ``None`` when the network has no head."""

    features: Tensor
    logits: Tensor | None


class Network(nn.Module):
    """Backbone → projector (optional) → classifier head (optional), the head reading the
    projector's output or, with ``head_input="encoder"``, the backbone's.

    Args:
        backbone: maps ``(B, C, H, W)`` → ``(B, backbone.out_dim)``.
        num_classes: ``K``.
        head: ``"none"``, ``"linear"`` (trainable ``nn.Linear(d, K)`` with bias) or
            ``"fixed_linear"`` (:class:`FixedLinear` on ``prototypes``).
        head_input: ``"embedding"`` (the head reads ``features``, width ``d``) or
            ``"encoder"`` (the head reads the backbone's output, width
            ``backbone.out_dim``; ``features`` are still the projector's output). Only
            with a head.
        prototypes: ``(K, h)`` fixed classifier rows (``h`` the head's input width);
            required by ``"fixed_linear"`` and refused by the other heads (a loss that
            uses prototypes holds them itself).
        projector: ``"none"`` or ``"mlp"`` (:class:`Projector`).
        projector_dim: output width ``d`` of the projector.
        projector_hidden: hidden width of the projector (default: the backbone's width).

    ``embedding_dim`` is ``d``, the width of ``features``; ``head_dim`` is the width the
    head reads.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        head: HeadKind = "none",
        head_input: HeadInput = "embedding",
        prototypes: Tensor | None = None,
        projector: ProjectorKind = "none",
        projector_dim: int = DEFAULT_PROJECTOR_DIM,
        projector_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown head {head!r}; known: {', '.join(HEAD_KINDS)}")
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"unknown head_input {head_input!r}; known: {', '.join(HEAD_INPUTS)}")
        if head == "none" and head_input != "embedding":
            raise ValueError(f"head_input {head_input!r} needs a head; got head 'none'")
        if projector not in PROJECTOR_KINDS:
            raise ValueError(
                f"unknown projector {projector!r}; known: {', '.join(PROJECTOR_KINDS)}"
            )
        backbone_dim = getattr(backbone, "out_dim", None)
        if not isinstance(backbone_dim, int) or isinstance(backbone_dim, bool):
            raise TypeError("backbone must have an int attribute out_dim (its output width)")

        self.backbone = backbone
        self.projector: nn.Module = nn.Identity()
        dim = backbone_dim
        if projector == "mlp":
            self.projector = Projector(
                backbone_dim, hidden_dim=projector_hidden, out_dim=projector_dim
            )
            dim = projector_dim
        self.embedding_dim = dim
        self.num_classes = num_classes
        self.head_kind: str = head
        self.head_input: str = head_input
        self.projector_kind: str = projector
        head_dim = backbone_dim if head_input == "encoder" else dim
        self.head_dim = head_dim
        where = "backbone output" if head_input == "encoder" else "embedding"

        self.head: nn.Module | None = None
        if head == "fixed_linear":
            if prototypes is None:
                raise ValueError(
                    f"head 'fixed_linear' needs prototypes of shape ({num_classes}, "
                    f"{head_dim}) from a geometry; got none"
                )
            prototypes = torch.as_tensor(prototypes)
            if tuple(prototypes.shape) != (num_classes, head_dim):
                raise ValueError(
                    f"head 'fixed_linear' needs prototypes of shape (num_classes, width of "
                    f"the {where} it reads) = ({num_classes}, {head_dim}); "
                    f"got {tuple(prototypes.shape)}"
                )
            self.head = FixedLinear(prototypes)
        elif prototypes is not None:
            raise ValueError(
                f"prototypes are used only by head 'fixed_linear'; got head {head!r} "
                "(a loss that needs prototypes holds them itself)"
            )
        elif head == "linear":
            self.head = nn.Linear(head_dim, num_classes, bias=True)

    def forward(self, x: Tensor) -> NetworkOutput:
        """``x`` ``(B, C, H, W)`` or ``(B, V, C, H, W)`` → :class:`NetworkOutput`.

        Views are folded into the batch for the backbone (member ``b·V + v``, the
        order of :func:`protolib.losses.base.flatten_views`) and unfolded again, so in
        training mode batch norm sees all ``B·V`` members together.
        """
        if not isinstance(x, Tensor) or x.ndim not in (4, 5):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
            raise ValueError(f"input must have shape (B, C, H, W) or (B, V, C, H, W); got {shape}")
        lead = x.shape[:-3]
        encoded = self.backbone(x.flatten(0, 1) if x.ndim == 5 else x)
        features = self.projector(encoded)
        head_in = encoded if self.head_input == "encoder" else features
        logits = self.head(head_in) if self.head is not None else None
        if x.ndim == 5:
            features = features.unflatten(0, lead)
            logits = logits.unflatten(0, lead) if logits is not None else None
        return NetworkOutput(features, logits)

    def classifier_weight(self) -> Tensor | None:
        """The head's ``(K, head_dim)`` weight (a parameter for ``"linear"``, the fixed
        buffer for ``"fixed_linear"``), or ``None`` without a head. With
        ``head_input="encoder"`` its rows live in the backbone's space, not the
        embedding's."""
        return None if self.head is None else self.head.weight


def build_network(
    model: str,
    *,
    in_shape: Sequence[int],
    num_classes: int,
    needs: LossNeeds,
    prototypes: Tensor | Callable[[int], Tensor] | None = None,
    projector: str = "none",
    projector_dim: int = DEFAULT_PROJECTOR_DIM,
    projector_hidden: int | None = None,
    model_options: dict[str, Any] | None = None,
) -> Network:
    """The backbone ``model`` (a ``MODELS`` name or ``timm:<name>``, built with
    ``model_options``) followed by the projector and the head that ``needs.head`` asks for,
    reading what ``needs.head_input`` names.

    ``prototypes`` ``(K, d)`` become the fixed classifier when ``needs.head ==
    "fixed_linear"`` (required then) and are otherwise left to the loss. They may be
    given as a function of the embedding width ``d`` (known once the backbone is built);
    it is called exactly once, after the backbone and before the projector and head are
    built, and whatever it raises propagates.
    """
    if not isinstance(needs, LossNeeds):
        raise TypeError(f"needs must be a LossNeeds, got {type(needs).__name__}")
    backbone = build_backbone(model, in_shape=in_shape, **(model_options or {}))
    if callable(prototypes):
        prototypes = prototypes(projector_dim if projector != "none" else backbone.out_dim)
    return Network(
        backbone,
        num_classes=num_classes,
        head=needs.head,
        head_input=needs.head_input,
        prototypes=prototypes if needs.head == "fixed_linear" else None,
        projector=projector,  # type: ignore[arg-type]
        projector_dim=projector_dim,
        projector_hidden=projector_hidden,
    )
