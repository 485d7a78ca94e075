"""The CIFAR reader against fixtures written in the exact on-disk python-pickle format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from protolib.data import load_dataset

PLANE = 32 * 32


def write_batch(path: Path, data, labels: list[int], label_key: bytes, extra=None):
    entry = {b"batch_label": b"fixture", b"data": data, label_key: labels, **(extra or {})}
    entry[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(labels))]
    with path.open("wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def make_data(rng, n: int, first: int) -> np.ndarray:
    """Random rows, except that image ``j`` has constant planes R=first+j, G=100+j, B=200+j."""
    data = rng.integers(0, 256, size=(n, 3 * PLANE), dtype=np.uint8)
    for j in range(min(n, 2)):
        data[j, :PLANE], data[j, PLANE : 2 * PLANE], data[j, 2 * PLANE :] = first + j, 100 + j, 200
    return data


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_data, train_labels = [], []
    for b in range(1, 6):
        data = make_data(rng, per_batch, first=10 * b)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        write_batch(folder / f"data_batch_{b}", data, labels, b"labels")
        train_data.append(data)
        train_labels += labels
    test_data = make_data(rng, n_test, first=70)
    test_labels = rng.integers(0, 10, size=n_test).tolist()
    write_batch(folder / "test_batch", test_data, test_labels, b"labels")
    with (folder / "batches.meta").open("wb") as handle:
        meta = {b"label_names": [f"class{k}".encode() for k in range(10)]}
        pickle.dump(meta, handle, protocol=2)
    return folder, (np.concatenate(train_data), train_labels), (test_data, test_labels)


def write_cifar100(root: Path, n_train: int = 9, n_test: int = 5, seed: int = 1):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    splits = []
    for name, n, first in (("train", n_train, 10), ("test", n_test, 50)):
        data = make_data(rng, n, first)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = [f // 5 for f in fine]
        write_batch(folder / name, data, fine, b"fine_labels", {b"coarse_labels": coarse})
        splits.append((data, fine))
    with (folder / "meta").open("wb") as handle:
        meta = {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20}
        pickle.dump(meta, handle, protocol=2)
    return folder, splits[0], splits[1]


def reference_image(row: np.ndarray) -> np.ndarray:
    """Channel-major row of 3072 bytes → (3, 32, 32), by explicit loops."""
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for h in range(32):
            for w in range(32):
                image[c, h, w] = row[c * PLANE + h * 32 + w]
    return image


def check_split(split, data: np.ndarray, labels: list[int], first: int):
    n = len(labels)
    assert split.images.shape == (n, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == labels
    for j in (0, 1):  # constant planes in R, G, B order
        np.testing.assert_array_equal(split.images[j, 0], np.full((32, 32), first + j))
        np.testing.assert_array_equal(split.images[j, 1], np.full((32, 32), 100 + j))
        np.testing.assert_array_equal(split.images[j, 2], np.full((32, 32), 200))
    for j in (2, n - 1):  # random content, element by element
        np.testing.assert_array_equal(split.images[j].numpy(), reference_image(data[j]))


def test_cifar10_round_trip(tmp_path):
    _, (train_data, train_labels), (test_data, test_labels) = write_cifar10(tmp_path)
    data = load_dataset("cifar10", root=str(tmp_path))
    assert data.name == "cifar10" and data.num_classes == 10 and data.image_shape == (3, 32, 32)
    check_split(data.train, train_data, train_labels, first=10)
    check_split(data.test, test_data, test_labels, first=70)
    # batch order: image 0 of data_batch_3 sits at position 2·4
    assert (data.train.images[8, 0] == 30).all()
    # mean/std: per-channel train statistics in [0, 1] units
    unit = np.stack([reference_image(r) for r in train_data]).astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, unit.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(data.std, unit.std(axis=(0, 2, 3)), rtol=1e-10)


def test_cifar100_round_trip_fine_labels(tmp_path):
    _, (train_data, train_fine), (test_data, test_fine) = write_cifar100(tmp_path)
    data = load_dataset("cifar100", root=tmp_path)
    assert data.name == "cifar100" and data.num_classes == 100
    check_split(data.train, train_data, train_fine, first=10)
    check_split(data.test, test_data, test_fine, first=50)


@pytest.mark.parametrize(
    ("name", "writer"), [("cifar10", write_cifar10), ("cifar100", write_cifar100)]
)
def test_root_may_point_at_the_inner_folder(tmp_path, name, writer):
    folder, (_, train_labels), _ = writer(tmp_path)
    data = load_dataset(name, root=str(folder))
    assert data.train.labels.tolist() == train_labels


def test_missing_files_name_them(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert (
        "data_batch_1" in message and "test_batch" in message and "missing: data_batch_3" in message
    )
    assert str(folder) in message and "download=True" in message
    with pytest.raises(FileNotFoundError, match=r"missing: train, test.*download=True"):
        load_dataset("cifar100", root=str(tmp_path / "nowhere"))


def test_wrong_file_content_is_reported(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    write_batch(folder / "data_batch_2", np.zeros((2, 3072), np.uint8), [0, 1], b"fine_labels")
    with pytest.raises(ValueError, match=r"data_batch_2 is not a cifar10 batch"):
        load_dataset("cifar10", root=str(tmp_path))


def test_download_fetches_with_torchvision_then_reads(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = load_dataset("cifar10", root=str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True)] and len(data.train) == 20
    load_dataset("cifar10", root=str(tmp_path), download=True)  # present: no second fetch
    assert len(calls) == 1
