"""Composite losses ``Σ_j α_j L_j`` (MATH.md §1.8): values, gradients, logged components,
needs as a function of the parts, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protolib import LOSSES
from protolib.geometry import make_prototypes
from protolib.losses import (
    CrossEntropy,
    Loss,
    LossInputError,
    LossNeeds,
    bcl_loss,
    ce_fix_loss,
    ce_la_loss,
    ce_loss,
    supcon_limit_loss,
    supcon_loss,
)
from protolib.losses.composite import Composite

K, D = 4, 6
PRIORS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
PROTOTYPES = make_prototypes("etf", K, D, seed=0, dtype=torch.float64)


def inputs(n=10, views=2, seed=0):
    """Unnormalised features ``(n, V, D)`` and logits ``(n, V, K)`` that need gradients."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, views, D, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(n, views, K, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % K
    return features.requires_grad_(True), logits.requires_grad_(True), labels


def assert_same_gradients(got, want, *leaves):
    """``got`` and ``want`` have the same gradients w.r.t. every leaf (float64, 1e-12)."""
    got_grads = torch.autograd.grad(got, leaves, retain_graph=True)
    want_grads = torch.autograd.grad(want, leaves, retain_graph=True)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_bcl_plus_ce_la_is_the_weighted_sum_of_its_parts():
    """The brief's example: each component logged unweighted, the total weighted;
    values and gradients against the parts' own functions (float64)."""
    features, logits, labels = inputs()
    parts = {"bcl": {"weight": 1.0, "tau": 0.1}, "ce_la": {"weight": 0.5, "t": 1.0}}
    loss = LOSSES.create("composite", parts=parts, priors=PRIORS)
    out = loss(features, labels, logits=logits)
    assert list(out) == ["loss", "bcl", "ce_la"]
    bcl = bcl_loss(F.normalize(features, dim=-1), labels, tau=0.1)["loss"]
    ce_la = ce_la_loss(logits, labels, priors=PRIORS, t=1.0)["loss"]
    assert out["bcl"].item() == pytest.approx(bcl.item(), rel=1e-12)
    assert out["ce_la"].item() == pytest.approx(ce_la.item(), rel=1e-12)
    assert not out["bcl"].requires_grad and not out["ce_la"].requires_grad
    want = bcl + 0.5 * ce_la
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-12)
    assert_same_gradients(out["loss"], want, features, logits)


def test_prototypes_n_w_and_priors_go_to_exactly_the_parts_that_take_them():
    features, logits, labels = inputs(seed=1)
    parts = {"supcon": {"tau": 0.2}, "ce": {"weight": 0.3}, "ce_la": {"weight": 2.0, "t": 0.5}}
    loss = Composite(parts=parts, prototypes=PROTOTYPES, n_w=3, priors=PRIORS)
    assert loss.parts["supcon"].n_w == 3
    assert torch.equal(loss.parts["supcon"].prototypes, PROTOTYPES)
    assert loss.parts["ce"].prototypes is None and loss.parts["ce_la"].prototypes is None
    assert torch.equal(loss.parts["ce_la"].priors, PRIORS)
    out = loss(features, labels, logits=logits)
    supcon = supcon_loss(
        F.normalize(features, dim=-1), labels, tau=0.2, prototypes=PROTOTYPES, n_w=3
    )["loss"]
    ce = ce_loss(logits, labels)["loss"]
    ce_la = ce_la_loss(logits, labels, priors=PRIORS, t=0.5)["loss"]
    want = supcon + 0.3 * ce + 2.0 * ce_la
    assert [out[k].item() for k in ("supcon", "ce", "ce_la")] == pytest.approx(
        [supcon.item(), ce.item(), ce_la.item()], rel=1e-12
    )
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-12)
    assert_same_gradients(out["loss"], want, features, logits)


