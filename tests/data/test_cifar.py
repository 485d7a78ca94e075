"""The CIFAR reader against fixtures written in the exact on-disk python-pickle format."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protolib import DATASETS
from protolib.data import Split, load_dataset
from protolib.data.datasets import CifarFileError
from tests import launcher

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
    # the registry facts (resources.py) agree; the real archive holds 50 000 + 10 000 images
    facts = DATASETS.facts("cifar10")
    assert (facts["num_classes"], facts["image_shape"], facts["size"]) == (10, (3, 32, 32), 60000)
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
    facts = DATASETS.facts("cifar100")
    assert (facts["num_classes"], facts["image_shape"], facts["size"]) == (100, (3, 32, 32), 60000)
    assert data.image_shape == (3, 32, 32)
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
    import torchvision.datasets  # here, not at collection: it imports torch._dynamo

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


# ----------------------------------------------------------------- the archive's own format


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote the CIFAR archives (protocol 2): str as
    (SHORT_)BINSTRING, small ints as BININT*, numpy arrays through
    ``numpy.core.multiarray._reconstruct`` with a ``numpy.dtype`` state tuple."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        short = len(b) < 256
        out.extend((b"U" + bytes([len(b)])) if short else (b"T" + struct.pack("<I", len(b))))
        out.extend(b)

    def emit(o) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, tuple | list | dict):
            out.extend({tuple: b"(", list: b"](", dict: b"}("}[type(o)])
            for item in o.items() if isinstance(o, dict) else o:
                for x in item if isinstance(o, dict) else (item,):
                    emit(x)
            out.extend({tuple: b"t", list: b"e", dict: b"u"}[type(o)])
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3 REDUCE, then the state tuple
            emit(1)
            emit(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((o.dtype.str[1:].encode(), 0, 1))
            out.extend(b"R")
            emit((3, o.dtype.str[:1].encode(), None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    return bytes(out + b".")


def test_a_batch_in_the_archives_python2_format_loads(tmp_path):
    """Globals spelled ``numpy.core.multiarray`` (as in the real files), bytes keys, data
    as one uint8 array, labels as a list: read exactly."""
    folder, _, (test_data, test_labels) = write_cifar10(tmp_path)
    rng = np.random.default_rng(5)
    data = make_data(rng, 300, first=40)  # 921 600 bytes: BINSTRING, not SHORT_BINSTRING
    labels = [int(v) for v in rng.integers(0, 10, size=300)]
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data}
    entry[b"filenames"] = [b"x.png"] * 300
    raw = py2_pickle(entry)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert pickle.loads(raw, encoding="bytes")[b"labels"] == labels  # a well-formed pickle
    (folder / "data_batch_1").write_bytes(raw)
    loaded = load_dataset("cifar10", root=str(tmp_path))
    assert len(loaded.train) == 300 + 4 * 4
    check_split(Split(loaded.train.images[:300], loaded.train.labels[:300]), data, labels, first=40)
    check_split(loaded.test, test_data, test_labels, first=70)


# ------------------------------------------------------------------- nothing is executed


class _Payload:
    """Unpickling this calls ``call(*args)``: what a crafted dataset folder would do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name → (pickle bytes that would create ``marker``, the global the error names)."""
    quoted = shlex.quote(str(marker))
    system = _Payload(os.system, f"touch {quoted}")

    def dump(obj) -> bytes:
        return pickle.dumps(obj, protocol=2, fix_imports=False)

    return {
        "os.system": (dump(system), f"{os.system.__module__}.system"),
        "open": (dump(_Payload(open, str(marker), "w")), "io.open"),
        "exec": (dump(_Payload(exec, f"open({str(marker)!r}, 'w')")), "builtins.exec"),
        "subprocess.call": (
            dump(_Payload(subprocess.call, ["touch", str(marker)])),
            "subprocess.call",
        ),
        "protocol 0, os.system": (f"cos\nsystem\n(S'touch {quoted}'\ntR.".encode(), "os.system"),
        "inside a valid batch": (
            dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [system]}),
            f"{os.system.__module__}.system",
        ),
    }


PAYLOADS = list(_payloads(Path("x")))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_batch_runs_no_code_and_is_refused_in_one_line(tmp_path, payload):
    folder, _, _ = write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    raw, refused = _payloads(marker)[payload]
    (folder / "data_batch_3").write_bytes(raw)
    with pytest.raises(ValueError) as error:
        load_dataset("cifar10", root=str(tmp_path / "data"))
    assert not marker.exists()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{folder / 'data_batch_3'} is not a cifar10 batch: ")
    assert f"it refers to {refused}," in message
    # the payload is real: plain pickle.load in a child process does create the marker
    unsafe = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run(
        [sys.executable, "-c", unsafe, str(folder / "data_batch_3")],
        check=False,
        capture_output=True,
    )
    assert marker.exists()


# ---------------------------------------------------------------------- garbage is refused


def _good(n: int = 4) -> dict:
    return {b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}


GARBAGE = {
    "random bytes": (
        lambda: np.random.default_rng(0).bytes(5000),
        r"not a readable pickle \(\w+Error: ",
    ),
    "truncated pickle": (
        lambda: pickle.dumps(_good(), protocol=2)[:3000],
        r"not a readable pickle \(\w+Error: ",
    ),
    "bytes after the pickle": (
        lambda: pickle.dumps(_good(), protocol=2) + b"\x00",
        r"bytes follow the end of the pickle",
    ),
    "a list": (
        lambda: pickle.dumps([1, 2], protocol=2),
        r"need a dict with keys b'data' and b'labels', found list",
    ),
    "no data key": (
        lambda: pickle.dumps({b"labels": [0]}, protocol=2),
        r"need a dict with keys b'data' and b'labels', found \[\"b'labels'\"\]",
    ),
    "data of the wrong shape": (
        lambda: pickle.dumps({**_good(), b"data": np.zeros((4, 3071), np.uint8)}, protocol=2),
        r"b'data' must be a uint8 array of shape \(N, 3072\) with N >= 1, got uint8 \(4, 3071\)",
    ),
    "data of the wrong dtype": (
        lambda: pickle.dumps({**_good(), b"data": np.full((4, 3072), 300, np.int64)}, protocol=2),
        r"b'data' must be a uint8 array .*, got int64 \(4, 3072\)",
    ),
    "data as bytes": (
        lambda: pickle.dumps({**_good(), b"data": bytes(4 * 3072)}, protocol=2),
        r"b'data' must be a uint8 array .*, got a bytes",
    ),
    "no images": (
        lambda: py2_pickle({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}),
        r"b'data' must be a uint8 array of shape \(N, 3072\) with N >= 1, got uint8 \(0, 3072\)",
    ),
    "a label of 10": (
        lambda: pickle.dumps({**_good(), b"labels": [0, 10, 3, 1]}, protocol=2),
        r"labels must lie in 0\.\.9, got 0\.\.10",
    ),
    "a negative label": (
        lambda: pickle.dumps({**_good(), b"labels": [0, -1, 3, 1]}, protocol=2),
        r"labels must lie in 0\.\.9, got -1\.\.3",
    ),
    "a label beyond int64": (
        lambda: pickle.dumps({**_good(), b"labels": [0, 2**70, 3, 1]}, protocol=2),
        r"labels must lie in 0\.\.9, got 0\.\.1180591620717411303424",
    ),
    "float labels": (
        lambda: pickle.dumps({**_good(), b"labels": [0, 1.5, 3, 1]}, protocol=2),
        r"b'labels' must be a list of ints, got a list with non-integer entries",
    ),
    "too few labels": (
        lambda: pickle.dumps({**_good(), b"labels": [0, 1, 2]}, protocol=2),
        r"4 images but 3 labels in b'labels'; need one label per image",
    ),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_a_garbage_batch_is_refused_in_one_line_naming_file_and_fault(tmp_path, case):
    folder, _, _ = write_cifar10(tmp_path)
    make, expected = GARBAGE[case]
    (folder / "test_batch").write_bytes(make())
    with pytest.raises(CifarFileError) as error:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert re.match(
        re.escape(f"{folder / 'test_batch'} is not a cifar10 batch: ") + expected, message
    ), message


def test_cifar100_checks_its_own_label_key_and_range(tmp_path):
    folder, _, _ = write_cifar100(tmp_path)
    write_batch(
        folder / "test", make_data(np.random.default_rng(0), 2, 0), [0, 100], b"fine_labels"
    )
    with pytest.raises(
        CifarFileError,
        match=r"test is not a cifar100 batch: labels must lie in 0\.\.99, got 0\.\.100$",
    ):
        load_dataset("cifar100", root=str(tmp_path))


def test_protolib_train_reports_a_bad_batch_in_one_line_and_writes_nothing(tmp_path):
    """End to end (one case: the garbage cases share its exception): exit 2, one line
    naming the file, no run directory, and the crafted file's command never ran."""
    folder, _, _ = write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    (folder / "data_batch_1").write_bytes(_payloads(marker)["os.system"][0])
    out = tmp_path / "run"
    result = launcher.run(
        [
            str(Path(sys.executable).parent / "protolib"),
            "train",
            "--out",
            str(out),
            "--set",
            "dataset=cifar10",
            "--set",
            "dataset_options=" + json.dumps({"root": str(tmp_path / "data")}),
        ],
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("protolib train: error: ")
    assert f"{folder / 'data_batch_1'} is not a cifar10 batch: " in lines[0]
    assert not out.exists() and not marker.exists()
