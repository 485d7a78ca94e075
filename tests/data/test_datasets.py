"""Registered datasets: digits, synthetic, the registry entry points, channel statistics."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from protolib import DATASETS, RegistryError
from protolib.data import DatasetSplits, Split, load_dataset
from protolib.data.datasets import channel_stats, digits_file, read_digits, stratified_split


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits  # here, not at collection (1.7 s)

    return load_digits()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_registry_names():
    assert {"digits", "cifar10", "cifar100", "synthetic"} <= set(DATASETS.names())
    with pytest.raises(RegistryError, match="accepted options"):
        load_dataset("synthetic", colour=3)


def test_digits_sizes_classes_and_range(digits):
    assert isinstance(digits, DatasetSplits) and digits.name == "digits"
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.num_classes == 10 and digits.image_shape == (1, 8, 8)
    for split in (digits.train, digits.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert set(split.labels.tolist()) == set(range(10))
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
    # stratified: each class sends round(n_c / 4) points to the test split
    counts = np.bincount(np.concatenate([digits.train.labels, digits.test.labels]))
    np.testing.assert_array_equal(np.bincount(digits.test.labels), np.round(counts / 4))


def test_digits_matches_sklearn_raw_data(digits, sk_digits):
    train_idx, test_idx = stratified_split(sk_digits.target, 0.25, 0)
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    for split, index in ((digits.train, train_idx), (digits.test, test_idx)):
        for position in (0, 1, 17, len(index) - 1):
            raw = sk_digits.images[index[position]] / 16.0
            np.testing.assert_allclose(split.images[position, 0].numpy(), raw, rtol=0, atol=1e-7)
            assert split.labels[position].item() == sk_digits.target[index[position]]


def test_read_digits_equals_sklearns_loader_exactly(sk_digits):
    images, labels = read_digits()
    assert images.dtype == sk_digits.images.dtype and labels.dtype == np.int64
    np.testing.assert_array_equal(images, sk_digits.images)
    np.testing.assert_array_equal(images.reshape(len(images), -1), sk_digits.data)
    np.testing.assert_array_equal(labels, sk_digits.target)


def test_digits_load_without_importing_sklearn():
    code = (
        "import sys\n"
        "from protolib.data import load_dataset\n"
        "data = load_dataset('digits')\n"
        "print(len(data.train) + len(data.test), 'sklearn' in sys.modules)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["1797", "False"]


def test_digits_without_sklearn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what find_spec sees when absent
    with pytest.raises(FileNotFoundError, match=r"^digits: scikit-learn is not installed.*pip"):
        load_dataset("digits")


def test_digits_file_missing_from_sklearn_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.delitem(sys.modules, "sklearn", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = re.escape(str(tmp_path / "sklearn" / "datasets" / "data" / "digits.csv.gz"))
    with pytest.raises(FileNotFoundError, match=rf"^digits: {missing} is missing .*reinstall"):
        digits_file()


def test_read_digits_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(ValueError, match=r"rows of 65 numbers .*got shape \(2, 3\)"):
        read_digits(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"^digits: cannot read"):
        read_digits(path)


def test_digits_deterministic_and_seeded(digits):
    again = load_dataset("digits")
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.test.images, digits.test.images)
    half = load_dataset("digits", test_fraction=0.5)
    assert abs(len(half.test) - 1797 / 2) <= 10


def test_digits_mean_std_are_train_statistics(digits):
    pixels = digits.train.images.double().numpy()
    np.testing.assert_allclose(digits.mean, [pixels.mean()], rtol=1e-9)
    np.testing.assert_allclose(digits.std, [pixels.std()], rtol=1e-9)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 2])
def test_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction must lie strictly between 0 and 1"):
        load_dataset("digits", test_fraction=fraction)


def test_synthetic_shapes_balance_and_clusters():
    data = load_dataset(
        "synthetic", num_classes=4, channels=2, image_size=5, train_size=102, test_size=40
    )
    assert data.image_shape == (2, 5, 5) and data.num_classes == 4
    assert data.train.images.shape == (102, 2, 5, 5) and data.test.images.shape == (40, 2, 5, 5)
    assert data.train.images.dtype == torch.float32
    assert data.train.images.min() >= 0.0 and data.train.images.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(data.train.labels), [26, 26, 25, 25])
    np.testing.assert_array_equal(np.bincount(data.test.labels), [10] * 4)
    assert data.train.labels[:8].tolist() != [0, 1, 2, 3, 0, 1, 2, 3]  # shuffled
    # clusters: nearest train class mean classifies low-noise test points perfectly
    flat_train = data.train.images.flatten(1)
    means = torch.stack([flat_train[data.train.labels == k].mean(0) for k in range(4)])
    predicted = torch.cdist(data.test.images.flatten(1), means).argmin(1)
    assert torch.equal(predicted, data.test.labels)
    # mean/std are the train statistics per channel
    per_channel = data.train.images.transpose(0, 1).flatten(1).double()
    np.testing.assert_allclose(data.mean, per_channel.mean(1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(data.std, per_channel.std(1, correction=0).numpy(), rtol=1e-9)


def declared(name: str, **options) -> tuple[int, int, tuple[int, ...]]:
    """The ``size``, ``num_classes`` and ``image_shape`` facts of a registered dataset."""
    return tuple(  # type: ignore[return-value]
        DATASETS.fact(name, key, options=options) for key in ("size", "num_classes", "image_shape")
    )


def loaded(data: DatasetSplits) -> tuple[int, int, tuple[int, ...]]:
    return len(data.train) + len(data.test), data.num_classes, data.image_shape


def test_declared_facts_are_what_the_datasets_load(digits):
    """The registry facts (read by resources.py) equal the loaded data, including the
    synthetic dataset's, which depend on its options (defaults filled in)."""
    assert declared("digits") == loaded(digits) == (1797, 10, (1, 8, 8))
    assert declared("digits", test_fraction=0.5) == (1797, 10, (1, 8, 8))
    tiny = {"image_size": 4, "train_size": 30, "test_size": 7}
    assert declared("synthetic", **tiny) == loaded(load_dataset("synthetic", **tiny))
    assert declared("synthetic", **tiny) == (37, 10, (3, 4, 4))
    other = {"num_classes": 3, "channels": 1, "image_size": 2}
    assert declared("synthetic", **other) == loaded(load_dataset("synthetic", **other))
    assert declared("synthetic", **other) == (1200, 3, (1, 2, 2))


def test_synthetic_noise_zero_is_the_centres():
    data = load_dataset("synthetic", num_classes=3, image_size=4, train_size=30, noise=0.0)
    for k in range(3):
        members = data.train.images[data.train.labels == k]
        assert torch.equal(members, members[:1].expand_as(members))


def test_synthetic_deterministic_in_seed():
    a = load_dataset("synthetic", image_size=8, train_size=50, test_size=10, seed=3)
    b = load_dataset("synthetic", image_size=8, train_size=50, test_size=10, seed=3)
    c = load_dataset("synthetic", image_size=8, train_size=50, test_size=10, seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"train_size": 0}, "train_size must be an integer >= 1"),
        ({"noise": -1.0}, "noise must be a finite number >= 0"),
    ],
)
def test_synthetic_errors(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic", **options)


def test_channel_stats_uint8_histogram_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 3, 5, 6), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(images))
    unit = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, unit.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, unit.std(axis=(0, 2, 3)), rtol=1e-12)


def test_split_validation():
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        Split(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="uint8 or float32"):
        Split(torch.zeros(3, 1, 4, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"int64 tensor of shape \(3,\)"):
        Split(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
