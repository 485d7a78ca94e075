"""Batched augmentation and the device-resident loader, against explicit per-sample loops."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from protolib.data import Augment, DeviceLoader, augment_batch, load_dataset

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
]


def padded_reference(image: np.ndarray, p: int) -> np.ndarray:
    C, H, W = image.shape
    out = np.zeros((C, H + 2 * p, W + 2 * p), dtype=image.dtype)
    out[:, p : p + H, p : p + W] = image
    return out


def find_crops(output: np.ndarray, image: np.ndarray, p: int) -> list[tuple[int, int, bool]]:
    """All (dy, dx, flipped) such that ``output`` is that crop of ``image`` padded by ``p``."""
    _, H, W = image.shape
    padded = padded_reference(image, p)
    found = []
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            window = padded[:, dy : dy + H, dx : dx + W]
            for flipped in (False, True):
                candidate = window[:, :, ::-1] if flipped else window
                if np.array_equal(output, candidate):
                    found.append((dy, dx, flipped))
    return found


def random_images(shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_inactive_augment_is_identity(device):
    images = random_images((4, 3, 5, 5), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    assert torch.equal(augment_batch(images, Augment(), gen), images)
    assert torch.equal(augment_batch(images, Augment(crop_padding=0, flip=False), gen), images)
    assert not Augment().active and Augment(flip=True).active and Augment(2).active


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flip", [False, True])
def test_crop_is_a_crop_of_the_zero_padded_image(device, flip):
    p, B = 2, 300
    images = random_images((B, 2, 6, 5), seed=1, device=device)
    augment = Augment(crop_padding=p, flip=flip)
    out = augment_batch(images, augment, torch.Generator(device=device).manual_seed(0))
    assert out.shape == images.shape and out.device == images.device
    source, result = images.cpu().numpy(), out.cpu().numpy()
    offsets, flips = set(), []
    for i in range(B):
        found = find_crops(result[i], source[i], p)
        assert len(found) == 1, f"sample {i}: {found}"
        dy, dx, flipped = found[0]
        offsets.add((dy, dx))
        flips.append(flipped)
    assert offsets == {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    if flip:
        assert 0.35 < np.mean(flips) < 0.65
    else:
        assert not any(flips)
    again = augment_batch(images, augment, torch.Generator(device=device).manual_seed(0))
    assert torch.equal(again, out)


def test_flip_only_mirrors_about_half():
    images = random_images((200, 3, 4, 4), seed=2)
    out = augment_batch(images, Augment(flip=True), torch.Generator().manual_seed(1))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    assert 70 < mirrored.sum().item() < 130


def uint8_split(n=50, c=3, size=6, seed=0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, c, size, size), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 5, n))
    return images, labels


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def make_loader(images, labels, **options):
    options = {"batch_size": 8, "mean": MEAN, "std": STD, **options}
    return DeviceLoader(images, labels, **options)


def reference_normalised(images: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    raw = images.numpy()[idx.cpu().numpy()].astype(np.float64) / 255
    return (raw - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]


@pytest.mark.parametrize("device", DEVICES)
def test_epoch_sampling_visits_every_index_once(device):
    images, labels = uint8_split(n=23)
    loader = make_loader(images, labels, batch_size=5, drop_last=False, device=device)
    assert loader.steps_per_epoch == 5 and len(loader) == 5
    for epoch in range(3):
        assert loader.epoch == epoch
        batches = [loader.next_batch() for _ in range(5)]
        assert [len(b[2]) for b in batches] == [5, 5, 5, 5, 3]
        seen = torch.cat([b[2] for b in batches]).cpu()
        assert sorted(seen.tolist()) == list(range(23))
        for x, y, idx in batches:
            assert x.shape == (len(idx), 3, 6, 6) and x.dtype == torch.float32
            assert y.dtype == torch.int64 and torch.equal(y.cpu(), labels[idx.cpu()])
            np.testing.assert_allclose(
                x.cpu().numpy(), reference_normalised(images, idx), atol=1e-5
            )
    assert loader.step == 15 and loader.epoch == 3


def test_epoch_sampling_drop_last_and_fresh_permutations():
    images, labels = uint8_split(n=23)
    loader = make_loader(images, labels, batch_size=5)
    assert loader.steps_per_epoch == 4
    epochs = [torch.cat([loader.next_batch()[2] for _ in range(4)]) for _ in range(3)]
    for seen in epochs:
        assert len(seen) == 20 and len(seen.unique()) == 20
    assert not torch.equal(epochs[0], epochs[1])


def test_replacement_draws_multisets():
    images, labels = uint8_split(n=10)
    loader = make_loader(images, labels, batch_size=8, sampling="replacement")
    draws = [loader.next_batch()[2] for _ in range(500)]
    assert all(d.shape == (8,) and d.dtype == torch.int64 for d in draws)
    assert sum(len(d.unique()) < 8 for d in draws) > 400  # P(8 distinct of 10) ≈ 0.018
    counts = torch.bincount(torch.cat(draws), minlength=10).double()
    assert ((counts - 400) ** 2 / 400).sum() < 35  # χ², 9 degrees of freedom
    big = make_loader(images, labels, batch_size=25, sampling="replacement")
    assert big.next_batch()[0].shape[0] == 25  # a batch may exceed the split


def test_sampling_does_not_depend_on_augmentation():
    images, labels = uint8_split()
    plain = make_loader(images, labels)
    augmented = make_loader(images, labels, augment=Augment(2, True), views=2)
    for _ in range(9):
        assert torch.equal(plain.next_batch()[2], augmented.next_batch()[2])


@pytest.mark.parametrize("device", DEVICES)
def test_views_are_independent_augmentations_of_the_same_images(device):
    images, labels = uint8_split(n=40)
    loader = make_loader(
        images, labels, views=2, augment=Augment(crop_padding=2, flip=True), device=device
    )
    x, _, idx = loader.next_batch()
    assert x.shape == (8, 2, 3, 6, 6)
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    unit = x.cpu().double().numpy() * std + mean  # back to [0, 1]
    differ = 0
    for i, j in enumerate(idx.cpu().tolist()):
        source = images[j].double().numpy() / 255
        found = []
        for v in range(2):
            matches = find_crops(np.round(unit[i, v] * 255), np.round(source * 255), 2)
            assert matches, f"sample {i} view {v} is no crop of image {j}"
            found.append(matches[0])
        differ += found[0] != found[1]
    assert differ >= 4
    plain = make_loader(images, labels, views=3)
    x, _, _ = plain.next_batch()
    assert x.shape == (8, 3, 3, 6, 6) and torch.equal(x[:, 0], x[:, 2])


def test_normalised_synthetic_split_has_zero_mean_unit_std():
    data = load_dataset("synthetic", image_size=8, train_size=300, test_size=10)
    loader = DeviceLoader(
        data.train.images, data.train.labels, batch_size=64, mean=data.mean, std=data.std
    )
    x = torch.cat([b[0] for b in loader.iterate()]).double()
    per_channel = x.transpose(0, 1).flatten(1)
    np.testing.assert_allclose(per_channel.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(1, correction=0).numpy(), 1, atol=1e-5)


def test_iterate_covers_the_split_in_order_without_touching_the_state():
    images, labels = uint8_split(n=23)
    loader = make_loader(images, labels, augment=Augment(2, True), views=2)
    twin = make_loader(images, labels, augment=Augment(2, True), views=2)
    batches = list(loader.iterate(batch_size=10))
    assert [len(b[2]) for b in batches] == [10, 10, 3]
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, torch.arange(23))
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (23, 3, 6, 6)  # single view, un-augmented
    np.testing.assert_allclose(x.numpy(), reference_normalised(images, idx), atol=1e-5)
    assert len(list(loader.iterate())) == 3  # default: the loader's batch size (8)
    assert loader.step == 0
    for a, b in zip(loader.next_batch(), twin.next_batch(), strict=True):
        assert torch.equal(a, b)


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("sampling", "drop_last"), [("epoch", True), ("epoch", False), ("replacement", True)]
)
def test_state_round_trip_resumes_bit_identically(device, sampling, drop_last):
    images, labels = uint8_split(n=50)
    options = {
        "sampling": sampling,
        "drop_last": drop_last,
        "views": 2,
        "augment": Augment(crop_padding=2, flip=True),
        "seed": 11,
        "device": device,
    }
    loader = make_loader(images, labels, **options)
    for _ in range(5):
        loader.next_batch()
    state = round_trip(loader.state_dict())
    expected = [loader.next_batch() for _ in range(7)]  # crosses an epoch boundary
    resumed = make_loader(images, labels, **options)
    resumed.load_state_dict(state)
    assert resumed.step == 5
    for want, got in zip(expected, (resumed.next_batch() for _ in range(7)), strict=True):
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)
    assert resumed.step == loader.step == 12 and resumed.epoch == loader.epoch
    fresh = make_loader(images, labels, **options)
    assert not torch.equal(fresh.next_batch()[0], expected[0][0])


def test_state_of_an_unstarted_loader_and_mismatch():
    images, labels = uint8_split()
    loader = make_loader(images, labels)
    other = make_loader(images, labels, seed=5)
    other.load_state_dict(round_trip(loader.state_dict()))
    assert torch.equal(other.next_batch()[0], loader.next_batch()[0])
    wrong = make_loader(images, labels, batch_size=4)
    with pytest.raises(
        ValueError, match="saved with batch_size=8, but this loader has batch_size=4"
    ):
        wrong.load_state_dict(loader.state_dict())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": 51}, "batch_size must be <= the split size 50"),
        ({"views": 0}, "views must be an integer >= 1"),
        ({"sampling": "shuffle"}, "unknown sampling 'shuffle'; known: epoch, replacement"),
        ({"mean": (0.5,)}, "mean and std need 3 values"),
        ({"std": (1.0, 0.0, 1.0)}, "mean and std need 3 values"),
    ],
)
def test_loader_rejects_bad_arguments(options, message):
    images, labels = uint8_split()
    with pytest.raises(ValueError, match=message):
        make_loader(images, labels, **options)
    with pytest.raises(ValueError, match="crop_padding must be an integer >= 0"):
        Augment(crop_padding=-1)


def test_float_images_are_used_as_they_are():
    data = load_dataset("synthetic", image_size=4, train_size=20, test_size=4)
    loader = DeviceLoader(
        data.train.images, data.train.labels, batch_size=4, mean=(0, 0, 0), std=(1, 1, 1)
    )
    x, _, idx = loader.next_batch()
    assert torch.equal(x, data.train.images[idx])
