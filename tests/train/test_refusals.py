"""`protolib train` refuses every bad input before any work: one line, exit 2, nothing
written; and runs that go wrong part-way (a full disk) lose nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from protolib.cli import main as cli_main
from protolib.train import ConfigError, RunConfig, prepare
from tests import launcher
from tests.conftest import tiny_run

# a tiny valid run (about half a second in-process)
TINY = tiny_run(iterations=30, eval_every=10, checkpoint_every=10, threads=1)


def write_json_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def train(capsys, *args: str) -> tuple[int, str]:
    """Run `protolib train ARGS` in this process; its exit status and stderr."""
    code = cli_main(["train", "--no-progress", *args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *needles: str) -> None:
    """Exit 2 with exactly one non-empty line on stderr, holding every needle."""
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("protolib train: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` with its size, mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny run, for its checkpoint and as a reference."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli_main(["train", "--no-progress", "--out", str(out), *sets(TINY)]) == 0
    return out


def sets(config: dict) -> list[str]:
    """``--set KEY=JSON`` arguments for ``config``."""
    return [a for key, value in config.items() for a in ("--set", f"{key}={json.dumps(value)}")]


# ---------------------------------------------------------------- 1. empty classes


def digits_largest_ratio() -> int:
    """The largest STEP ratio that leaves every digits class a training point, computed
    from scikit-learn's digits and the documented split (round(0.25·n_c) of each class
    to the test side; classes ⌈10/2⌉ = 5.. are the minority, each keeps ⌊n_c/R⌋)."""
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target, minlength=10)
    train_counts = [int(n) - round(0.25 * int(n)) for n in counts]
    return min(train_counts[5:])


def test_imbalance_that_empties_a_class_is_refused(tmp_path, capsys):
    largest = digits_largest_ratio()
    assert largest == 130  # digits: class 8 has 174 images, 130 of them in training
    config = write_json_text(tmp_path / "r.json", json.dumps({**TINY, "imbalance_ratio": 200}))
    out = tmp_path / "run"
    code, err = train(capsys, "--config", str(config), "--out", str(out))
    assert_refused(
        code, err, "imbalance_ratio", f"largest valid imbalance_ratio for this dataset is {largest}"
    )
    assert not out.exists()
    # the boundary: R = largest keeps one image of the smallest minority class, R + 1 none
    prep = prepare(RunConfig.from_dict({**TINY, "imbalance_ratio": largest}))
    counts = torch.bincount(prep.original_labels, minlength=10)
    assert int(counts.min()) == 1 and bool((counts > 0).all())
    with pytest.raises(ConfigError, match=f"is {largest}$"):
        prepare(RunConfig.from_dict({**TINY, "imbalance_ratio": largest + 1}))


# ------------------------------------------------------------- 2. numbers in range

NOT_FINITE = [
    ('"lr": Infinity', "lr"),
    ('"lr": 1e400', "lr"),  # JSON's overflowing literal is an infinity in Python
    ('"probe_lr": -Infinity', "probe_lr"),
    ('"weight_decay": NaN', "weight_decay"),
    ('"weight_decay": Infinity', "weight_decay"),
    ('"poly_power": NaN', "poly_power"),
    ('"lr_factor": NaN', "lr_factor"),
    ('"momentum": NaN', "momentum"),
    ('"imbalance_ratio": NaN', "imbalance_ratio"),
    ('"label_corruption": NaN', "label_corruption"),
    ('"loss": "supcon", "loss_options": {"tau": NaN}', "loss_options.tau"),
    ('"model_options": {"widths": [16, NaN], "out_dim": 8}', "model_options.widths[1]"),
    ('"dataset_options": {"test_fraction": Infinity}', "dataset_options.test_fraction"),
    (
        '"loss": "supcon", "n_w": 2, "geometry": "from_gram", '
        '"geometry_options": {"gram": [[1, NaN], [0, 1]]}',
        "geometry_options.gram[0][1]",
    ),
]


@pytest.mark.parametrize(("entry", "key"), NOT_FINITE, ids=[k for _, k in NOT_FINITE])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, capsys, entry, key):
    base = json.dumps({k: v for k, v in TINY.items() if k != "model_options"})
    text = base[:-1] + ", " + entry + "}"
    if '"model_options"' not in entry:
        text = text[:-1] + ', "model_options": {"widths": [16], "out_dim": 8}}'
    config = write_json_text(tmp_path / "c.json", text)
    out = tmp_path / "run"
    code, err = train(capsys, "--config", str(config), "--out", str(out))
    assert_refused(code, err, key)
    assert not out.exists()
    assert err.split("error: ")[1].startswith(key), err  # the message begins with the key


STEP = [
    ("lr_factor", -0.5, "lr_factor must be a finite number > 0, got -0.5"),
    ("lr_factor", 0, "lr_factor must be a finite number > 0, got 0"),
    ("poly_power", -1, "poly_power must be a finite number > 0, got -1"),
]

BOUNDS = [
    ("batch_size", 1_000_000_000, "batch_size must be an integer in 1..1048576, got 1000000000"),
    ("eval_batch_size", 2**21, "eval_batch_size must be an integer in 1..1048576, got 2097152"),
    ("views", 1000, "views must be an integer in 1..64, got 1000"),
    ("crop_padding", 100_000, "crop_padding must be an integer in 0..1024, got 100000"),
    ("crop_padding", 9, "crop_padding must be at most the image size 8 for digits"),
    ("iterations", 10**12, "iterations must be an integer in 1..1000000000 or null"),
    ("n_w", 10**6, "n_w must be an integer in 0..10000, got 1000000"),
    ("threads", 10**6, "threads must be an integer in 1..1024 or null, got 1000000"),
    ("projector_dim", 10**9, "projector_dim must be an integer in 1..65536"),
    ("eval_every", 0, "eval_every must be an integer in 1..1000000000, got 0"),
    ("probe_iterations", -1, "probe_iterations must be an integer in 0..1000000000, got -1"),
    ("seed", -1, "seed must be an integer in 0..4294967295, got -1"),
    ("seed", 2**70, f"seed must be an integer in 0..4294967295, got {2**70}"),
    ("seed", 2**64, f"seed must be an integer in 0..4294967295, got {2**64}"),
    ("lr", 10**400, "lr is out of range: integers must lie within"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        *STEP,
        *BOUNDS,
        ("epochs", 10**7, "epochs must be an integer in 1..1000000 or null, got 10000000"),
    ],
    ids=[f"{k}={str(v)[:12]}" for k, v, _ in [*STEP, *BOUNDS, ("epochs", 0, "")]],
)
def test_out_of_range_numbers_are_refused_with_the_range(tmp_path, capsys, key, value, message):
    data = {**TINY, key: value}
    if key == "epochs":
        data["iterations"] = None
    if key == "n_w":
        data["loss"] = "supcon"
    config = write_json_text(tmp_path / "c.json", json.dumps(data))
    out = tmp_path / "run"
    code, err = train(capsys, "--config", str(config), "--out", str(out))
    assert_refused(code, err, message)
    assert not out.exists()


def test_bounds_are_what_seeding_and_the_image_accept():
    """The largest seed both numpy and torch take is allowed; so is padding = image size."""
    largest = 2**32 - 1
    np.random.default_rng(largest)
    np.random.SeedSequence(largest)
    torch.Generator().manual_seed(largest)
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    prep = prepare(RunConfig.from_dict({**TINY, "seed": largest, "crop_padding": 8}))
    assert prep.config.seed == largest


# ------------------------------------------------------------------- 3. config files

NOT_AN_OBJECT = [
    ("list", b"[1, 2]", "must hold a JSON object ({...}), got a list"),
    ("string", b'"lr"', "must hold a JSON object ({...}), got a string"),
    ("null", b"null", "must hold a JSON object ({...}), got null"),
    ("number", b"3", "must hold a JSON object ({...}), got a number"),
    ("empty", b"", "is not valid JSON"),
    ("garbage", bytes(range(128, 256)) * 4, "is not UTF-8 text"),
    ("nul", b"\x00\x01\x02", "is not valid JSON"),
    ("duplicate", b'{"lr": 0.1, "lr": 0.5}', "gives key 'lr' twice"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "run config"),
    ("long-int", b'{"seed": ' + b"9" * 5000 + b"}", "run config"),
]


@pytest.mark.parametrize(
    ("raw", "message"), [c[1:] for c in NOT_AN_OBJECT], ids=[c[0] for c in NOT_AN_OBJECT]
)
def test_config_file_that_is_not_a_run_config(tmp_path, capsys, monkeypatch, raw, message):
    path = tmp_path / "c.json"
    path.write_bytes(raw)
    out = tmp_path / "run"
    code, err = train(capsys, "--config", str(path), "--out", str(out))
    assert_refused(code, err, message, str(path))
    assert not out.exists()
    # the same bytes on standard input
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code, err = train(capsys, "--config", "-", "--out", str(out))
    assert_refused(code, err, message, "standard input")
    assert not out.exists()


def test_config_path_that_is_a_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = train(capsys, "--config", str(tmp_path), "--out", str(out))
    assert_refused(code, err, "is a directory, not a JSON file")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lr=NaN"], "lr must be a finite number, got nan"),
        (["--set", "weight_decay=-Infinity"], "weight_decay must be a finite number"),
        (["--set", 'loss_options={"tau": NaN}', "--set", "loss=supcon"], "loss_options.tau"),
        (["--set", "lr"], "--set expects KEY=VALUE, got 'lr'"),
        (["--set", "=3"], "--set expects KEY=VALUE"),
        (["--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice"),
        (["--threads", "100000"], "--threads must be an integer in 1..1024"),
    ],
)
def test_bad_set_values_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = train(capsys, "--out", str(out), *args)
    assert_refused(code, err, message)
    assert not out.exists()


# ------------------------------------------------------------------ 4. --out problems


def test_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, err = train(capsys, "--out", str(target), *sets(TINY))
    assert_refused(code, err, f"--out {target} is an existing file, not a directory")
    assert target.read_text() == "keep me"
    code, err = train(capsys, "--out", str(target / "run"), *sets(TINY))
    assert_refused(code, err, f"lies under {target}, which is an existing file")
    assert target.read_text() == "keep me"


def _mount_tmpfs(path: Path, options: str) -> str | None:
    """Mount a tmpfs at ``path``; None on success, else why it could not be."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if result.returncode == 0 else f"mount failed: {result.stderr.strip()}"


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty directory no process may write into: a read-only tmpfs as root (where
    permission bits do not stop root), a chmod 0555 directory otherwise."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    why = _mount_tmpfs(folder, "ro,size=1m")
    if why is not None:  # a container without CAP_SYS_ADMIN: try the immutable attribute
        folder.mkdir(exist_ok=True)
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot make a directory read-only for root: {why}; chattr failed")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=False)
        return
    yield folder
    _umount(folder)


