"""scikit-learn's bundled handwritten digits (1 797 real 8×8 images, 10 classes), read
without importing scikit-learn, and the seeded stratified train/test split."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from protolib.data.splits import DatasetSplits, Split, make_splits
from protolib.io import one_line
from protolib.registry import DATASETS


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` (sorted int64 arrays) of a seeded stratified split.

    Each class ``c`` with ``n_c`` points sends ``round(test_fraction·n_c)`` of them, clamped
    to ``1..n_c−1``, to the test side, chosen by ``numpy.random.default_rng(seed)``; classes
    are visited in increasing order, so the split is deterministic across runs.
    """
    if not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(members))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


#: where scikit-learn keeps the digits, relative to its package folder
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")
_DIGITS_COLUMNS = 8 * 8 + 1  # 64 pixels, then the label


def digits_file() -> Path:
    """The ``digits.csv.gz`` that scikit-learn ships, found without importing scikit-learn.

    ``importlib.util.find_spec("sklearn")`` locates the package folder without running its
    ``__init__`` (which takes about a second). Raises ``FileNotFoundError`` when
    scikit-learn is not installed or the file is missing.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise FileNotFoundError(
            "digits: scikit-learn is not installed, and its bundled file "
            f"sklearn/{'/'.join(DIGITS_FILE)} holds the digits data; "
            "install it with: pip install scikit-learn"
        )
    path = Path(folders[0], *DIGITS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits: {path} is missing from the scikit-learn installation; "
            "reinstall it with: pip install --force-reinstall scikit-learn"
        )
    return path


def read_digits(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64)`` from ``path``
    (default :func:`digits_file`): the arrays of ``sklearn.datasets.load_digits()``
    (``images`` and ``target``), parsed with numpy."""
    path = digits_file() if path is None else Path(path)
    try:
        with gzip.open(path, "rt", encoding="ascii") as handle:
            table = np.loadtxt(handle, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"digits: cannot read {path}: {one_line(error)}") from None
    if table.shape[1] != _DIGITS_COLUMNS or table.shape[0] == 0:
        raise ValueError(
            f"digits: {path} must hold rows of {_DIGITS_COLUMNS} numbers "
            f"(64 pixels, then the label), got shape {table.shape}"
        )
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@DATASETS.register("digits", size=1797, num_classes=10, image_shape=(1, 8, 8))
def digits(*, test_fraction: float = 0.25, split_seed: int = 0) -> DatasetSplits:
    """scikit-learn's bundled handwritten digits: 1 797 real 8×8 images, 10 classes.

    Read by :func:`read_digits` (scikit-learn's file, without importing scikit-learn).
    Pixel values 0..16 become float32 ``/16`` in shape ``(N, 1, 8, 8)``; the train/test
    split is :func:`stratified_split` with ``test_fraction`` and ``split_seed``.
    """
    raw_images, target = read_digits()
    images = torch.from_numpy((raw_images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(target)
    train_idx, test_idx = stratified_split(target, test_fraction, split_seed)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return make_splits(
        "digits",
        Split(images[train_idx].contiguous(), labels[train_idx]),
        Split(images[test_idx].contiguous(), labels[test_idx]),
        num_classes=10,
    )
