"""Every registered loss, through the registry: the contract a training loop relies on."""

from __future__ import annotations

import pytest
import torch

from protolib import LOSSES
from protolib.geometry import make_prototypes
from protolib.losses import Composite, Loss, LossNeeds

K, D = 4, 8
#: the options a loss cannot be built without (a composite's parts)
OPTIONS = {"composite": {"parts": {"bcl": {"tau": 0.2}, "ce_la": {"weight": 0.5}}}}
PRIORS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


def build(name):
    """``name`` built as a training run builds it: its needs (``needs_for`` its options)
    say which of prototypes, ``n_w`` and priors it receives."""
    options = dict(OPTIONS.get(name, {}))
    needs = LOSSES.get(name).needs_for(options)
    if needs.prototypes != "no":
        options["prototypes"] = make_prototypes("etf", K, D)
    if needs.prototypes == "optional":
        options["n_w"] = 5
    if needs.priors:
        options["priors"] = PRIORS
    loss = LOSSES.create(name, **options)
    assert loss.needs == needs
    return loss


def forward(loss, features, labels, head):
    logits = features @ head.T if loss.needs.head != "none" else None
    return loss(features, labels, logits=logits)


@pytest.mark.parametrize("name", LOSSES.names())
def test_contract_and_descent(name):
    loss = build(name)
    assert isinstance(loss, Loss) and isinstance(type(loss).needs, LossNeeds)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(32, 2, D, generator=g, requires_grad=True)
    labels = torch.arange(32) % K
    head = loss.prototypes if loss.needs.head == "fixed_linear" else torch.randn(K, D, generator=g)
    out = forward(loss, features, labels, head)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    components = {k: v for k, v in out.items() if k != "loss"}
    assert all(not v.requires_grad and v.ndim == 0 for v in components.values())
    if isinstance(loss, Composite):  # each part's unweighted value; the total weighted
        total = sum(loss.weights[name] * value for name, value in components.items())
        torch.testing.assert_close(total, out["loss"].detach())
    elif components:
        torch.testing.assert_close(sum(components.values()), out["loss"].detach())
    # gradient descent on free features lowers every loss
    optimizer = torch.optim.SGD([features], lr=0.5)
    first = out["loss"].item()
    for _ in range(20):
        optimizer.zero_grad()
        value = forward(loss, features, labels, head)["loss"]
        value.backward()
        assert torch.isfinite(features.grad).all()
        optimizer.step()
    assert forward(loss, features, labels, head)["loss"].item() < first - 1e-3


@pytest.mark.parametrize("name", LOSSES.names())
def test_buffers_move_and_round_trip(name):
    loss = build(name).to(torch.float64)
    for buffer in ("parts.ce_la.priors", "priors"):
        if buffer in loss.state_dict():
            assert loss.state_dict()[buffer].dtype == torch.float64
    if loss.prototypes is not None:
        assert loss.prototypes.dtype == torch.float64
        state = loss.state_dict()
        clone = build(name)
        clone.load_state_dict(state)
        torch.testing.assert_close(clone.prototypes.double(), loss.prototypes)


def test_every_head_a_loss_asks_for_is_a_known_kind():
    """The head kinds are defined once (``protolib.losses.base.HEAD_KINDS``, from the type
    of ``LossNeeds.head``); every registered loss asks for one of them, and all are used."""
    from typing import get_type_hints

    from protolib.losses.base import HEAD_KINDS, HeadKind

    assert get_type_hints(LossNeeds)["head"] == HeadKind
    assert HEAD_KINDS == ("none", "linear", "fixed_linear")
    assert {LOSSES.get(name).needs.head for name in LOSSES.names()} == set(HEAD_KINDS)