def test_read_only_out_is_one_line(read_only_dir, capsys):
    for out in (read_only_dir, read_only_dir / "run"):
        code, err = train(capsys, "--out", str(out), *sets(TINY))
        assert_refused(code, err, f"cannot write the run directory {out}")
        assert list(read_only_dir.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    folder = tmp_path / "small"
    why = _mount_tmpfs(folder, "size=8k")
    if why is not None:
        pytest.skip(f"a full-filesystem test needs a small tmpfs: {why}")
    yield folder
    _umount(folder)


def test_full_disk_is_one_line_and_loses_nothing(small_tmpfs, finished, capsys):
    """A disk that fills part-way: one line naming it, no half-written file; after space
    is freed the same command finishes the run, with the reference run's metrics."""
    checkpoint = (finished / "checkpoint.pt").stat().st_size
    # room for the lock, config.json and one resume.pt: the second (written beside the
    # first, atomically) does not fit
    size = 4096 * (2 + -(-int(1.5 * checkpoint) // 4096))
    subprocess.run(["mount", "-o", f"remount,size={size}", str(small_tmpfs)], check=True)
    out = small_tmpfs / "run"
    code, err = train(capsys, "--out", str(out), *sets(TINY))
    assert code == 2, err
    # the log of the steps run so far, then one line saying what went wrong
    *log, last = err.splitlines()
    assert last.startswith(f"protolib train: error: no space left on {out} "), err
    assert all(line.startswith("[run] ") for line in log), err
    names = sorted(p.name for p in out.iterdir())
    assert "summary.json" not in names and not [n for n in names if n.endswith(".tmp")], names
    assert json.loads((out / "config.json").read_text()) == RunConfig.from_dict(TINY).to_dict()
    # the step-10 checkpoint fitted, the step-20 one (beside it until renamed) did not
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 10
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    code, err = train(capsys, "--out", str(out), *sets(TINY))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [a["start_step"] for a in summary["attempts"]] == [0, 10]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "metrics.parquet"),
        pd.read_parquet(finished / "metrics.parquet"),
        check_exact=True,
    )


# ------------------------------------------------------------- 5. foreign resume.pt


def _foreign_states(finished: Path) -> dict[str, tuple[bytes, str]]:
    """name → (resume.pt bytes, what the refusal must say)."""
    state = torch.load(finished / "checkpoint.pt", weights_only=True)

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    other_config = dict(state, config={**state["config"], "lr": 0.5})
    other_shape = dict(
        state,
        config=RunConfig.from_dict(
            {**TINY, "model_options": {"widths": [32], "out_dim": 8}}
        ).to_dict(),
    )
    return {
        "garbage": (os.urandom(4096), "is not a protolib checkpoint (it is not a torch"),
        "empty": (b"", "is not a protolib checkpoint (it is empty)"),
        "tensor": (saved(torch.zeros(3)), "is not a protolib checkpoint (it holds a Tensor)"),
        "other-format": (saved({"format": 7, "weights": torch.zeros(2)}), "of format 1 (format 7)"),
        "missing-keys": (saved({"format": 1, "config": state["config"]}), "missing step, status"),
        "pickled-object": (
            saved({"format": 1, "path": Path("x")}),
            "is not a protolib checkpoint (it holds objects other than tensors",
        ),
        "other-config": (saved(other_config), "holds an interrupted run with a different config"),
        "other-shape": (
            saved(other_shape),
            "does not fit this run (Error(s) in loading state_dict",
        ),
    }


def test_foreign_or_corrupt_resume_state_is_refused(tmp_path, capsys, finished):
    for name, (raw, message) in _foreign_states(finished).items():
        out = tmp_path / name
        out.mkdir()
        (out / "resume.pt").write_bytes(raw)
        config = TINY
        if name == "other-shape":
            config = {**TINY, "model_options": {"widths": [32], "out_dim": 8}}
        before = snapshot(out)
        code, err = train(capsys, "--out", str(out), *sets(config))
        assert_refused(code, err, str(out / "resume.pt"), message)
        if name != "other-config":
            assert "delete it to start the run over" in err, err
        assert snapshot(out) == before, name


# ------------------------------------------------------ 6. one process per directory

LONG = {**TINY, "iterations": 2000, "eval_every": 10, "checkpoint_every": 10}


def _cli(*args: str, **kw) -> launcher.Process:
    return launcher.Process(
        [sys.executable, "-m", "protolib.cli", "train", "--no-progress", *args], **kw
    )


def test_second_process_on_a_run_directory_is_refused(tmp_path):
    """Two real `protolib train` processes on one --out: the second gets one line naming
    the first's pid and changes nothing; the first, SIGKILLed, leaves a usable directory."""
    out = tmp_path / "run"
    config = write_json_text(tmp_path / "long.json", json.dumps(LONG))
    first = _cli("--config", str(config), "--out", str(out))
    try:
        deadline = time.time() + 120
        while not (out / "resume.pt").exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(first.pid, 19)  # SIGSTOP: the first holds the lock while the second tries
        time.sleep(0.2)
        before = snapshot(out)
        assert (out / ".lock").read_text().strip() == str(first.pid)
        second = _cli("--config", str(config), "--out", str(out))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.splitlines() == [
            f"protolib train: error: {out} is in use by another protolib train process "
            f"(pid {first.pid}); wait for it to finish or stop it, or use another --out"
        ]
        assert snapshot(out) == before
    finally:
        first.kill()  # SIGKILL, even while stopped: the kernel drops its lock
        first.communicate(timeout=60)
    assert (out / ".lock").exists()  # left behind by the killed process, but not locked
    third = _cli("--config", str(config), "--out", str(out))
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == LONG["iterations"]
    assert summary["attempts"][-1]["start_step"] > 0  # resumed from the killed run's state
    assert not (out / ".lock").exists()


def test_finished_run_is_read_under_the_lock(tmp_path, capsys, finished):
    """Even the "already finished" short cut waits for no one: a held lock refuses it."""
    from protolib.train.lock import RunDirectoryLock

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with RunDirectoryLock(out):
        code, err = train(capsys, "--out", str(out), *sets(TINY))
        assert_refused(code, err, "is in use by another protolib train process", str(os.getpid()))
    code, err = train(capsys, "--out", str(out), *sets(TINY))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in finished.iterdir())


