"""One run on two processes (``torchrun``, gloo, CPU) equals the same run in one process
(MATH.md §1.10): losses at every step and final parameters to float32 round-off; a
process killed or stopped resumes, on two processes or one, to the same result; rank 0
alone writes; what two processes cannot honour is refused before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from protolib.cli import main as cli_main
from protolib.data import Augment, DeviceLoader, load_dataset
from protolib.train import train_run
from protolib.train.distributed import Launch, ProcessGroup
from tests.conftest import tiny_run

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")

LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
STEPS = 40
CE = tiny_run(iterations=STEPS, eval_every=1, checkpoint_every=3, threads=1)
SUPCON = tiny_run(
    loss="supcon",
    n_w=2,  # prototypes: the etf geometry needs K − 1 = 9 dimensions
    model_options={"widths": [16], "out_dim": 16},
    views=2,
    crop_padding=1,
    flip=True,
    iterations=STEPS,
    eval_every=1,
    checkpoint_every=STEPS // 2,  # stopped after half the steps on two processes
    threads=1,
)
OUTPUTS = {
    "checkpoint.pt",
    "config.json",
    "data.parquet",
    "gamma.parquet",
    "geometry.parquet",
    "metrics.parquet",
    "summary.json",
}


# -- helpers ----------------------------------------------------------------------------
def torchrun(config: dict, out: Path, cwd: Path, processes: int = 2) -> subprocess.Popen:
    """``torchrun --nproc-per-node N -m protolib.cli train`` of ``config`` into ``out``,
    started in the empty folder ``cwd`` (so any stray file shows)."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd.parent / f"{cwd.name}.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    env["OMP_NUM_THREADS"] = "1"
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", "-m"]
    command += ["protolib.cli", "train", "--no-progress", "--config", str(path), "--out", str(out)]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def worker(process: subprocess.Popen, rank: int) -> int:
    """The process id of torchrun's worker of ``rank``."""
    for _ in range(2000):
        for children in Path(f"/proc/{process.pid}/task").glob("*/children"):
            for pid in children.read_text().split():
                try:  # a short-lived helper may be gone already
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in environ:
                    return int(pid)
        time.sleep(0.005)
    raise AssertionError(f"torchrun started no worker of rank {rank}")


def signal_after_checkpoint(process: subprocess.Popen, out: Path, signum: int) -> None:
    """Send ``signum`` to rank 1 as soon as rank 0 has written a periodic checkpoint."""
    rank1 = worker(process, 1)
    deadline = time.monotonic() + 60
    while not (out / "resume.pt").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within a minute"
        time.sleep(0.002)
    os.kill(rank1, signum)


def train_losses(out: Path) -> pd.Series:
    metrics = pd.read_parquet(out / "metrics.parquet")
    rows = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    return rows.set_index("step").value.sort_index()


