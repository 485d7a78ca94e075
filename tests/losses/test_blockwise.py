"""The blockwise contrastive path (MATH.md §1.10) against the dense reference and the
explicit loops: same values and gradients, anchor subsets, and no ``N×N`` tensor."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from protolib import LOSSES
from protolib.cli import main as cli_main
from protolib.geometry import make_prototypes
from protolib.losses import BCL, LossInputError, SupCon, bcl_loss, supcon_loss
from protolib.losses.blockwise import CPU_BLOCK_ELEMENTS, block_rows_for, log_denominator
from protolib.losses.multiset import (
    anchor_weights,
    multiset_contrastive,
    normaliser,
    reduce_anchors,
)
from protolib.losses.supcon import BLOCKWISE_MIN_MEMBERS
from tests.conftest import tiny_run
from tests.losses.reference import loop_supcon, members_of, replicate

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def batch(n, views, K, n_w, *, seed, dtype, duplicates=0):
    """Members as the losses build them: ``n`` images × ``views`` unit rows (sample-major),
    ``duplicates`` of them exact copies of earlier rows with the same label, then ``K``
    random unit prototypes with multiplicity ``n_w`` when ``n_w > 0``. Returns ``(members, labels,
    multiplicity, leaf)``: ``leaf`` is the ``(n·V, d)`` sample rows the gradient is taken
    of (the prototype rows are detached, as in the losses)."""
    d = K + 2
    g = torch.Generator().manual_seed(seed)
    leaf = F.normalize(torch.randn(n * views, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, K, (n,), generator=g).repeat_interleave(views)
    for k in range(min(duplicates, n * views // 2)):
        leaf[-1 - k], labels[-1 - k] = leaf[k], labels[k]
    leaf = leaf.to(dtype).requires_grad_(True)
    members, multiplicity = leaf, torch.ones(n * views, dtype=dtype)
    if n_w > 0:
        prototypes = F.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
        members = torch.cat([leaf, prototypes.to(dtype)])
        labels = torch.cat([labels, torch.arange(K)])
        multiplicity = torch.cat([multiplicity, torch.full((K,), float(n_w), dtype=dtype)])
    return members, labels, multiplicity, leaf


def assert_same(got, want, dtype, magnitude=1.0):
    """``|got − want| ≤ tol·(magnitude + |want|)`` elementwise, ``tol`` by dtype."""
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(magnitude))


@st.composite
def cases(draw):
    """A batch, an anchor subset (or all), a block size, a loss and a reduction."""
    n = draw(st.integers(1, 12))
    views = draw(st.integers(1, 3))
    K = draw(st.integers(1, 6))  # K > n leaves anchors without positives
    n_w = draw(st.sampled_from([0, 0, 1, 2, 7, 1000]))
    N = n * views + (K if n_w else 0)
    subset = draw(st.none() | st.lists(st.integers(0, N - 1), min_size=1, max_size=N, unique=True))
    return {
        "n": n,
        "views": views,
        "K": K,
        "n_w": n_w,
        "duplicates": draw(st.integers(0, 3)),
        "anchors": subset,
        "block_rows": draw(st.integers(1, N + 2)),  # divides N or not; one block or many
        "class_average": draw(st.booleans()),
        "reduction": draw(st.sampled_from(["mean", "batch", "sum"])),
        "tau": draw(st.sampled_from([0.05, 0.1, 0.5])),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_blockwise_equals_dense(case):
    """Per-anchor losses, weights, the reduced loss of the anchors over the normaliser of
    the whole batch, and its gradient: blockwise = dense (float64 1e-10, float32 1e-5).

    In float32 the reduced loss is compared relative to the sum of its terms' magnitudes
    and the gradient relative to its largest entry: a sum over 1 000 prototype copies of
    a small ``ℓ_a`` has an absolute round-off of 1 000 times that of ``ℓ_a``, and each
    float32 path is that far from the float64 value (measured: up to 4·10⁻⁵ relative)."""
    dtype = case["dtype"]
    members, labels, multiplicity, leaf = batch(
        case["n"],
        case["views"],
        case["K"],
        case["n_w"],
        seed=case["seed"],
        dtype=dtype,
        duplicates=case["duplicates"],
    )
    anchors = None if case["anchors"] is None else torch.tensor(case["anchors"])
    _, every_weight = anchor_weights(labels, multiplicity)
    scale = normaliser(case["reduction"], every_weight, multiplicity)
    results = []
    for blockwise in (False, True):
        loss, weight = multiset_contrastive(
            members,
            labels,
            multiplicity,
            tau=case["tau"],
            class_average=case["class_average"],
            anchors=anchors,
            blockwise=blockwise,
            block_rows=case["block_rows"] if blockwise else None,
        )
        reduced = reduce_anchors(loss, weight, case["reduction"], scale=scale)["loss"]
        (grad,) = torch.autograd.grad(reduced, leaf)
        results.append((loss, weight, reduced, grad))
    (loss, weight, reduced, grad) = results[0]
    magnitudes = [1, 1, 1, 1]
    if dtype == torch.float32:
        terms = (weight * (1 + loss.abs())).sum() / scale
        magnitudes = [1, 1, terms.item(), 1 + grad.abs().max().item()]
    for dense, blockwise, magnitude in zip(*results, magnitudes, strict=True):
        assert dense.dtype == blockwise.dtype == dtype
        assert_same(blockwise, dense, dtype, magnitude)


@pytest.mark.parametrize("loss", ["supcon", "bcl"])
@pytest.mark.parametrize("reduction", ["mean", "batch", "sum"])
def test_blockwise_loss_equals_explicit_loop(loss, reduction):
    """The public function on the blockwise path, against the loop on the literally
    replicated batch (views, prototypes, duplicates, an anchor without positives)."""
    fn = {"supcon": supcon_loss, "bcl": bcl_loss}[loss]
    features = F.normalize(torch.randn(7, 2, 5, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    features[6] = features[0]
    prototypes = make_prototypes("etf", 4, 5, seed=2, dtype=torch.float64)
    got = fn(
        features,
        labels,
        tau=0.1,
        prototypes=prototypes,
        n_w=3,
        blockwise=True,
        reduction=reduction,
    )
    members, member_labels = replicate(*members_of(features, labels), prototypes.numpy(), 3)
    loop_reduction = "sum" if reduction == "sum" else "mean"
    want = loop_supcon(
        members, member_labels, 0.1, reduction=loop_reduction, class_average=loss == "bcl"
    )
    # every anchor has a positive (the prototype copies), so mean = batch here
    assert got["loss"].item() == pytest.approx(want, rel=1e-12)
    single = features[:, 0]  # one view, no prototypes: labels 1 and 3 have no positive
    got = fn(single, labels, tau=0.1, blockwise=True, reduction=reduction)["loss"].item()
    members, member_labels = members_of(single, labels)
    total = loop_supcon(members, member_labels, 0.1, reduction="sum", class_average=loss == "bcl")
    mean = loop_supcon(members, member_labels, 0.1, class_average=loss == "bcl")
    want = {"sum": total, "mean": mean, "batch": total / 7}[reduction]
    assert mean == pytest.approx(total / 5, rel=1e-12)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("module", [SupCon, BCL])
@pytest.mark.parametrize("reduction", ["mean", "batch", "sum"])
def test_modules_agree_across_paths_with_many_prototype_copies(module, reduction):
    """Both modules, 3 views and n_w = 1000, every component: ``blockwise=True`` equals
    ``False`` in value and gradient (float64 1e-10)."""
    K, d = 5, 6
    prototypes = make_prototypes("etf", K, d, seed=0, dtype=torch.float64)
    features = torch.randn(9, 3, d, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 0])  # class 4 only as a prototype
    outs, grads = [], []
    for blockwise in (False, True):
        loss = module(
            tau=0.05, n_w=1000, prototypes=prototypes, reduction=reduction, blockwise=blockwise
        )
        out = loss(features, labels)
        grads.append(torch.autograd.grad(out["loss"], features)[0])
        outs.append(out)
    for key in ("loss", "sample_anchors", "prototype_anchors"):
        assert_same(outs[1][key], outs[0][key], torch.float64)
    assert_same(grads[1], grads[0], torch.float64)


def test_log_denominator_gradient_reaches_every_input_that_needs_it():
    """Gradcheck of the custom function on a subset of anchors, with repeated anchors and
    one member without a gradient (a detached prototype row)."""
    g = torch.Generator().manual_seed(1)
    rows = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    fixed = F.normalize(torch.randn(1, 3, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 2])
    multiplicity = torch.tensor([1.0, 1, 2, 1, 1, 3, 4], dtype=torch.float64)
    anchors = torch.tensor([5, 0, 6, 0, 3])

    def ld(leaf, class_average):
        members = torch.cat([leaf, fixed])
        return log_denominator(
            members,
            labels,
            multiplicity,
            tau=0.2,
            class_average=class_average,
            anchors=anchors,
            block_rows=2,
        )

    for class_average in (False, True):
        leaf = rows.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, c=class_average: ld(x, c), (leaf,))


def test_float32_large_batch_matches_float64_reference():
    """n = 2 048 in float32 with τ = 0.05: both paths within 1e-5 of the float64 loss."""
    g = torch.Generator().manual_seed(3)
    features = F.normalize(torch.randn(2048, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 10, (2048,), generator=g)
    want = supcon_loss(features, labels, tau=0.05, blockwise=False)["loss"].item()
    for blockwise in (False, True):
        got = supcon_loss(features.float(), labels, tau=0.05, blockwise=blockwise)["loss"]
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss", ["supcon", "bcl"])
def test_both_paths_keep_float32_under_bfloat16_autocast(loss):
    """A training loop's autocast does not lower the loss's precision: under bfloat16
    autocast both paths give the float32 value and gradient (a bfloat16 similarity matmul
    is off by about 2e-3 here)."""
    g = torch.Generator().manual_seed(5)
    features = F.normalize(torch.randn(512, 2, 128, generator=g), dim=-1)
    labels = torch.randint(0, 10, (512,), generator=g)
    module = LOSSES.create(loss, tau=0.05)

    def value_and_grad(blockwise: bool, autocast: bool):
        x = features.clone().requires_grad_()
        module.blockwise = blockwise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(x, labels)["loss"]
        out.backward()
        return out.detach(), x.grad

    want, want_grad = value_and_grad(False, False)
    for blockwise in (False, True):
        got, grad = value_and_grad(blockwise, True)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["supcon", "bcl"])
def test_small_temperature_in_float32_is_stable(loss):
    """τ = 0.005 puts similarities up to 200, beyond float32's exp (88): each block's
    log-sum-exp is shifted by its row maximum, so float32 stays within 1e-5 of float64."""
    fn = {"supcon": supcon_loss, "bcl": bcl_loss}[loss]
    g = torch.Generator().manual_seed(4)
    features = F.normalize(torch.randn(40, 3, generator=g, dtype=torch.float64), dim=1)
    features[20:] = features[:20] + 1e-3  # near-duplicates: s_at ≈ 1/τ
    features = F.normalize(features, dim=1)
    labels = torch.randint(0, 3, (40,), generator=g)
    want = fn(features, labels, tau=0.005, blockwise=False)["loss"]
    leaf = features.float().requires_grad_(True)
    got = fn(leaf, labels, tau=0.005, blockwise=True)["loss"]
    got.backward()
    assert torch.isfinite(leaf.grad).all()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


class LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns (forward
    and backward: every tensor torch allocates is some operator's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


def largest_tensor(loss_fn, features, labels) -> tuple[int, int]:
    """The largest tensor of the forward and of the backward pass of ``loss_fn``."""
    with LargestOutput() as forward:
        out = loss_fn(features, labels)["loss"]
    with LargestOutput() as backward:
        out.backward()
    return forward.largest, backward.largest


def sample(n, d=4, K=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g).requires_grad_(True)
    return features, torch.randint(0, K, (n,), generator=g)


def test_no_tensor_of_n_by_n_elements():
    """N = 4 096 members (4 000 samples + 96 prototypes) with the ``auto`` choice: no
    tensor of the forward or backward pass holds more than a block (rows × N, the element
    budget) or the ``N×d`` members; the dense path at N = 512 does build ``N×N``."""
    K = 96
    prototypes = F.normalize(torch.randn(K, 4), dim=1)
    features, labels = sample(4000, K=K)
    N = 4000 + K
    loss = SupCon(tau=0.05, n_w=10, prototypes=prototypes)
    block = block_rows_for(N, N, torch.device("cpu")) * N
    assert block <= CPU_BLOCK_ELEMENTS <= N * N // 4
    assert max(largest_tensor(loss, features, labels)) <= block

    small, small_labels = sample(512)
    dense = SupCon(tau=0.05, blockwise=False)
    assert largest_tensor(dense, small, small_labels) == (512 * 512, 512 * 512)


def took_blockwise_path(out) -> bool:
    """Whether the autograd graph of ``out`` holds the blockwise log-denominator."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.startswith("_LogDenominator"):
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def test_auto_switches_at_the_documented_member_count():
    """``blockwise="auto"`` is dense below :data:`BLOCKWISE_MIN_MEMBERS` members and
    blockwise from it on; the rows of the prototypes count as members."""
    N = BLOCKWISE_MIN_MEMBERS
    loss = SupCon(tau=0.1)
    assert not took_blockwise_path(loss(*sample(N - 1))["loss"])
    assert took_blockwise_path(loss(*sample(N))["loss"])
    prototypes = F.normalize(torch.randn(10, 4), dim=1)
    with_prototypes = SupCon(tau=0.1, n_w=2, prototypes=prototypes)
    assert not took_blockwise_path(with_prototypes(*sample(N - 11))["loss"])
    assert took_blockwise_path(with_prototypes(*sample(N - 10))["loss"])
    assert took_blockwise_path(SupCon(tau=0.1, blockwise=True)(*sample(3))["loss"])
    assert not took_blockwise_path(SupCon(tau=0.1, blockwise=False)(*sample(N))["loss"])


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "Auto", 0.5])
def test_bad_blockwise_values_are_refused_naming_the_option(value):
    features, labels = sample(6)
    for build in (
        lambda: SupCon(blockwise=value),
        lambda: LOSSES.create("bcl", blockwise=value),
        lambda: supcon_loss(F.normalize(features, dim=1), labels, blockwise=value),
        lambda: LOSSES.create("composite", parts={"supcon": {"blockwise": value}}),
    ):
        with pytest.raises(LossInputError, match=r"blockwise must be 'auto'.*true or false; got"):
            build()


def test_a_run_config_with_a_bad_blockwise_is_refused_before_any_work(tmp_path):
    """``loss_options.blockwise`` of a run: exit 2, one line naming the key, the value and
    what is allowed, and no output directory."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_run(loss="bcl", loss_options={"blockwise": "yes"})))
    out = tmp_path / "run"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["train", "--config", str(config), "--out", str(out), "--no-progress"])
    lines = stderr.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr.getvalue()
    assert "loss_options: blockwise must be 'auto'" in lines[0] and "got 'yes'" in lines[0]
    assert not out.exists()
