"""Batch binding (MATH.md §6): the bound points of every class and the loader that appends
them to every batch, against explicit counts and an unbound twin loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protolib.data import Augment, DeviceLoader, bound_points
from tests.data.test_loader import DEVICES, MEAN, STD, find_crops, make_loader, round_trip

K = 4


def class_sizes_split(sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(N, 3, 6, 6)`` and shuffled labels with ``sizes[c]`` points of class c."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]))
    images = rng.integers(0, 256, (len(labels), 3, 6, 6), dtype=np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels)


SIZES = [12, 5, 9, 7]  # the smallest class (1) has 5 points


# ------------------------------------------------------------------ bound_points
@pytest.mark.parametrize("binding", [1, 3, 5])
def test_bound_points_draws_binding_points_of_every_class(binding):
    _, labels = class_sizes_split(SIZES)
    bound = bound_points(labels, binding, K, seed=2)
    assert bound.dtype == torch.int64 and bound.ndim == 1
    assert torch.equal(bound, bound.unique())  # sorted, no point twice
    assert bound.min() >= 0 and bound.max() < len(labels)
    assert torch.bincount(labels[bound], minlength=K).tolist() == [binding] * K
    if binding == 5:  # all of the smallest class
        assert set(bound.tolist()) >= set(torch.nonzero(labels == 1).flatten().tolist())


def test_bound_points_zero_deterministic_seeded_and_uniform():
    _, labels = class_sizes_split(SIZES)
    empty = bound_points(labels, 0, K, seed=0)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    a = bound_points(labels, 2, K, seed=1)
    assert torch.equal(a, bound_points(labels, 2, K, seed=1))
    assert torch.equal(a, bound_points(labels.numpy(), 2, K, seed=1))
    assert not torch.equal(a, bound_points(labels, 2, K, seed=2))
    # over seeds, each point of class 0 (12 points) is bound with probability 2/12
    runs, hits = 1200, np.zeros(len(labels))
    for seed in range(runs):
        hits[bound_points(labels, 2, K, seed).numpy()] += 1
    share = hits[labels.numpy() == 0] / runs
    assert np.abs(share - 2 / 12).max() < 0.05  # σ ≈ 0.011 per point


@pytest.mark.parametrize(
    ("sizes", "binding", "message"),
    [
        (SIZES, 6, "binding 6 exceeds the 5 training points of class 1; binding must be at "
         "most the smallest class size, 5"),
        ([3, 0, 4, 2], 1, "binding 1 exceeds the 0 training points of class 1; binding must "
         "be at most the smallest class size, 0"),
        (SIZES, -1, "binding must be an integer >= 0, got -1"),
        (SIZES, 1.0, "binding must be an integer >= 0, got 1.0"),
        (SIZES, True, "binding must be an integer >= 0, got True"),
    ],
)  # fmt: skip
def test_bound_points_refuses_too_large_or_bad_binding(sizes, binding, message):
    labels = torch.tensor([c for c, n in enumerate(sizes) for _ in range(n)])
    with pytest.raises(ValueError, match=f"^{message}$"):
        bound_points(labels, binding, K, seed=0)


# ------------------------------------------------------------------------ loader
BINDING = 2
OPTIONS = {"views": 2, "augment": Augment(crop_padding=1, flip=True), "seed": 7}


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = class_sizes_split(SIZES)
    return images, labels, bound_points(labels, BINDING, K, seed=7)


@pytest.mark.parametrize(
    ("sampling", "drop_last"), [("epoch", True), ("epoch", False), ("replacement", True)]
)
def test_every_batch_ends_with_the_bound_points_augmented_per_view(split, sampling, drop_last):
    images, labels, bound = split
    options = {**OPTIONS, "sampling": sampling, "drop_last": drop_last}
    loader = make_loader(images, labels, batch_size=8, bound=bound, **options)
    twin = make_loader(images, labels, batch_size=8, **options)  # the same, unbound
    assert loader.steps_per_epoch == twin.steps_per_epoch == (4 if drop_last else 5)
    L = len(bound)
    bound_views = []
    for _ in range(2 * loader.steps_per_epoch):
        x, y, idx = loader.next_batch()
        _, y_plain, idx_plain = twin.next_batch()
        b = len(idx_plain)
        assert b == (1 if not drop_last and len(bound_views) % 5 == 4 else 8)
        assert x.shape == (b + L, 2, 3, 6, 6) and y.shape == idx.shape == (b + L,)
        assert torch.equal(idx[:b], idx_plain) and torch.equal(y[:b], y_plain)
        assert torch.equal(idx[b:], bound) and torch.equal(y, labels[idx])
        assert (torch.bincount(y, minlength=K) >= BINDING).all()
        bound_views.append(x[b:])
    # the bound members are augmented: crops of their own images, changing over views/steps
    unit = torch.stack(bound_views).double() * torch.tensor(STD)[:, None, None]
    unit = (unit + torch.tensor(MEAN)[:, None, None]) * 255  # (steps, L, 2, 3, 6, 6)
    draws = set()
    for step in range(len(bound_views)):
        for i, j in enumerate(bound.tolist()):
            for v in range(2):
                found = find_crops(unit[step, i, v].round().numpy(), images[j].numpy(), 1)
                assert found, f"step {step}, bound member {i}, view {v}: no crop of image {j}"
                draws.add(found[0])
    assert len(draws) > 5  # many different crops and flips, not one fixed augmentation


def test_without_augmentation_the_sampled_rows_equal_the_unbound_batch(split):
    images, labels, bound = split
    loader = make_loader(images, labels, batch_size=8, bound=bound, views=2, seed=3)
    twin = make_loader(images, labels, batch_size=8, views=2, seed=3)
    for _ in range(6):
        x, _, _ = loader.next_batch()
        x_plain, _, _ = twin.next_batch()
        assert torch.equal(x[:8], x_plain)
        assert torch.equal(x[8:, 0], x[8:, 1])  # un-augmented views are identical
    expected = x[8:, 0].double().numpy()
    raw = images[bound].double().numpy() / 255
    reference = (raw - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    np.testing.assert_allclose(expected, reference, atol=1e-5)


def test_empty_bound_is_no_binding(split):
    images, labels, _ = split
    loader = make_loader(images, labels, bound=torch.empty(0, dtype=torch.int64), **OPTIONS)
    twin = make_loader(images, labels, **OPTIONS)
    assert loader.bound is None
    for a, b in zip(loader.next_batch(), twin.next_batch(), strict=True):
        assert torch.equal(a, b)
    twin.load_state_dict(loader.state_dict())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", ["epoch", "replacement"])
def test_state_round_trip_with_binding_resumes_identically(split, sampling, device):
    images, labels, bound = split
    options = {**OPTIONS, "sampling": sampling, "bound": bound.to(device), "device": device}
    loader = make_loader(images, labels, **options)
    for _ in range(3):
        loader.next_batch()
    state = round_trip(loader.state_dict())
    expected = [loader.next_batch() for _ in range(5)]  # crosses an epoch boundary
    resumed = make_loader(images, labels, **options)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (resumed.next_batch() for _ in range(5)), strict=True):
        for a, b in zip(want, got, strict=True):
            assert a.device.type == device and torch.equal(a, b)
        assert torch.equal(want[2][-len(bound) :].cpu(), bound)


def test_resume_with_other_binding_is_refused(split):
    images, labels, bound = split
    bound_state = make_loader(images, labels, bound=bound).state_dict()
    plain_state = make_loader(images, labels).state_dict()
    count = len(bound)
    with pytest.raises(ValueError, match=f"saved with bound_points={count}, .* bound_points=0$"):
        make_loader(images, labels).load_state_dict(bound_state)
    with pytest.raises(ValueError, match=f"saved with bound_points=0, .* bound_points={count}$"):
        make_loader(images, labels, bound=bound).load_state_dict(plain_state)
    other = bound_points(labels, BINDING, K, seed=8)  # as many points, other ones
    assert len(other) == count and not torch.equal(other, bound)
    with pytest.raises(ValueError, match=r"saved with bound_sha256='[0-9a-f]{16}', but"):
        make_loader(images, labels, bound=other).load_state_dict(bound_state)
    reordered = bound.flip(0)  # the same points in another order make other batches
    with pytest.raises(ValueError, match="bound_sha256"):
        make_loader(images, labels, bound=reordered).load_state_dict(bound_state)


def test_a_state_saved_before_binding_existed_still_loads(split):
    """A version-1 state without the binding entries is one of an unbound loader."""
    images, labels, bound = split
    loader = make_loader(images, labels, **OPTIONS)
    loader.next_batch()
    state = round_trip(loader.state_dict())
    for key in ("bound_points", "bound_sha256"):
        del state["config"][key]
    resumed = make_loader(images, labels, **OPTIONS)
    resumed.load_state_dict(state)
    for a, b in zip(resumed.next_batch(), loader.next_batch(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="saved with bound_points=0"):
        make_loader(images, labels, bound=bound, **OPTIONS).load_state_dict(state)


@pytest.mark.parametrize(
    ("bound", "message"),
    [
        (torch.tensor([0, 35]), r"bound must hold positions in 0..32 \(the split size is 33\), "
         r"got 0..35"),
        (torch.tensor([-1, 3]), r"bound must hold positions in 0..32 .* got -1..3"),
        (torch.tensor([[0, 1]]), r"bound must be a 1-D integer tensor .* got torch.int64 \(1, 2\)"),
        (torch.tensor([0.0, 1.0]), r"bound must be a 1-D integer tensor .* got torch.float32"),
        (torch.tensor([True, False]), r"bound must be a 1-D integer tensor .* got torch.bool"),
        ([0, 1], r"bound must be a 1-D integer tensor of split positions, got \[0, 1\]"),
    ],
)  # fmt: skip
def test_loader_refuses_bad_bound(split, bound, message):
    images, labels, _ = split
    with pytest.raises(ValueError, match=message):
        DeviceLoader(images, labels, batch_size=4, mean=MEAN, std=STD, bound=bound)