def test_fixed_classifier_and_limit_parts_share_the_prototypes():
    features, _, labels = inputs(seed=2)
    fixed_logits = features @ PROTOTYPES.T  # what a head fixed to the prototypes gives
    parts = {"supcon_limit": {"tau": 0.5, "weight": 0.25}, "ce_fix": {}}
    loss = Composite(parts=parts, prototypes=PROTOTYPES)
    out = loss(features, labels, logits=fixed_logits)
    limit = supcon_limit_loss(F.normalize(features, dim=-1), labels, prototypes=PROTOTYPES, tau=0.5)
    ce_fix = ce_fix_loss(features, labels, classifier=PROTOTYPES)["loss"]
    assert out["supcon_limit"].item() == pytest.approx(limit["loss"].item(), rel=1e-12)
    assert out["ce_fix"].item() == pytest.approx(ce_fix.item(), rel=1e-12)
    want = 0.25 * limit["loss"] + ce_fix
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-12)
    assert_same_gradients(out["loss"], want, features)


def test_parts_are_submodules_that_move_and_round_trip():
    parts = {"supcon": {}, "ce_la": {}}
    loss = Composite(parts=parts, prototypes=PROTOTYPES.float(), n_w=2, priors=PRIORS)
    assert isinstance(loss, Loss)
    state = loss.to(torch.float64).state_dict()
    assert set(state) == {"parts.supcon.prototypes", "parts.ce_la.priors"}
    assert state["parts.supcon.prototypes"].dtype == torch.float64
    other = make_prototypes("orthonormal", K, D, seed=1)
    clone = Composite(parts=parts, prototypes=other, n_w=2, priors=PRIORS.flip(0))
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.parts["supcon"].prototypes.double(), PROTOTYPES)
    torch.testing.assert_close(clone.parts["ce_la"].priors, PRIORS)


def test_reduction_is_the_default_of_parts_that_do_not_set_theirs():
    loss = Composite(parts={"supcon": {}, "bcl": {"reduction": "sum"}, "ce": {}}, reduction="batch")
    assert [p.reduction for p in loss.parts.values()] == ["batch", "sum", "batch"]
    assert [p.reduction for p in Composite(parts={"supcon": {}}).parts.values()] == ["mean"]


NEEDS = [
    # parts → (head, normalized, prototypes, priors, head_input)
    ({"bcl": {}, "ce_la": {}}, ("linear", True, "optional", True, "encoder")),
    ({"supcon": {}, "ce": {}}, ("linear", True, "optional", False, "encoder")),
    ({"ce": {}, "ce_la": {"weight": 2}}, ("linear", False, "no", True, "embedding")),
    ({"supcon": {}, "bcl": {}}, ("none", True, "optional", False, "embedding")),
    ({"supcon": {}, "supcon_limit": {}}, ("none", True, "yes", False, "embedding")),
    ({"ce_fix": {}}, ("fixed_linear", False, "yes", False, "embedding")),
    # a fixed classifier is the prototypes, which live in the embedding space
    ({"supcon": {}, "ce_fix": {}}, ("fixed_linear", True, "yes", False, "embedding")),
    ({"ce": {}}, ("linear", False, "no", False, "embedding")),
]


@pytest.mark.parametrize(("parts", "expected"), NEEDS)
def test_needs_are_a_function_of_the_parts(parts, expected):
    fields = ("head", "normalized", "prototypes", "priors", "head_input")
    needs = LOSSES.get("composite").needs_for({"parts": parts})
    assert needs == LossNeeds(**dict(zip(fields, expected, strict=True)))
    options = {"prototypes": PROTOTYPES, "priors": PRIORS}
    assert Composite(parts=parts, **options).needs == needs  # the instance's own needs


