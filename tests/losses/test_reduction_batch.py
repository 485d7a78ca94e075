"""The ``batch`` normalisation of the contrastive losses (MATH.md §1.9): divide by every
anchor, SupContrast's convention; ``mean`` divides by the anchors that have a positive."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes
from protolib.losses import (
    BCL,
    CrossEntropy,
    CrossEntropyFixed,
    LossInputError,
    SupCon,
    SupConLimit,
    bcl_loss,
    ce_loss,
    supcon_limit_loss,
    supcon_loss,
)
from tests.losses.reference import loop_supcontrast, members_of, replicate

LOSS_FUNCTIONS = {"supcon": (supcon_loss, False), "bcl": (bcl_loss, True)}
TAU = 0.1


def unit_batch(labels, d, *, views=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (len(labels), views, d) if views > 1 else (len(labels), d)
    features = F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)
    return features, torch.tensor(labels)


def anchor_counts(labels: list[int]) -> tuple[int, int]:
    """(anchors, anchors with a positive) of a literal batch, counted from its labels."""
    sizes = Counter(labels)
    return len(labels), sum(1 for y in labels if sizes[y] > 1)


# (labels, views, K, n_w): anchors without a positive among samples (views 1, singleton
# labels), among prototype copies (n_w = 1 and a class absent from the batch), or none
CASES = [
    ([0, 0, 1, 2, 2, 3, 4], 1, 5, 0),  # samples 1, 3, 4 have no positive
    ([0, 1, 2, 0, 1], 2, 3, 0),  # every member has its other view
    ([0, 1, 1, 3], 1, 4, 1),  # copies of the prototypes of 2 have no positive
    ([0, 2, 2], 2, 4, 3),  # every anchor has a positive
    ([1, 1, 0, 4, 4, 4, 2], 1, 5, 2),
]


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize(("labels", "views", "K", "n_w"), CASES)
def test_batch_matches_supcontrast_loop(name, labels, views, K, n_w):
    """``reduction="batch"`` equals SupContrast's masked computation on the literal batch
    (prototype copies replicated ``n_w`` times), divided by every anchor."""
    fn, class_average = LOSS_FUNCTIONS[name]
    d = 6
    features, y = unit_batch(labels, d, views=views, seed=len(labels) + n_w)
    prototypes = make_prototypes("etf", K, d, seed=2, dtype=torch.float64)
    got = fn(features, y, tau=TAU, prototypes=prototypes, n_w=n_w, reduction="batch")
    members, member_labels = replicate(*members_of(features, y), prototypes.numpy(), n_w)
    want = loop_supcontrast(members, member_labels, TAU, class_average=class_average)
    assert got["loss"].item() == pytest.approx(want, rel=1e-12)
    shares = got["sample_anchors"] + got["prototype_anchors"]
    assert shares.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize(("labels", "views", "K", "n_w"), CASES)
def test_mean_over_batch_is_anchors_over_anchors_with_a_positive(name, labels, views, K, n_w):
    """``mean / batch = #anchors / #anchors with a positive`` (1 when every anchor has one),
    the counts taken from the literal batch's labels."""
    fn, _ = LOSS_FUNCTIONS[name]
    features, y = unit_batch(labels, 6, views=views, seed=7)
    prototypes = make_prototypes("etf", K, 6, seed=2, dtype=torch.float64)
    kw = {"tau": TAU, "prototypes": prototypes, "n_w": n_w}
    mean = fn(features, y, reduction="mean", **kw)["loss"].item()
    batch = fn(features, y, reduction="batch", **kw)["loss"].item()
    total = fn(features, y, reduction="sum", **kw)["loss"].item()
    _, member_labels = replicate(*members_of(features, y), prototypes.numpy(), n_w)
    anchors, counted = anchor_counts(member_labels)
    assert batch == pytest.approx(total / anchors, rel=1e-12)
    assert mean / batch == pytest.approx(anchors / counted, rel=1e-12)
    if anchors == counted:
        assert mean == pytest.approx(batch, rel=1e-14)
    else:
        assert mean > batch


@pytest.mark.parametrize("module", [SupCon, BCL])
def test_modules_take_batch_and_keep_its_gradient(module):
    """The registered modules normalise and reduce with ``batch``; the gradient is the
    ``mean`` gradient scaled by ``#counted / #anchors``."""
    features, y = unit_batch([0, 0, 1, 2, 2, 3], 5, seed=3)
    scaled = (2.5 * features).requires_grad_(True)
    batch = module(tau=TAU, reduction="batch")(scaled, y)["loss"]
    (grad_batch,) = torch.autograd.grad(batch, scaled)
    mean = module(tau=TAU, reduction="mean")(scaled, y)["loss"]
    (grad_mean,) = torch.autograd.grad(mean, scaled)
    fn = LOSS_FUNCTIONS["bcl" if module is BCL else "supcon"][0]
    torch.testing.assert_close(batch, fn(features, y, tau=TAU, reduction="batch")["loss"])
    torch.testing.assert_close(grad_batch, grad_mean * 4 / 6, rtol=1e-12, atol=1e-15)


def test_batch_without_any_positive_is_zero():
    features, y = unit_batch([0, 1, 2, 3], 4)
    assert supcon_loss(features, y, reduction="batch")["loss"].item() == 0.0


def test_cross_entropy_batch_is_mean():
    """Every member is an anchor of cross-entropy: ``batch`` equals ``mean``."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 2, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    mean = ce_loss(logits, y)["loss"]
    assert torch.equal(ce_loss(logits, y, reduction="batch")["loss"], mean)
    assert torch.equal(CrossEntropy(reduction="batch")(None, y, logits=logits)["loss"], mean)
    prototypes = make_prototypes("etf", 4, 5, dtype=torch.float64)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64)
    fixed = CrossEntropyFixed(prototypes=prototypes, reduction="batch")(h, y)["loss"]
    assert torch.equal(fixed, CrossEntropyFixed(prototypes=prototypes)(h, y)["loss"])


def test_limit_losses_refuse_batch():
    """In the large-``n_w`` limit every member has a positive and the prototype anchors
    grow without bound: ``batch`` is refused there, with the reason."""
    prototypes = make_prototypes("etf", 3, 4, dtype=torch.float64)
    features, y = unit_batch([0, 1, 2], 4)
    with pytest.raises(LossInputError, match=r"mean, sum; got 'batch' \('batch' has no"):
        supcon_limit_loss(features, y, prototypes=prototypes, reduction="batch")
    with pytest.raises(LossInputError, match="'batch' has no large-n_w limit"):
        SupConLimit(prototypes=prototypes, reduction="batch")
    with pytest.raises(LossInputError, match=r"one of mean, batch, sum; got 'Batch'"):
        supcon_loss(features, y, reduction="Batch")
