"""Composite losses ``L = Σ_j α_j L_j`` over registered losses (MATH.md §1.8).

    loss: composite
    loss_options: {parts: {bcl: {weight: 1.0, tau: 0.1}, ce_la: {weight: 0.5, t: 1.0}}}

Each part reads what it declares: contrastive parts (``head="none"``) the features (the
projector's output), classifier parts the logits of the one head. The total is returned
as ``"loss"`` and every part's unweighted value under the part's name, so the training
loop logs ``train/loss.<part>``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from protolib.losses.base import (
    Loss,
    LossInputError,
    LossNeeds,
    Reduction,
    Shard,
    check_n_w,
    check_reduction,
)
from protolib.registry import LOSSES, RegistryError

#: the composite's own name: not a part
NAME = "composite"
#: options of a part that the run supplies (from its geometry, n_w and training labels)
SUPPLIED = ("prototypes", "n_w", "priors")
#: the composite's loss_options
OPTIONS = ("parts", "reduction")
_STRENGTH = {"no": 0, "optional": 1, "yes": 2}


def _part_needs(name: str, options: Mapping[str, Any]) -> LossNeeds:
    factory = LOSSES.get(name)
    needs_for = getattr(factory, "needs_for", None)
    return needs_for(options) if needs_for is not None else factory.needs


def _check_weight(name: str, weight: Any) -> float:
    if (
        not isinstance(weight, int | float)
        or isinstance(weight, bool)
        or not math.isfinite(weight)
        or not weight > 0
    ):
        raise LossInputError(f"parts.{name}.weight must be a finite number > 0, got {weight!r}")
    return float(weight)


def parse_parts(parts: Any) -> dict[str, tuple[float, dict[str, Any], LossNeeds]]:
    """``parts`` → ``{name: (weight α, the part's own options, its needs)}``.

    Raises :class:`LossInputError` naming ``parts`` or ``parts.<name>`` when ``parts`` is
    not a non-empty mapping, a name is not a registered loss (or is ``composite``), a
    part's options are not a mapping, set an option the run supplies (``prototypes``,
    ``n_w``, ``priors``) or one the loss does not take, or its ``weight`` is not a finite
    number ``> 0``. Nothing is built.
    """
    if not isinstance(parts, Mapping) or not parts:
        raise LossInputError(
            "parts must be a non-empty mapping {loss name: {weight: α, ...its options}}, "
            f"got {parts!r}"
        )
    parsed: dict[str, tuple[float, dict[str, Any], LossNeeds]] = {}
    for name, spec in parts.items():
        if name == NAME or name == "loss":
            raise LossInputError(f"parts.{name}: a part may not be {name!r}; name another loss")
        try:
            factory = LOSSES.get(name)
        except RegistryError as error:
            raise LossInputError(f"parts.{name}: {error}") from None
        if not isinstance(spec, Mapping):
            raise LossInputError(
                f"parts.{name} must be a mapping of the loss's options (and weight), got {spec!r}"
            )
        options = {k: v for k, v in spec.items() if k != "weight"}
        weight = _check_weight(name, spec.get("weight", 1.0))
        supplied = sorted(set(options) & set(SUPPLIED))
        if supplied:
            raise LossInputError(
                f"parts.{name}.{supplied[0]} may not be set: the run supplies it "
                "(n_w and geometry keys; priors from the training labels)"
            )
        _check_accepted(name, factory, options)
        try:
            needs = _part_needs(name, options)
        except LossInputError as error:
            raise LossInputError(f"parts.{name}: {error}") from None
        parsed[name] = (weight, options, needs)
    return parsed


def _check_accepted(name: str, factory: Any, options: Mapping[str, Any]) -> None:
    """Refuse options the part's constructor does not take (nothing is called)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature: the constructor decides
        return
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return
    accepted = [
        p.name
        for p in parameters
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in SUPPLIED
    ]
    for option in options:
        if option not in accepted:
            raise LossInputError(
                f"parts.{name}.{option}: loss {name!r} does not take {option!r}; "
                f"its options: weight, {', '.join(accepted) or '(none)'}"
            )


def combined_needs(needs: list[LossNeeds]) -> LossNeeds:
    """The needs of a sum of losses with ``needs``: one head (``linear`` if any part needs
    it, else ``fixed_linear`` if any, else none; both together are refused), the head over
    the encoder when a ``linear`` head is shared with a part that reads the features,
    normalised if any part is, the strongest prototype use, priors if any part takes them.
    """
    heads = {n.head for n in needs}
    if {"linear", "fixed_linear"} <= heads:
        raise LossInputError(
            "parts: a part with a trainable linear head and a part with a fixed one "
            "cannot share the network's single head; keep one kind"
        )
    head = "linear" if "linear" in heads else "fixed_linear" if "fixed_linear" in heads else "none"
    # a fixed head is the prototypes, which live in the embedding space: it stays there
    reads_features = "none" in heads
    head_input = "encoder" if head == "linear" and reads_features else "embedding"
    return LossNeeds(
        head=head,  # type: ignore[arg-type]
        normalized=any(n.normalized for n in needs),
        prototypes=max((n.prototypes for n in needs), key=_STRENGTH.__getitem__),
        priors=any(n.priors for n in needs),
        head_input=head_input,  # type: ignore[arg-type]
    )


@LOSSES.register(NAME)
class Composite(Loss):
    """``Σ_j α_j L_j`` over registered losses (MATH.md §1.8); see the module docstring.

    Args:
        parts: ``{loss name: {"weight": α (default 1.0), ...that loss's options}}``.
        prototypes: ``(K, d)`` fixed prototypes, passed to the parts that use prototypes.
        n_w: prototype copies, passed to the parts whose prototypes are ``"optional"``.
        priors: ``(K,)`` class frequencies, passed to the parts that take priors.
        reduction: when set, the reduction of every part that does not set its own.

    The parts are submodules (``parts[name]``), so ``.to()`` and ``state_dict`` carry
    their buffers. The instance's ``needs`` are :meth:`needs_for` of its options.
    """

    needs = LossNeeds()  # of the class only: a composite's needs come from needs_for

    def __init__(
        self,
        *,
        parts: Mapping[str, Mapping[str, Any]],
        prototypes: Tensor | None = None,
        n_w: int = 0,
        priors: Tensor | None = None,
        reduction: Reduction | None = None,
    ) -> None:
        if reduction is not None:
            check_reduction(reduction)
        n_w = check_n_w(n_w)
        parsed = parse_parts(parts)
        needs = combined_needs([part_needs for _, _, part_needs in parsed.values()])
        if n_w > 0 and needs.prototypes != "optional":
            raise LossInputError(
                f"n_w={n_w} but no part of this composite takes n_w (prototype copies); "
                "set n_w to 0"
            )
        super().__init__()
        self.needs = needs  # type: ignore[misc]
        self.weights: dict[str, float] = {}
        self.parts = nn.ModuleDict()
        for name, (weight, options, part_needs) in parsed.items():
            kwargs = dict(options)
            if reduction is not None:
                kwargs.setdefault("reduction", reduction)
            if part_needs.prototypes != "no":
                kwargs["prototypes"] = prototypes
            if part_needs.prototypes == "optional":
                kwargs["n_w"] = n_w
            if part_needs.priors:
                kwargs["priors"] = priors
            try:
                self.parts[name] = LOSSES.create(name, **kwargs)
            except (TypeError, ValueError) as error:
                raise LossInputError(f"parts.{name}: {error}") from None
            self.weights[name] = weight

    @classmethod
    def needs_for(cls, options: Mapping[str, Any]) -> LossNeeds:
        """The needs of a composite with ``options`` (its ``loss_options``), from its parts
        (:func:`combined_needs`); refuses bad ``parts``, unknown options and the options
        the run supplies (``prototypes``, ``n_w``, ``priors``) with a
        :class:`LossInputError` naming ``parts.<name>`` or the option, building nothing.
        ``options`` are the user's ``loss_options``, not the constructor's keywords."""
        if not isinstance(options, Mapping):
            raise LossInputError(f"loss_options must be a mapping, got {options!r}")
        supplied = sorted(set(options) & set(SUPPLIED))
        if supplied:
            raise LossInputError(
                f"loss_options may not set {supplied[0]}: the run supplies it "
                "(n_w and geometry keys; priors from the training labels)"
            )
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise LossInputError(
                f"composite does not take the option {unknown[0]!r}; its options: "
                f"{', '.join(OPTIONS)}"
            )
        if "parts" not in options:
            raise LossInputError(
                "composite needs parts: {loss name: {weight: α, ...its options}}, at least one"
            )
        if options.get("reduction") is not None:
            check_reduction(options["reduction"])
        parsed = parse_parts(options["parts"])
        return combined_needs([part_needs for _, _, part_needs in parsed.values()])

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": Σ α_j L_j, <part>: L_j (unweighted, detached) for each part}``."""
        return self._combine(lambda part: part(features, labels, logits=logits)["loss"])

    def forward_shard(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None, shard: Shard
    ) -> dict[str, Tensor]:
        """This process's share of :meth:`forward` (MATH.md §1.10): ``Σ α_j`` of each
        part's :meth:`~protolib.losses.base.Loss.forward_shard`, and each part's share
        (unweighted, detached) under its name; summed over the shards, :meth:`forward`."""
        return self._combine(
            lambda part: part.forward_shard(features, labels, logits=logits, shard=shard)["loss"]
        )

    def _combine(self, value_of: Callable[[Loss], Tensor]) -> dict[str, Tensor]:
        """``{"loss": Σ α_j value_of(part_j), <part>: value_of(part_j) detached}``."""
        total: Tensor | None = None
        components: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            value = value_of(part)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            components[name] = value.detach()
        assert total is not None  # parse_parts refuses an empty composite
        return {"loss": total, **components}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={weight}" for name, weight in self.weights.items())
