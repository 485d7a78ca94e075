"""SupCon and BCL against explicit-loop references (MATH.md §1.3, §1.4, §1.6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from protolib.geometry import make_prototypes
from protolib.losses import BCL, LossInputError, SupCon, bcl_loss, supcon_loss
from tests.losses.reference import loop_supcon, members_of, replicate

LOSS_FUNCTIONS = {"supcon": (supcon_loss, False), "bcl": (bcl_loss, True)}


def random_batch(n, d, K, *, views=1, seed=0, dtype=torch.float64, duplicates=0):
    """Unit features (n, d) or (n, V, d) with labels in 0..K-1; ``duplicates`` rows are
    exact copies of earlier rows with the same label (an index drawn twice)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, views, d) if views > 1 else (n, d)
    features = F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, K, (n,), generator=g)
    for k in range(duplicates):
        features[n - 1 - k] = features[k]
        labels[n - 1 - k] = labels[k]
    return features.to(dtype), labels


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_explicit_loop(name, views, dtype, reduction):
    fn, class_average = LOSS_FUNCTIONS[name]
    # 13 images, 6 labels: with one view some labels occur once (anchors without
    # positives); two duplicated images; τ = 0.05 as in the spec
    features, labels = random_batch(13, 8, 6, views=views, seed=views, dtype=dtype, duplicates=2)
    if views == 1:
        assert len(set(labels.tolist())) < 13 and min(np.bincount(labels.numpy())) <= 1
    got = fn(features, labels, tau=0.05, reduction=reduction)["loss"]
    members, member_labels = members_of(features, labels)
    want = loop_supcon(
        members, member_labels, 0.05, reduction=reduction, class_average=class_average
    )
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert got.dtype == dtype
    assert got.item() == pytest.approx(want, rel=tol, abs=tol)


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize(
    ("n_w", "K", "labels"),
    [
        (1, 3, [0, 0, 1, 1, 2, 2]),
        (2, 4, [0, 1, 2, 3, 0]),  # every sample alone among samples: positives only via prototypes
        (5, 3, [1, 1, 1, 1]),  # classes absent from the batch
        (3, 5, [4, 0, 4, 2, 2, 2, 1]),
        (7, 2, [0, 1]),
    ],
)
def test_prototypes_equal_explicit_loop_on_replicated_batch(name, n_w, K, labels):
    fn, class_average = LOSS_FUNCTIONS[name]
    d = 6
    features, _ = random_batch(len(labels), d, K, seed=n_w)
    labels = torch.tensor(labels)
    prototypes = make_prototypes("etf", K, d, seed=1, dtype=torch.float64)
    got = fn(features, labels, tau=0.05, prototypes=prototypes, n_w=n_w, reduction="sum")
    members, member_labels = replicate(*members_of(features, labels), prototypes.numpy(), n_w)
    want = loop_supcon(members, member_labels, 0.05, reduction="sum", class_average=class_average)
    assert got["loss"].item() == pytest.approx(want, rel=1e-12)
    assert (got["sample_anchors"] + got["prototype_anchors"]).item() == pytest.approx(
        want, rel=1e-12
    )


@pytest.mark.parametrize("n_w", [0, 3])
def test_class_average_option_is_bcl(n_w):
    """``supcon_loss(class_average=True)`` is the class-averaged loss of the explicit loop
    (with and without prototypes), and ``bcl_loss`` is exactly that call."""
    features, labels = random_batch(9, 6, 3, views=2, seed=4)
    prototypes = make_prototypes("etf", 3, 6, seed=1, dtype=torch.float64)
    got = supcon_loss(features, labels, tau=0.1, prototypes=prototypes, n_w=n_w, class_average=True)
    members, member_labels = replicate(*members_of(features, labels), prototypes.numpy(), n_w)
    want = loop_supcon(members, member_labels, 0.1, class_average=True)
    assert got["loss"].item() == pytest.approx(want, rel=1e-12)
    plain = loop_supcon(members, member_labels, 0.1, class_average=False)
    assert abs(want - plain) > 1e-3  # the option changes the loss on this batch
    bcl = bcl_loss(features, labels, tau=0.1, prototypes=prototypes, n_w=n_w)
    assert all(torch.equal(bcl[key], got[key]) for key in got)


def literal(fn, features, labels, prototypes, n_w, **kw):
    """The loss on the literally replicated batch (prototype copies as ordinary members)."""
    K, d = prototypes.shape
    flat = features.reshape(-1, d)
    flat_labels = labels.repeat_interleave(features.shape[1]) if features.ndim == 3 else labels
    members = torch.cat([flat, prototypes.repeat_interleave(n_w, dim=0)])
    member_labels = torch.cat([flat_labels, torch.arange(K).repeat_interleave(n_w)])
    return fn(members, member_labels, **kw)["loss"]


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 24),
    K=st.integers(2, 7),
    n_w=st.integers(0, 30),
    views=st.integers(1, 3),
    geometry=st.sampled_from(["etf", "orthonormal"]),
    seed=st.integers(0, 2**16),
)
def test_prototypes_equal_literal_replication(name, reduction, n, K, n_w, views, geometry, seed):
    fn = LOSS_FUNCTIONS[name][0]
    d = K + 1
    features, labels = random_batch(n, d, K, views=views, seed=seed)
    prototypes = make_prototypes(geometry, K, d, seed=seed, dtype=torch.float64)
    features.requires_grad_(True)
    kw = {"tau": 0.1, "reduction": reduction}
    fast = fn(features, labels, prototypes=prototypes, n_w=n_w, **kw)["loss"]
    (grad_fast,) = torch.autograd.grad(fast, features)
    slow = literal(fn, features, labels, prototypes, n_w, **kw)
    (grad_slow,) = torch.autograd.grad(slow, features)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize("n_w", [0, 3])
