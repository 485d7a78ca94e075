"""Datasets as in-memory tensors: train/test splits with their normalisation statistics.

Each named dataset registered in :data:`~protolib.registry.DATASETS` is a function taking
keyword-only options and returning :class:`DatasetSplits`; :func:`load_dataset` calls it by
name. Images are ``(N, C, H, W)``, either ``uint8`` (0..255, kept compact for CIFAR) or
``float32`` in ``[0, 1]``; labels are ``int64`` ``(N,)``. The test split is never
resampled here: imbalance and label noise (MATH.md §6) apply to the training split only,
through :mod:`protolib.data.transforms`.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from protolib.registry import DATASETS

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


@dataclass(frozen=True)
class Split:
    """One split: ``images`` ``(N, C, H, W)`` (uint8 0..255 or float32 in [0, 1]) and
    ``labels`` int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images)
            raise ValueError(f"split images must be a tensor of shape (N, C, H, W), got {shape}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"split images must be uint8 or float32, got {images.dtype}")
        n = images.shape[0]
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (n,):
            got = (
                f"{labels.dtype} {tuple(labels.shape)}"
                if isinstance(labels, Tensor)
                else type(labels)
            )
            raise ValueError(f"split labels must be an int64 tensor of shape ({n},), got {got}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset: its ``train`` and ``test`` splits, class count, and the per-channel
    ``mean``/``std`` of the train split in ``[0, 1]`` units (population std)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.train.images.shape
        return (c, h, w)


def load_dataset(name: str, **options: Any) -> DatasetSplits:
    """The dataset registered under ``name``, built with ``options`` (see each loader)."""
    return DATASETS.create(name, **options)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``images`` ``(N, C, H, W)`` in [0, 1] units.

    uint8 images are summarised exactly through one 256-bin histogram per channel (no
    float copy of the data); float images in float64.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    channels = images.shape[1]
    if images.dtype == torch.uint8:
        values = torch.arange(256, dtype=torch.float64) / 255.0
        means, stds = [], []
        for c in range(channels):
            counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
            total = counts.sum()
            mean = (counts * values).sum() / total
            var = (counts * (values - mean) ** 2).sum() / total
            means.append(float(mean))
            stds.append(float(var.sqrt()))
        return tuple(means), tuple(stds)
    flat = images.transpose(0, 1).reshape(channels, -1).double()
    std, mean = torch.std_mean(flat, dim=1, correction=0)
    return tuple(mean.tolist()), tuple(std.tolist())


def _make_splits(name: str, train: Split, test: Split, num_classes: int) -> DatasetSplits:
    mean, std = channel_stats(train.images)
    return DatasetSplits(name, train, test, num_classes, mean, std)


# ------------------------------------------------------------------------------- digits


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
        raise ValueError(f"digits: cannot read {path}: {_one_line(error)}") from None
    if table.shape[1] != _DIGITS_COLUMNS or table.shape[0] == 0:
        raise ValueError(
            f"digits: {path} must hold rows of {_DIGITS_COLUMNS} numbers "
            f"(64 pixels, then the label), got shape {table.shape}"
        )
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@DATASETS.register("digits")
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
    return _make_splits(
        "digits",
        Split(images[train_idx].contiguous(), labels[train_idx]),
        Split(images[test_idx].contiguous(), labels[test_idx]),
        num_classes=10,
    )


# -------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    torchvision_class: str

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


_CIFAR10 = _CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key=b"labels",
    num_classes=10,
    torchvision_class="CIFAR10",
)
_CIFAR100 = _CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key=b"fine_labels",
    num_classes=100,
    torchvision_class="CIFAR100",
)


