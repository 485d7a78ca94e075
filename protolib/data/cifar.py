"""CIFAR-10 and CIFAR-100 in the python-pickle format, read with an unpickler that builds
nothing but containers, numbers and numpy arrays (a crafted file cannot run code)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protolib.data.splits import DatasetSplits, Split, make_splits
from protolib.io import one_line
from protolib.registry import DATASETS

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


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
            f"{what}: not a readable pickle ({type(error).__name__}: {one_line(error)})"
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
    return make_splits(
        layout.name,
        _read_cifar_split(folder, layout.train_files, layout),
        _read_cifar_split(folder, layout.test_files, layout),
        num_classes=layout.num_classes,
    )


@DATASETS.register("cifar10", size=60000, num_classes=10, image_shape=(3, 32, 32))
def cifar10(*, root: str | Path, download: bool = False) -> DatasetSplits:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself): 50 000 train and
    10 000 test uint8 images ``(N, 3, 32, 32)``, 10 classes. ``download=True`` fetches the
    archive with torchvision when the files are missing."""
    return _load_cifar(_CIFAR10, root, download)


@DATASETS.register("cifar100", size=60000, num_classes=100, image_shape=(3, 32, 32))
def cifar100(*, root: str | Path, download: bool = False) -> DatasetSplits:
    """CIFAR-100 from ``root/cifar-100-python`` (or ``root`` itself), fine labels:
    50 000 train and 10 000 test uint8 images ``(N, 3, 32, 32)``, 100 classes.
    ``download=True`` fetches the archive with torchvision when the files are missing."""
    return _load_cifar(_CIFAR100, root, download)
