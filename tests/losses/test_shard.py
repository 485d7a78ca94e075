"""The sharding contract of ``Loss.forward_shard`` (MATH.md §1.10): summed over the
shards, the values and the gradient of ``forward``; each contrastive shard is the loss
of its own anchors only, over the normaliser of the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protolib import LOSSES
from protolib.geometry import make_prototypes
from protolib.losses import LossInputError, Shard
from protolib.losses.multiset import anchor_weights, multiset_contrastive, normaliser

K, D, N_IMAGES = 4, 6, 6  # 6 images split into 1, 2 or 3 shards
PRIORS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
PROTOTYPES = make_prototypes("etf", K, D, seed=0, dtype=torch.float64)


def inputs(views, seed=0):
    """Unnormalised features ``(n, V, D)`` (or ``(n, D)``), logits ``(n, K)``, labels with
    a label that occurs once (with one view, an anchor without positives) and one absent."""
    g = torch.Generator().manual_seed(seed)
    shape = (N_IMAGES, views, D) if views > 1 else (N_IMAGES, D)
    features = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
    logits = torch.randn(N_IMAGES, K, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    return features, logits, labels


def assert_contract(loss, features, logits, labels, count):
    """Σ_shards of every value = ``forward``'s; the gradient (features and logits) of
    Σ_shards ``"loss"`` = ``forward``'s (float64, 1e-10)."""
    whole = loss(features, labels, logits=logits)
    shares = [
        loss.forward_shard(features, labels, logits=logits, shard=Shard(index, count))
        for index in range(count)
    ]
    assert all(set(share) == set(whole) for share in shares)
    for key, value in whole.items():
        torch.testing.assert_close(sum(s[key] for s in shares), value, rtol=1e-10, atol=1e-10)
    leaves = (features, logits)
    want = torch.autograd.grad(whole["loss"], leaves, allow_unused=True, materialize_grads=True)
    got = torch.autograd.grad(
        sum(s["loss"] for s in shares), leaves, allow_unused=True, materialize_grads=True
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return whole, shares


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("reduction", ["mean", "batch", "sum"])
@pytest.mark.parametrize(("views", "n_w"), [(1, 0), (2, 0), (3, 0), (1, 1000), (2, 3), (3, 1)])
@pytest.mark.parametrize("name", ["supcon", "bcl"])
@pytest.mark.parametrize("blockwise", ["auto", False])  # False: the dense path, own rows kept
def test_contrastive_shards_add_up_to_forward(name, views, n_w, reduction, count, blockwise):
    features, logits, labels = inputs(views, seed=views + n_w)
    loss = LOSSES.create(
        name,
        tau=0.05,
        n_w=n_w,
        prototypes=PROTOTYPES if n_w else None,
        reduction=reduction,
        blockwise=blockwise,
    )
    whole, shares = assert_contract(loss, features, logits, labels, count)
    if n_w:  # the prototype anchors are shard 0's
        assert whole["prototype_anchors"] != 0
        assert all(s["prototype_anchors"] == 0 for s in shares[1:])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_composite_and_default_shards_add_up_to_forward(count):
    """A composite (bcl + ce_la, prototypes) and the default loss (ce, the base class's
    share): the same contract."""
    features, logits, labels = inputs(2, seed=5)
    composite = LOSSES.create(
        "composite",
        parts={"bcl": {"weight": 1.0, "tau": 0.1}, "ce_la": {"weight": 0.5}},
        priors=PRIORS,
        prototypes=PROTOTYPES,
        n_w=4,
    )
    assert_contract(composite, features, logits, labels, count)
    assert_contract(LOSSES.create("ce"), features, logits, labels, count)


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "batch", "sum"])
def test_each_shard_is_its_own_anchors_over_the_global_normaliser(views, reduction):
    """Shard ``i`` of 3 is ``Σ_{a own} w_a ℓ_a / D``: ``ℓ_a`` from the dense reference
    path, its own anchors the member rows of its two images (and the prototypes on
    shard 0), ``D`` the reduction's normaliser of the whole batch — not a third of the
    loss, which the base class's share would be."""
    n_w = 2
    features, _, labels = inputs(views, seed=11)
    loss = LOSSES.create("supcon", tau=0.1, n_w=n_w, prototypes=PROTOTYPES, reduction=reduction)
    members = F.normalize(features.detach().reshape(-1, D), dim=1)
    member_labels = labels.repeat_interleave(views)
    members = torch.cat([members, PROTOTYPES])
    member_labels = torch.cat([member_labels, torch.arange(K)])
    multiplicity = torch.ones(len(member_labels), dtype=torch.float64)
    multiplicity[-K:] = n_w
    per_anchor, weight = multiset_contrastive(members, member_labels, multiplicity, tau=0.1)
    scale = normaliser(reduction, anchor_weights(member_labels, multiplicity)[1], multiplicity)
    weighted = weight * per_anchor / scale
    whole = weighted.sum()
    for index in range(3):
        share = loss.forward_shard(features, labels, shard=Shard(index, 3))
        rows = list(range(2 * views * index, 2 * views * (index + 1)))
        own = rows + (list(range(N_IMAGES * views, N_IMAGES * views + K)) if index == 0 else [])
        want = weighted[own].sum()
        assert share["loss"].item() == pytest.approx(want.item(), rel=1e-12)
        assert share["sample_anchors"].item() == pytest.approx(weighted[rows].sum().item())
        assert abs(share["loss"].item() - whole.item() / 3) > 1e-6


def test_a_batch_that_does_not_split_is_refused():
    features, _, labels = inputs(2)
    loss = LOSSES.create("supcon")
    with pytest.raises(LossInputError, match="6 samples do not split into 4 equal shards"):
        loss.forward_shard(features, labels, shard=Shard(1, 4))