# -------------------------------------------------------------------- 7. plugins

BROKEN_PLUGINS = {
    "zero_division": ("x = 1 / 0\n", "ZeroDivisionError: division by zero"),
    "syntax_error": ("def f(:\n    pass\n", "SyntaxError: invalid syntax"),
    "system_exit": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "missing_dependency": ("import no_such_module_xyz\n", "No module named 'no_such_module_xyz'"),
    "multi_line": ("raise RuntimeError('first\\nsecond')\n", "RuntimeError: first second"),
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch) -> Path:
    """A folder of real plugin modules that fail on import, on sys.path."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, (source, _) in BROKEN_PLUGINS.items():
        (folder / f"broken_{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in BROKEN_PLUGINS:
        sys.modules.pop(f"broken_{name}", None)


@pytest.mark.parametrize("name", list(BROKEN_PLUGINS))
def test_plugin_that_fails_on_import_is_one_line(tmp_path, capsys, broken_plugins, name):
    out = tmp_path / "run"
    code, err = train(capsys, "--out", str(out), *sets({**TINY, "plugins": [f"broken_{name}"]}))
    assert_refused(
        code, err, f"plugin module 'broken_{name}' could not be imported", BROKEN_PLUGINS[name][1]
    )
    assert not out.exists()


def test_plugin_that_exits_on_import_in_a_real_process(tmp_path, broken_plugins):
    """On PYTHONPATH, imported by a real `protolib train`: SystemExit does not end it."""
    config = write_json_text(
        tmp_path / "c.json", json.dumps({**TINY, "plugins": ["broken_system_exit"]})
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(broken_plugins)}
    process = _cli("--config", str(config), "--out", str(out), env=env)
    _, err = process.communicate(timeout=120)
    assert_refused(
        process.returncode,
        err,
        "plugin module 'broken_system_exit' could not be imported: SystemExit: 3",
    )
    assert not out.exists()
