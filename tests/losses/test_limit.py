"""The large-n_w limit of prototype SupCon (MATH.md §1.5)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes
from protolib.losses import (
    SupConLimit,
    SupConLimitPaper,
    supcon_limit_loss,
    supcon_limit_paper_loss,
    supcon_loss,
)
from tests.losses.reference import loop_limit, members_of


def config(seed, n=12, d=8, K=4):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("exact", [True, False])
def test_limit_matches_explicit_loop(views, exact):
    K, d = 4, 8
    g = torch.Generator().manual_seed(views)
    features = F.normalize(torch.randn(9, views, d, generator=g, dtype=torch.float64), dim=-1)
    features = features.squeeze(1) if views == 1 else features
    labels = torch.randint(0, K, (9,), generator=g)
    prototypes = make_prototypes("minority_angles", K, d, seed=2, dtype=torch.float64)
    fn = supcon_limit_loss if exact else supcon_limit_paper_loss
    got = fn(features, labels, prototypes=prototypes, tau=0.3, reduction="sum")
    want = loop_limit(*members_of(features, labels), prototypes.numpy(), 0.3, exact=exact)
    assert got["loss"].item() == pytest.approx(want, rel=1e-12)
    assert sum(v for k, v in got.items() if k != "loss").item() == pytest.approx(want, rel=1e-12)
    mean = fn(features, labels, prototypes=prototypes, tau=0.3, reduction="mean")["loss"]
    assert mean.item() == pytest.approx(want / (9 * views), rel=1e-12)


def test_exact_false_is_the_paper_limit():
    """``supcon_limit_loss(exact=False)`` is the published limit of the explicit loop (no
    prototype-anchor term), and ``supcon_limit_paper_loss`` is exactly that call."""
    K, d = 4, 8
    g = torch.Generator().manual_seed(5)
    features = F.normalize(torch.randn(10, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, K, (10,), generator=g)
    prototypes = make_prototypes("minority_angles", K, d, seed=2, dtype=torch.float64)
    got = supcon_limit_loss(features, labels, prototypes=prototypes, tau=0.2, exact=False)
    assert set(got) == {"loss", "ce", "align"}
    members = members_of(features, labels)
    want = loop_limit(*members, prototypes.numpy(), 0.2, exact=False)
    assert got["loss"].item() == pytest.approx(want / 10, rel=1e-12)
    assert abs(want - loop_limit(*members, prototypes.numpy(), 0.2, exact=True)) > 1e-3
    paper = supcon_limit_paper_loss(features, labels, prototypes=prototypes, tau=0.2)
    assert all(torch.equal(paper[key], got[key]) for key in got)


@pytest.mark.parametrize("geometry", ["etf", "minority_angles"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_prototype_supcon_differences_converge_to_exact_limit_not_paper(geometry, tau):
    """Differences of the summed prototype SupCon between two embedding configurations
    converge, as n_w grows, to differences of supcon_limit — at rate 1/n_w — and stay a
    fixed distance away from those of supcon_limit_paper."""
    K, d = 4, 8
    labels = torch.arange(12) % K
    prototypes = make_prototypes(geometry, K, d, seed=0, dtype=torch.float64)
    h1, h2 = config(1), config(2)

    def diff(fn, **kw):
        kw = {"tau": tau, "reduction": "sum", "prototypes": prototypes, **kw}
        return (fn(h1, labels, **kw)["loss"] - fn(h2, labels, **kw)["loss"]).item()

    exact, paper = diff(supcon_limit_loss), diff(supcon_limit_paper_loss)
    assert abs(exact - paper) > 1e-2  # the two limits really differ on these configurations
    n_ws = [10, 100, 1_000, 10_000, 100_000, 1_000_000]
    errors = [abs(diff(supcon_loss, n_w=n_w) - exact) for n_w in n_ws]
    to_paper = [abs(diff(supcon_loss, n_w=n_w) - paper) for n_w in n_ws]
    # O(1/n_w) once past the pre-asymptotic range, which at τ = 0.1 reaches n_w = 100 (from
    # 100 to 1 000 the error fell 4.8× on an Intel Xeon with AVX-512, over 5× on an AMD
    # EPYC): from n_w = 1 000 on, each ×10 in n_w cuts the error ~10×
    for before, after in itertools.pairwise(errors[2:]):
        assert after < before / 5
    assert errors[-1] * n_ws[-1] == pytest.approx(errors[-2] * n_ws[-2], rel=0.1)
    assert errors[-1] < 1e-2 * abs(exact - paper)
    assert min(to_paper[4:]) > 0.9 * abs(exact - paper)


def test_limit_modules_normalise_and_match_functions():
    prototypes = make_prototypes("etf", 3, 5)
    features = torch.randn(7, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    unit = F.normalize(features, dim=-1)
    for module, fn in [
        (SupConLimit, supcon_limit_loss),
        (SupConLimitPaper, supcon_limit_paper_loss),
    ]:
        got = module(prototypes=prototypes, tau=0.1)(3 * features, labels)
        want = fn(unit, labels, prototypes=prototypes, tau=0.1)
        assert got.keys() == want.keys()
        torch.testing.assert_close(got["loss"], want["loss"])
    with pytest.raises(TypeError):
        SupConLimit()  # prototypes are required


def test_limit_gradcheck():
    prototypes = make_prototypes("etf", 3, 4, dtype=torch.float64)
    features = config(5, n=6, d=4).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 1])
    assert torch.autograd.gradcheck(
        lambda f: supcon_limit_loss(f, labels, prototypes=prototypes, tau=0.3)["loss"], (features,)
    )