def test_other_losses_needs_do_not_depend_on_options():
    for name in LOSSES.names():
        if name != "composite":
            cls = LOSSES.get(name)
            assert cls.needs_for({"tau": 0.3}) is cls.needs
    assert CrossEntropy.needs_for({}) == LossNeeds(head="linear")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "composite needs parts"),
        ({"parts": {}}, "parts must be a non-empty mapping"),
        ({"parts": ["ce"]}, "parts must be a non-empty mapping"),
        ({"parts": {"supcn": {}}}, r"^parts\.supcn: unknown loss 'supcn'.*did you mean 'supcon'"),
        ({"parts": {"composite": {"parts": {"ce": {}}}}}, r"^parts\.composite: a part may not"),
        ({"parts": {"ce": 1.0}}, r"^parts\.ce must be a mapping"),
        ({"parts": {"ce": None}}, r"^parts\.ce must be a mapping"),
        ({"parts": {"ce": {"weight": 0}}}, r"^parts\.ce\.weight must be a finite number > 0"),
        ({"parts": {"ce": {"weight": -1.0}}}, r"^parts\.ce\.weight must be"),
        ({"parts": {"ce": {"weight": float("nan")}}}, r"^parts\.ce\.weight must be"),
        ({"parts": {"ce": {"weight": float("inf")}}}, r"^parts\.ce\.weight must be"),
        ({"parts": {"ce": {"weight": True}}}, r"^parts\.ce\.weight must be"),
        ({"parts": {"ce": {"weight": "1"}}}, r"^parts\.ce\.weight must be"),
        ({"parts": {"ce": {"tau": 0.1}}}, r"^parts\.ce\.tau: loss 'ce' does not take 'tau'"),
        ({"parts": {"supcon": {"n_w": 3}}}, r"^parts\.supcon\.n_w may not be set"),
        ({"parts": {"ce_la": {"priors": [1.0]}}}, r"^parts\.ce_la\.priors may not be set"),
        ({"parts": {"ce": {}, "ce_fix": {}}}, "cannot share the network's single head"),
        ({"parts": {"ce": {}}, "weights": {}}, "composite does not take the option 'weights'"),
        ({"parts": {"ce": {}}, "reduction": "avg"}, "reduction must be one of"),
        ({"parts": {"ce_la": {}}, "priors": [1.0]}, "loss_options may not set priors"),
        ({"parts": {"supcon": {}}, "n_w": 3}, "loss_options may not set n_w"),
    ],
)
def test_bad_parts_are_refused_before_anything_is_built(options, message):
    with pytest.raises(LossInputError, match=message):
        LOSSES.get("composite").needs_for(options)
    if "parts" in options and set(options) <= {"parts", "reduction"}:
        with pytest.raises(LossInputError, match=message):
            Composite(**options, prototypes=PROTOTYPES, priors=PRIORS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parts": {"bcl": {"tau": -1}}}, r"^parts\.bcl: temperature tau must be a positive"),
        ({"parts": {"ce_la": {}}}, r"^parts\.ce_la: loss 'ce_la' needs priors"),
        ({"parts": {"ce_fix": {}}}, r"^parts\.ce_fix: loss 'ce_fix' needs prototypes"),
        ({"parts": {"supcon_limit": {}}, "reduction": "batch"}, r"^parts\.supcon_limit: reduc"),
        ({"parts": {"ce": {}}, "n_w": 2}, "no part of this composite takes n_w"),
        ({"parts": {"supcon": {}}, "n_w": 2}, r"^parts\.supcon: n_w=2 needs prototypes"),
    ],
)
def test_bad_part_values_are_refused_when_built(kwargs, message):
    with pytest.raises(LossInputError, match=message):
        Composite(**kwargs)


def test_a_training_run_logs_every_part_unweighted(tmp_path):
    """End to end: a run with a composite loss records ``loss.<part>`` for each part, and
    its recorded ``loss`` is their weighted sum (both are means over the same steps)."""
    import pandas as pd

    from protolib.train import train_run

    config = {
        "iterations": 10,
        "eval_every": 5,
        "batch_size": 32,
        "probe_iterations": 0,
        "threads": 1,
        "model": "mlp",
        "model_options": {"widths": [16], "out_dim": 8},
        "imbalance_ratio": 10,
        "loss": "composite",
        "loss_options": {
            "parts": {"bcl": {"weight": 1.0, "tau": 0.1}, "ce_la": {"weight": 0.5, "t": 1.0}}
        },
    }
    assert train_run(config, tmp_path / "run", progress=False)["status"] == "completed"
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    losses = metrics[metrics.metric.str.startswith("loss")].pivot(
        index="step", columns="metric", values="value"
    )
    assert list(losses.columns) == ["loss", "loss.bcl", "loss.ce_la"]
    assert list(losses.index) == [5, 10]
    weighted = losses["loss.bcl"] + 0.5 * losses["loss.ce_la"]
    assert weighted.to_numpy() == pytest.approx(losses["loss"].to_numpy(), rel=1e-5)
