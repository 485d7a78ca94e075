"""Cross-entropy with trainable and fixed classifiers (MATH.md §1.1–1.2)."""

from __future__ import annotations

import math

import pytest
import torch

from protolib.geometry import make_prototypes
from protolib.losses import CrossEntropy, CrossEntropyFixed, LossInputError, ce_fix_loss, ce_loss


def loop_ce(logits, labels):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(labels)


def test_ce_matches_loop_and_views():
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(7, 2, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,), generator=g)
    flat = torch.cat([logits[:, 0], logits[:, 1]])
    want = loop_ce(flat, torch.cat([labels, labels]))
    assert ce_loss(logits, labels)["loss"].item() == pytest.approx(want, rel=1e-12)
    assert ce_loss(logits[:, 0], labels, reduction="sum")["loss"].item() == pytest.approx(
        7 * loop_ce(logits[:, 0], labels), rel=1e-12
    )


def test_ce_fix_uses_fixed_classifier_without_gradient():
    W = make_prototypes("etf", 4, 6, dtype=torch.float64).requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (9,), generator=g)
    out = ce_fix_loss(h, labels, classifier=W)
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(
        loop_ce(h.detach() @ W.detach().T, labels), rel=1e-12
    )
    assert W.grad is None and h.grad is not None
    module = CrossEntropyFixed(prototypes=W.detach())
    torch.testing.assert_close(module(h, labels)["loss"], out["loss"])
    torch.testing.assert_close(module(h, labels, logits=h @ W.detach().T)["loss"], out["loss"])


def test_errors():
    with pytest.raises(LossInputError, match="needs logits"):
        CrossEntropy()(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(LossInputError, match=r"classifier must have shape \(K, 4\)"):
        ce_fix_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), classifier=torch.randn(3, 5))
    with pytest.raises(LossInputError, match="reduction must be one of"):
        CrossEntropy(reduction="none")