def test_gradcheck(name, n_w):
    fn = LOSS_FUNCTIONS[name][0]
    features, labels = random_batch(6, 4, 3, views=2, seed=3)
    prototypes = make_prototypes("etf", 3, 4, seed=0, dtype=torch.float64)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: fn(f, labels, tau=0.2, prototypes=prototypes, n_w=n_w)["loss"], (features,)
    )


def test_no_gradient_into_prototypes():
    features, labels = random_batch(8, 5, 3)
    prototypes = make_prototypes("etf", 3, 5, dtype=torch.float64).requires_grad_(True)
    supcon_loss(features.requires_grad_(True), labels, prototypes=prototypes, n_w=4)[
        "loss"
    ].backward()
    assert prototypes.grad is None and features.grad is not None


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
@pytest.mark.parametrize("n_w", [0, 10])
def test_identical_features_small_tau_are_finite(name, n_w):
    fn = LOSS_FUNCTIONS[name][0]
    row = F.normalize(torch.randn(16), dim=0)
    features = row.repeat(64, 2, 1).float().requires_grad_(True)  # every member identical
    labels = torch.arange(64) % 4
    prototypes = make_prototypes("etf", 4, 16)
    out = fn(features, labels, tau=0.05, prototypes=prototypes, n_w=n_w)
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.isfinite(features.grad).all()
    if n_w == 0 and name == "supcon":
        # all similarities equal: ℓ_i = log(N − 1) for every anchor, in closed form
        assert out["loss"].item() == pytest.approx(np.log(127), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
def test_batch_without_positives_has_zero_loss_and_gradient(name):
    fn = LOSS_FUNCTIONS[name][0]
    features, _ = random_batch(5, 4, 5)
    features.requires_grad_(True)
    out = fn(features, torch.arange(5))
    out["loss"].backward()
    assert out["loss"].item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))
    single = fn(features[:1], torch.tensor([0]))  # a batch of one member
    assert single["loss"].item() == 0.0


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
def test_unnormalised_inputs_rejected_by_function_normalised_by_module(name):
    fn, _ = LOSS_FUNCTIONS[name]
    module = {"supcon": SupCon, "bcl": BCL}[name](tau=0.07)
    features, labels = random_batch(10, 6, 3, views=2, dtype=torch.float32)
    scaled = features * 3.0
    with pytest.raises(LossInputError, match="unit-norm rows"):
        fn(scaled, labels)
    torch.testing.assert_close(
        module(scaled, labels)["loss"], fn(features, labels, tau=0.07)["loss"]
    )


def test_module_with_prototypes_matches_function_and_carries_buffer():
    prototypes = make_prototypes("etf", 3, 6)
    module = SupCon(tau=0.1, n_w=10, prototypes=prototypes)
    assert "prototypes" in module.state_dict()
    assert module.to(torch.float64).prototypes.dtype == torch.float64
    features, labels = random_batch(9, 6, 3)
    torch.testing.assert_close(
        module(features, labels)["loss"],
        supcon_loss(features, labels, prototypes=prototypes.double(), n_w=10)["loss"],
    )


def test_half_precision_inputs_are_computed_in_float32():
    features, labels = random_batch(12, 8, 3, dtype=torch.float32)
    out = supcon_loss(features.to(torch.bfloat16), labels, tau=0.05)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(
        supcon_loss(features, labels, tau=0.05)["loss"].item(), rel=2e-2
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, "tau must be a positive number"),
        ({"reduction": "max"}, "reduction must be one of mean, batch, sum"),
        ({"n_w": -1}, "n_w must be a non-negative integer"),
        ({"n_w": 2.5}, "n_w must be a non-negative integer"),
        ({"n_w": 3}, "needs prototypes"),
        (
            {"n_w": 3, "prototypes": torch.eye(2, 6, dtype=torch.float64)},
            r"labels must lie in 0\.\.1",
        ),
        (
            {"n_w": 3, "prototypes": torch.eye(3, 5, dtype=torch.float64)},
            r"prototypes must have shape \(K, 6\)",
        ),
        (
            {"n_w": 3, "prototypes": 2 * torch.eye(3, 6, dtype=torch.float64)},
            "prototypes must have unit-norm",
        ),
    ],
)
def test_bad_arguments_have_clear_errors(kwargs, message):
    features, labels = random_batch(6, 6, 3)
    with pytest.raises(LossInputError, match=message):
        supcon_loss(features, labels, **kwargs)


def test_bad_shapes_have_clear_errors():
    features, labels = random_batch(6, 6, 3)
    with pytest.raises(LossInputError, match=r"labels must be an int64 tensor of shape \(6,\)"):
        supcon_loss(features, labels.int())
    with pytest.raises(LossInputError, match=r"shape \(n, d\) or \(n, V, d\)"):
        supcon_loss(features[0], labels)
    with pytest.raises(LossInputError, match="needs prototypes"):
        SupCon(n_w=4)
