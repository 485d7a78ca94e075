"""Logit-adjusted cross-entropy (MATH.md §1.7) against an explicit loop and plain CE."""

from __future__ import annotations

import math

import pytest
import torch

from protolib import LOSSES
from protolib.losses import CrossEntropyLogitAdjusted, LossInputError, ce_la_loss, ce_loss

K = 4
PRIORS = torch.tensor([0.5, 0.25, 0.15, 0.10], dtype=torch.float64)


def batch(n=9, views=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, views, K) if views > 1 else (n, K)
    logits = 3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    return logits, torch.randint(0, K, (n,), generator=g)


def loop_ce_la(logits, labels, priors, t, *, reduction="mean"):
    """``−log softmax(z + t·log π)_y`` one member at a time, with the standard library."""
    rows, ys = logits.tolist(), labels.tolist()
    if logits.ndim == 3:  # views become members with their image's label
        rows = [view for image in rows for view in image]
        ys = [y for y in ys for _ in range(logits.shape[1])]
    total = 0.0
    for row, y in zip(rows, ys, strict=True):
        adjusted = [z + t * math.log(p) for z, p in zip(row, priors.tolist(), strict=True)]
        total += math.log(sum(math.exp(a) for a in adjusted)) - adjusted[y]
    return total if reduction == "sum" else total / len(ys)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("t", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "batch", "sum"])
def test_matches_explicit_loop(views, t, reduction):
    logits, labels = batch(views=views, seed=views)
    got = ce_la_loss(logits, labels, priors=PRIORS, t=t, reduction=reduction)["loss"]
    want = loop_ce_la(logits, labels, PRIORS, t, reduction=reduction)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert abs(got.item() - ce_loss(logits, labels, reduction=reduction)["loss"].item()) > 1e-3


def value_and_grad(fn, logits, labels):
    logits = logits.clone().requires_grad_(True)
    value = fn(logits, labels)["loss"]
    (grad,) = torch.autograd.grad(value, logits)
    return value, grad


@pytest.mark.parametrize(
    ("priors", "t"),
    [
        (PRIORS, 0.0),  # t = 0: no adjustment, whatever the priors
        (torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64), 0),
        (torch.full((K,), 0.25, dtype=torch.float64), 1.0),  # uniform priors: a constant shift
        (torch.full((K,), 0.25, dtype=torch.float64), 7.5),
    ],
)
def test_no_adjustment_is_cross_entropy(priors, t):
    logits, labels = batch(n=11, views=2, seed=5)
    want, want_grad = value_and_grad(ce_loss, logits, labels)
    module = CrossEntropyLogitAdjusted(priors=priors, t=t)
    got, grad = value_and_grad(lambda z, y: module(torch.empty(0), y, logits=z), logits, labels)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_module_holds_priors_as_a_buffer_and_reads_logits_only():
    module = LOSSES.create("ce_la", priors=PRIORS.float(), t=1.0)
    assert module.needs.head == "linear" and module.needs.priors
    assert not module.needs.normalized and module.needs.prototypes == "no"
    assert module.priors.dtype == torch.float64 and "priors" in module.state_dict()
    assert not list(module.parameters())
    assert module.to(torch.float32).priors.dtype == torch.float32
    logits, labels = batch(seed=2)
    out = module(torch.randn(9, 3), labels, logits=logits)
    assert set(out) == {"loss"}
    assert out["loss"].item() == pytest.approx(loop_ce_la(logits, labels, PRIORS, 1.0), rel=1e-6)
    with pytest.raises(LossInputError, match="needs logits"):
        module(torch.randn(9, 3), labels)


@pytest.mark.parametrize("t", [-0.5, float("nan"), float("inf"), True, "1", None])
def test_bad_t_is_refused_naming_t(t):
    with pytest.raises(LossInputError, match=r"^t \(the logit adjustment strength\) must be"):
        CrossEntropyLogitAdjusted(priors=PRIORS, t=t)
    with pytest.raises(LossInputError, match=r"^t \("):
        ce_la_loss(*batch(), priors=PRIORS, t=t)


@pytest.mark.parametrize(
    ("priors", "message"),
    [
        (None, "needs priors"),
        ([0.5, 0.5], "must be a floating tensor of shape"),
        (torch.tensor([1, 1]), "must be a floating tensor of shape"),
        (PRIORS.reshape(2, 2), "must be a floating tensor of shape"),
        (torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64), "> 0 for every class"),
        (torch.tensor([0.5, 0.5, float("nan"), 0.1]), "> 0 for every class"),
        (torch.tensor([0.5, 0.25, 0.25, 0.25]), "must sum to 1"),
    ],
)
def test_bad_priors_are_refused(priors, message):
    with pytest.raises(LossInputError, match=message):
        CrossEntropyLogitAdjusted(priors=priors)


def test_priors_must_match_the_classes():
    logits, labels = batch()
    with pytest.raises(LossInputError, match="logits have 4 classes, priors 3"):
        ce_la_loss(logits, labels, priors=torch.tensor([0.5, 0.25, 0.25]))