def assert_same_run(out: Path, reference: Path) -> None:
    """The run in ``out`` equals ``reference``'s: the loss at every step and the final
    parameters to float32 round-off, the same test accuracy, the same files."""
    assert {p.name for p in out.iterdir()} == OUTPUTS == {p.name for p in reference.iterdir()}
    ours, theirs = train_losses(out), train_losses(reference)
    assert list(ours.index) == list(range(1, STEPS + 1)) == list(theirs.index)
    torch.testing.assert_close(
        torch.tensor(ours.values), torch.tensor(theirs.values), rtol=1e-5, atol=1e-6
    )
    mine = torch.load(out / "checkpoint.pt", weights_only=True)["network"]
    want = torch.load(reference / "checkpoint.pt", weights_only=True)["network"]
    assert mine.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(mine[name], want[name], rtol=1e-5, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == expected["status"] == "completed"
    assert summary["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-9)


def processes_of(out: Path) -> list[int]:
    attempts = json.loads((out / "summary.json").read_text())["attempts"]
    return [attempt["processes"] for attempt in attempts]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """Each config trained in this process (one process, no launcher variables)."""
    root = tmp_path_factory.mktemp("one_process")
    for name, config in (("ce", CE), ("supcon", SUPCON)):
        train_run(config, root / name, progress=False)
    return {"ce": root / "ce", "supcon": root / "supcon"}


# -- several processes ------------------------------------------------------------------
def test_sigkill_of_one_rank_resumes_on_two_processes_or_one(tmp_path, references):
    """CE: a rank killed with SIGKILL after a checkpoint; the run resumes on 2 processes
    and, from a copy, on 1, each to the uninterrupted single-process result; every file
    comes from rank 0 (none elsewhere)."""
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    process = torchrun(CE, out, cwd)
    signal_after_checkpoint(process, out, signal.SIGKILL)
    code, output = finished(process)
    assert code != 0, output
    assert not (out / "summary.json").exists()
    killed_at = torch.load(out / "resume.pt", weights_only=True)["step"]
    assert 3 <= killed_at < STEPS
    shutil.copytree(out, tmp_path / "copy")

    code, output = finished(torchrun(CE, out, cwd))
    assert code == 0, output
    assert_same_run(out, references["ce"])
    assert processes_of(out) == [2, 2]
    assert list(cwd.iterdir()) == []  # the workers wrote nothing but the run directory
    assert output.count("completed; time to fit") == 1  # rank 0 alone prints

    train_run(CE, tmp_path / "copy", progress=False)  # no launcher: one process
    assert_same_run(tmp_path / "copy", references["ce"])
    assert processes_of(tmp_path / "copy") == [2, 1]


def test_sigterm_on_one_rank_stops_every_rank_with_one_checkpoint(tmp_path, references):
    """SupCon with prototypes, two views and augmentation: SIGTERM to rank 1 stops both
    ranks at one step (each exits 143, torchrun 1), rank 0 saves one consistent
    checkpoint and says so once; the losses of the steps on two processes and, resumed
    in one process, the final result equal the single-process run's."""
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    process = torchrun(SUPCON, out, cwd)
    signal_after_checkpoint(process, out, signal.SIGTERM)
    code, output = finished(process)
    assert code == 1, output  # torchrun's status when a worker fails
    each = re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: 143\b", output)
    assert sorted(each) == ["0", "1"], output  # torchrun's report: both ranks exited 143
    assert len(re.findall(r"protolib train: SIGTERM at step \d+: checkpoint saved", output)) == 1
    state = torch.load(out / "resume.pt", weights_only=True)
    step = state["step"]
    assert state["attempts"][-1]["stopped_by"] == "SIGTERM"
    assert state["attempts"][-1]["stop_step"] == step == state["loader"]["step"]
    assert max(state["rows"]["step"]) == step  # every step up to the stop evaluated
    assert state["running_count"] == 0 and STEPS // 2 <= step < STEPS
    assert {p.name for p in out.iterdir()} == {"config.json", "resume.pt"}
    assert list(cwd.iterdir()) == []

    train_run(SUPCON, out, progress=False)  # no launcher: one process
    assert_same_run(out, references["supcon"])
    assert processes_of(out) == [2, 1]


# -- refusals (in this process: they come before the process group) ----------------------
@pytest.fixture
def two_processes(monkeypatch):
    """Launcher variables of rank 0 of two processes (no peer: a refusal comes first)."""

    def rank(index: int) -> None:
        env = {"WORLD_SIZE": "2", "RANK": str(index), "LOCAL_RANK": str(index)}
        for name, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}.items():
            monkeypatch.setenv(name, value)

    rank(0)
    return rank


def refused(tmp_path, capsys, config: dict, *extra: str) -> tuple[int, list[str], Path]:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    code = cli_main(["train", "--config", str(path), "--out", str(out), *extra])
    return code, capsys.readouterr().err.splitlines(), out


def test_batch_size_that_does_not_split_is_refused(tmp_path, capsys, two_processes):
    code, lines, out = refused(tmp_path, capsys, tiny_run(batch_size=31))
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and "batch_size 31" in lines[0] and "2 equal shards" in lines[0]
    assert "multiple of 2" in lines[0]
    two_processes(1)  # the other rank: the same status, silently
    code, lines, out = refused(tmp_path, capsys, tiny_run(batch_size=31))
    assert (code, lines, out.exists()) == (2, [], False)


def test_sync_batchnorm_on_the_cpu_is_refused(tmp_path, capsys, two_processes):
    config = tiny_run(model="cnn_small", model_options={}, device="cpu")
    code, lines, out = refused(tmp_path, capsys, config)
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and "sync_batchnorm true needs CUDA" in lines[0], lines


def test_batch_mode_is_refused_under_a_launcher(tmp_path, capsys, two_processes):
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"runs": []}))
    assert cli_main(["train", "--batch", str(batch)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--batch" in lines[0] and "2 processes" in lines[0], lines


def test_launcher_variables_are_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, lines, out = refused(tmp_path, capsys, tiny_run())
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and "MASTER_ADDR is not set" in lines[0], lines


# -- pieces -----------------------------------------------------------------------------
def test_shards_of_a_batch_are_the_whole_batch():
    """Each process's rows, augmented apart, are the rows of the whole batch (crop, flip,
    two views; the same draws), and the loaders stay in step."""
    data = load_dataset("digits")
    options = {
        "batch_size": 12,
        "mean": data.mean,
        "std": data.std,
        "views": 2,
        "augment": Augment(crop_padding=2, flip=True),
        "seed": 3,
    }
    whole = DeviceLoader(data.train.images, data.train.labels, **options)
    parts = [DeviceLoader(data.train.images, data.train.labels, **options) for _ in range(3)]
    for _ in range(3):
        x, y, idx = whole.next_batch()
        pieces = [p.next_batch(Launch(r, 3, r).rows(12)) for r, p in enumerate(parts)]
        assert torch.equal(torch.cat([piece[0] for piece in pieces]), x)
        for _, labels, indices in pieces:
            assert torch.equal(labels, y) and torch.equal(indices, idx)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_collectives_of_a_one_process_group(monkeypatch):
    """The gather keeps gradients (backward: summed, this rank's rows) and the
    broadcasts carry plain data, here in a gloo group of one process."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with ProcessGroup(Launch(0, 1, 0), torch.device("cpu")) as group:
        x = torch.randn(4, 3, requires_grad=True)
        gathered = group.gather(x)
        assert torch.equal(gathered, x)
        (gathered * torch.arange(12.0).view(4, 3)).sum().backward()
        assert torch.equal(x.grad, torch.arange(12.0).view(4, 3))
        assert group.broadcast_json({"a": [1, None]}) == {"a": [1, None]}
        assert group.broadcast_bytes(b"\x00resume") == b"\x00resume"
        assert group.agreed_signal(None) is None and group.agreed_signal(15) == 15
        torch.testing.assert_close(group.sum(torch.tensor([1.5])), torch.tensor([1.5]))