def _missing(folder: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _find_cifar_folder(layout: _CifarLayout, root: Path) -> Path | None:
    for candidate in (root / layout.folder, root):
        if not _missing(candidate, layout.files):
            return candidate
    return None


class CifarFileError(ValueError):
    """A CIFAR batch file that cannot be read or is not what the python-format archive
    holds (a ``ValueError``: ``protolib train`` reports it in one line, exit 2)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how protocol-2 pickles written by Python 3
    spell ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is allowed only on a str with encoding 'latin1', got "
            f"{type(text).__name__} with {encoding!r}"
        )
    return text.encode("latin1")


#: The only globals a CIFAR python batch refers to: numpy arrays (both spellings of the
#: numpy module that holds ``_reconstruct``) and bytes written by Python 3's protocol 2.
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, bytes, str, numbers and numpy
    arrays: any other global (``os.system``, ``builtins.eval``, …) is refused unresolved,
    so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("persistent_id", repr(pid)[:40])


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _unpickle_cifar(path: Path, layout: _CifarLayout) -> Any:
    """The object pickled in ``path``, read with :class:`_CifarUnpickler` (bytes keys, as
    the archive was written by Python 2); :class:`CifarFileError` when it is anything
    but one well-formed pickle of allowed objects."""
    what = f"{path} is not a {layout.name} batch"
    try:
        with path.open("rb") as handle:
            entry = _CifarUnpickler(handle, encoding="bytes").load()
            trailing = handle.read(1)
    except _RefusedGlobal as error:
        raise CifarFileError(
            f"{what}: it refers to {error.qualified}, which a CIFAR batch never does "
            "(it holds only dicts, lists, bytes, ints and numpy arrays); refusing to unpickle it"
        ) from None
    except OSError as error:
        raise CifarFileError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # untrusted bytes: any failure of the unpickler means garbage
        raise CifarFileError(
            f"{what}: not a readable pickle ({type(error).__name__}: {_one_line(error)})"
        ) from None
    if trailing:
        raise CifarFileError(f"{what}: bytes follow the end of the pickle")
    return entry


def _cifar_labels(value: Any, path: Path, layout: _CifarLayout) -> np.ndarray:
    key = layout.label_key
    if isinstance(value, list) and all(type(v) is int for v in value):
        if value and not (min(value) >= -(2**63) and max(value) < 2**63):  # beyond int64
            raise CifarFileError(
                f"{path} is not a {layout.name} batch: labels must lie in "
                f"0..{layout.num_classes - 1}, got {min(value)}..{max(value)}"
            )
        return np.asarray(value, dtype=np.int64).reshape(-1)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        return value.astype(np.int64)
    got = (
        f"an array of {value.dtype} with shape {value.shape}"
        if isinstance(value, np.ndarray)
        else f"a {type(value).__name__}"
        + (" with non-integer entries" if isinstance(value, list) else "")
    )
    raise CifarFileError(
        f"{path} is not a {layout.name} batch: {key!r} must be a list of ints, got {got}"
    )


def _read_cifar_file(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` of one python-format batch file,
    checked exactly: uint8 rows of 3 072 bytes, one label in ``0..K−1`` per row."""
    entry = _unpickle_cifar(path, layout)
    what = f"{path} is not a {layout.name} batch"
    if not isinstance(entry, dict) or b"data" not in entry or layout.label_key not in entry:
        keys = sorted(map(repr, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise CifarFileError(
            f"{what}: need a dict with keys b'data' and {layout.label_key!r}, found {keys}"
        )
    data = entry[b"data"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[0] > 0
        and data.shape[1] == 3 * 32 * 32
    ):
        got = (
            f"{data.dtype} {data.shape}"
            if isinstance(data, np.ndarray)
            else f"a {type(data).__name__}"
        )
        raise CifarFileError(
            f"{what}: b'data' must be a uint8 array of shape (N, 3072) with N >= 1, got {got}"
        )
    labels = _cifar_labels(entry[layout.label_key], path, layout)
    if labels.shape[0] != data.shape[0]:
        raise CifarFileError(
            f"{what}: {data.shape[0]} images but {labels.shape[0]} labels in "
            f"{layout.label_key!r}; need one label per image"
        )
    if labels.min() < 0 or labels.max() >= layout.num_classes:
        raise CifarFileError(
            f"{what}: labels must lie in 0..{layout.num_classes - 1}, "
            f"got {labels.min()}..{labels.max()}"
        )
    return data, labels


def _read_cifar_split(folder: Path, files: Sequence[str], layout: _CifarLayout) -> Split:
    parts = [_read_cifar_file(folder / f, layout) for f in files]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)  # R, G, B planes
    labels = np.concatenate([p[1] for p in parts])
    return Split(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels))


def _download_cifar(layout: _CifarLayout, root: Path) -> None:
    import torchvision.datasets

    getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)


def _load_cifar(layout: _CifarLayout, root: str | Path, download: bool) -> DatasetSplits:
    """Read a CIFAR dataset in the python-pickle format from ``root`` (or ``root/<folder>``)."""
    root = Path(root).expanduser()
    folder = _find_cifar_folder(layout, root)
    if folder is None and download:
        _download_cifar(layout, root)
        folder = _find_cifar_folder(layout, root)
    if folder is None:
        inner = root / layout.folder
        missing = _missing(inner, layout.files)
        raise FileNotFoundError(
            f"{layout.name}: expected files {', '.join(layout.files)} in {inner} (or in {root}); "
            f"missing: {', '.join(missing)}; pass download=True or point root at the folder "
            "that holds them"
        )
    return _make_splits(
        layout.name,
        _read_cifar_split(folder, layout.train_files, layout),
        _read_cifar_split(folder, layout.test_files, layout),
        num_classes=layout.num_classes,
    )


@DATASETS.register("cifar10")
def cifar10(*, root: str | Path, download: bool = False) -> DatasetSplits:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself): 50 000 train and
    10 000 test uint8 images ``(N, 3, 32, 32)``, 10 classes. ``download=True`` fetches the
    archive with torchvision when the files are missing."""
    return _load_cifar(_CIFAR10, root, download)


@DATASETS.register("cifar100")
def cifar100(*, root: str | Path, download: bool = False) -> DatasetSplits:
    """CIFAR-100 from ``root/cifar-100-python`` (or ``root`` itself), fine labels:
    50 000 train and 10 000 test uint8 images ``(N, 3, 32, 32)``, 100 classes.
    ``download=True`` fetches the archive with torchvision when the files are missing."""
    return _load_cifar(_CIFAR100, root, download)


# ---------------------------------------------------------------------------- synthetic

#: Pixel noise standard deviation at ``noise=1`` (images live in [0, 1]).
SYNTHETIC_NOISE_SCALE = 0.25


def _check_count(name: str, value: int, smallest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
        raise ValueError(f"synthetic: {name} must be an integer >= {smallest}, got {value!r}")


@DATASETS.register("synthetic")
def synthetic(
    *,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    train_size: int = 1000,
    test_size: int = 200,
    noise: float = 1.0,
    seed: int = 0,
) -> DatasetSplits:
    """Gaussian class clusters, for tests and speed measurements.

    Class centres ``μ_k`` are uniform in ``[0, 1]^{C×H×W}``; an image of class ``y`` is
    ``clip(μ_y + σ·ε, 0, 1)`` with ``ε ~ N(0, I)`` and ``σ = 0.25·noise``, float32. Labels
    are balanced (``i mod K``, then shuffled). Everything is drawn from
    ``numpy.random.default_rng(seed)``: centres, then train, then test.
    """
    _check_count("num_classes", num_classes, 2)
    _check_count("channels", channels, 1)
    _check_count("image_size", image_size, 1)
    _check_count("train_size", train_size, 1)
    _check_count("test_size", test_size, 1)
    if not isinstance(noise, int | float) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"synthetic: noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    shape = (channels, image_size, image_size)
    centres = rng.random((num_classes, *shape))
    sigma = SYNTHETIC_NOISE_SCALE * noise

    def draw(size: int) -> Split:
        labels = rng.permutation(np.arange(size) % num_classes)
        images = centres[labels] + sigma * rng.standard_normal((size, *shape))
        images = np.clip(images, 0.0, 1.0).astype(np.float32)
        return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    train = draw(train_size)
    test = draw(test_size)
    return _make_splits("synthetic", train, test, num_classes)
