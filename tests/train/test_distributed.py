"""One run on two processes (``torchrun``, gloo, CPU) equals the same run in one process
(MATH.md §1.10): the parameters and the loss after every step, and the final result, to
float32 round-off; a process killed or stopped (between two evaluations: the running loss
sums go into the checkpoint) resumes, on two processes or one, to the same result; rank 0
alone writes; what two processes cannot honour is refused before any work. A batch of
runs (``--batch``) on two processes equals the batch in one, and every process ends it
with the same status; the tasks of an ``srun`` step are a launch like torchrun's (the
real srun is in tests/slurm/test_cluster.py)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from protolib.cli import main as cli_main
from protolib.data import Augment, DeviceLoader, load_dataset
from protolib.results.contract import RUN_FILES, SUMMARY
from protolib.train import RunConfig, prepare, train_run
from protolib.train.config import ConfigError
from protolib.train.distributed import (
    Launch,
    ProcessGroup,
    first_host,
    launch_from_environment,
)
from protolib.train.loop import Loop
from tests import launcher
from tests.conftest import tiny_run

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")

LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
STEPS = 40
CE = tiny_run(iterations=STEPS, eval_every=1, checkpoint_every=3, threads=1)
#: SupCon's evaluations: every 7 steps (and the last), so that a stop between two of them
#: leaves running loss sums in the checkpoint (every step's loss and parameters on two
#: processes: test_every_step_on_two_processes_equals_one_process)
SUPCON_EVERY = 7
SUPCON = tiny_run(
    loss="supcon",
    n_w=2,  # prototypes: the etf geometry needs K − 1 = 9 dimensions
    model_options={"widths": [16], "out_dim": 16},
    views=2,
    crop_padding=1,
    flip=True,
    iterations=STEPS,
    eval_every=SUPCON_EVERY,
    checkpoint_every=SUPCON_EVERY,  # stopped one step after the first checkpoint
    threads=1,
)
OUTPUTS = {*RUN_FILES, SUMMARY}  # the run files the results contract declares


# -- helpers ----------------------------------------------------------------------------
def torchrun(config: dict, out: Path, cwd: Path, processes: int = 2) -> launcher.Process:
    """``torchrun --nproc-per-node N -m protolib.cli train`` of ``config`` into ``out``,
    started in the empty folder ``cwd`` (so any stray file shows)."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd.parent / f"{cwd.name}.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    env["OMP_NUM_THREADS"] = "1"
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", "-m"]
    command += ["protolib.cli", "train", "--no-progress", "--config", str(path), "--out", str(out)]
    return launcher.Process(command, cwd=cwd, env=env, stderr=subprocess.STDOUT)


def finished(process: launcher.Process) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def worker(process: launcher.Process, rank: int) -> int:
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


def signal_after_checkpoint(process: launcher.Process, out: Path, signum: int) -> None:
    """Send ``signum`` to rank 1 as soon as rank 0 has written a periodic checkpoint."""
    rank1 = worker(process, 1)
    wait_for_checkpoint(process, out)
    os.kill(rank1, signum)


def signal_one_step_after_checkpoint(
    process: launcher.Process, out: Path, signum: int, hold: float = 0.3
) -> None:
    """Send ``signum`` to rank 1 so that both ranks stop one step after the step at which
    rank 0 wrote its first periodic checkpoint, never at it (where a signal sent at once
    may land, rank 1 being slower to reach that step's stop check than rank 0 to save):
    rank 0 is held (SIGSTOP) once the checkpoint is written; rank 1, with microseconds
    of work left, gets ``hold`` seconds to send its flag (none) to that check and wait
    there for rank 0; then it is signalled and rank 0 released (SIGCONT)."""
    rank0, rank1 = worker(process, 0), worker(process, 1)
    wait_for_checkpoint(process, out)
    os.kill(rank0, signal.SIGSTOP)
    try:
        time.sleep(hold)
        os.kill(rank1, signum)
    finally:
        os.kill(rank0, signal.SIGCONT)


def wait_for_checkpoint(process: launcher.Process, out: Path) -> None:
    """Return once ``out/resume.pt`` exists (the launch still running)."""
    deadline = time.monotonic() + 60
    while not (out / "resume.pt").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within a minute"
        time.sleep(0.002)


def train_losses(out: Path) -> pd.Series:
    metrics = pd.read_parquet(out / "metrics.parquet")
    rows = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    return rows.set_index("step").value.sort_index()


def assert_same_run(out: Path, reference: Path, steps: int = STEPS, every: int = 1) -> None:
    """The run in ``out`` equals ``reference``'s: the training loss at every evaluation
    (every ``every`` steps and the last) and the final parameters to float32 round-off,
    the same test accuracy, the same files."""
    assert {p.name for p in out.iterdir()} == OUTPUTS == {p.name for p in reference.iterdir()}
    ours, theirs = train_losses(out), train_losses(reference)
    evaluated = sorted({*range(every, steps + 1, every), steps})
    assert list(ours.index) == evaluated == list(theirs.index)
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


def on_processes(target: Callable[[], object], size: int = 2, timeout: float = 120) -> None:
    """``target()`` on ``size`` processes forked from this one (spawned ones would import
    torch anew: seconds each), each with the variables torchrun sets for its rank;
    joined, a failure raised here; killed after ``timeout`` seconds (a collective that
    never completes must not hang the suite)."""
    context = torch.multiprocessing.start_processes(
        as_rank, (size, free_port(), target), nprocs=size, join=False, start_method="fork"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=0.2):
            assert time.monotonic() < deadline, f"the {size} processes did not end in {timeout} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


def as_rank(rank: int, size: int, port: int, target: Callable[[], object]) -> None:
    """:func:`on_processes`'s process of ``rank``: torchrun's variables, then ``target()``."""
    torch.set_num_threads(1)  # before any operator: no thread pool inherited from the fork
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )
    target()


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
    """SupCon with prototypes, two views and augmentation, evaluated every 7 steps:
    SIGTERM to rank 1 between two evaluations stops both ranks at one step (each exits
    143, torchrun 1), rank 0 saves one consistent checkpoint and says so once; its
    running loss sums are those of the whole batch since the last evaluation (both
    processes' shares), as one process sums them. Resumed on one process and, from a
    copy, on two, the training loss at every evaluation (the one after the stop mixes
    steps of both attempts) and the final result equal the single-process run's."""
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    process = torchrun(SUPCON, out, cwd)
    signal_one_step_after_checkpoint(process, out, signal.SIGTERM)
    code, output = finished(process)
    assert code == 1, output  # torchrun's status when a worker fails
    each = re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: 143\b", output)
    assert sorted(each) == ["0", "1"], output  # torchrun's report: both ranks exited 143
    assert len(re.findall(r"protolib train: SIGTERM at step \d+: checkpoint saved", output)) == 1
    state = torch.load(out / "resume.pt", weights_only=True)
    step = state["step"]
    assert state["attempts"][-1]["stopped_by"] == "SIGTERM"
    assert state["attempts"][-1]["stop_step"] == step == state["loader"]["step"]
    assert step == SUPCON_EVERY + 1  # one step after the first evaluation's checkpoint
    assert max(state["rows"]["step"]) == SUPCON_EVERY  # evaluated on schedule only
    assert state["running_count"] == 1
    expected = running_sums(SUPCON, SUPCON_EVERY, step, tmp_path / "one")
    assert state["running"].keys() == expected.keys() and "loss" in expected
    for name, value in expected.items():
        torch.testing.assert_close(state["running"][name], value, rtol=1e-5, atol=1e-6)
    assert {p.name for p in out.iterdir()} == {"config.json", "resume.pt"}
    assert list(cwd.iterdir()) == []
    shutil.copytree(out, tmp_path / "copy")

    train_run(SUPCON, out, progress=False)  # no launcher: one process
    assert_same_run(out, references["supcon"], every=SUPCON_EVERY)
    assert processes_of(out) == [2, 1]

    on_processes(functools.partial(train_run, SUPCON, tmp_path / "copy", progress=False))
    assert_same_run(tmp_path / "copy", references["supcon"], every=SUPCON_EVERY)
    assert processes_of(tmp_path / "copy") == [2, 2]
    assert not (tmp_path / "one").exists()


def running_sums(config: dict, start: int, stop: int, out: Path) -> dict[str, torch.Tensor]:
    """The sums of the loss values of steps ``start + 1 … stop`` of ``config`` trained in
    one process (the loop's own steps; nothing is written into ``out``)."""
    loop = Loop(prepare(RunConfig.from_dict(config)), out, False)
    for _ in range(start):
        loop._advance()
    before = dict(loop.running)
    for _ in range(stop - start):
        loop._advance()
    return {name: value - before[name] for name, value in loop.running.items()}


def supcon_run(**keys: object) -> dict:
    """A tiny SupCon run with two prototype copies per class, two views and crops, on one
    thread; ``keys`` add to it."""
    return tiny_run(
        loss="supcon",
        n_w=2,
        model_options={"widths": [16], "out_dim": 16},
        views=2,
        crop_padding=1,
        threads=1,
        **keys,
    )


# -- every step, in processes this test starts --------------------------------------------
STEP_BY_STEP = 6
STEPPED = [  # CE with a trainable head; SupCon with prototypes, two views, crop and flip
    tiny_run(iterations=STEP_BY_STEP, eval_every=STEP_BY_STEP, threads=1, lr=0.2),
    supcon_run(flip=True, iterations=STEP_BY_STEP, eval_every=STEP_BY_STEP, lr=0.2),
]


def stepped(loop: Loop) -> dict[str, torch.Tensor]:
    """Step ``loop`` with its own training step (:meth:`Loop._advance`) and record, after
    each step, the network's parameters flattened (``params``: row 0 before any step) and
    the running sum of the whole batch's loss (``losses``; over every process)."""
    flat = [parameters_of(loop)]
    sums = []
    for _ in range(STEP_BY_STEP):
        loop._advance()
        flat.append(parameters_of(loop))
        sums.append(loop._global_running()["loss"].detach().clone())
    return {"params": torch.stack(flat), "losses": torch.stack(sums)}


def parameters_of(loop: Loop) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in loop.prep.network.parameters()]).clone()


def step_on_process(folder: Path) -> None:
    """One process of a launch (:func:`on_processes`): each config of :data:`STEPPED`
    prepared, in its own process group, stepped; this process's record saved as
    ``rank{rank}_run{index}.pt`` in ``folder``."""
    launch = launch_from_environment()
    assert launch is not None
    for index, config in enumerate(STEPPED):
        prep = prepare(RunConfig.from_dict(config), launch)
        with ProcessGroup(launch, prep.device) as group:
            record = stepped(Loop(prep, folder / f"run{index}", False, group))
        torch.save(record, folder / f"rank{launch.rank}_run{index}.pt")


def test_every_step_on_two_processes_equals_one_process(tmp_path):
    """MATH.md §1.10: after each of 6 steps, the parameters of both processes and the
    loss of the whole batch equal those of one process stepping the same config, to
    float32 round-off (CE with a trainable head; SupCon with prototypes, two views, crop
    and flip). Each step moves the parameters by far more than the tolerance, so a wrong
    gradient scale (the ×G of the loss, the gather's summed backward) fails at step 1."""
    on_processes(functools.partial(step_on_process, tmp_path))
    for index, config in enumerate(STEPPED):
        alone = stepped(Loop(prepare(RunConfig.from_dict(config)), tmp_path / "one", False))
        ranks = [torch.load(tmp_path / f"rank{r}_run{index}.pt", weights_only=True) for r in (0, 1)]
        moves = alone["params"].diff(dim=0).abs().amax(dim=1)
        assert (moves > 1e-3).all(), moves  # every step changes the network visibly
        for rank, record in enumerate(ranks):
            where = f"run {index}, rank {rank} (row: the step)"
            for name in ("params", "losses"):
                torch.testing.assert_close(
                    record[name],
                    alone[name],
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda text, name=name, where=where: f"{name} of {where}: {text}",
                )
    assert not (tmp_path / "one").exists() and not (tmp_path / "run0").exists()


# -- a batch of runs on several processes ------------------------------------------------
BATCH_STEPS = 12
BATCH = [  # CE, and SupCon with prototypes, two views and augmentation
    tiny_run(iterations=BATCH_STEPS, eval_every=1, threads=1, seed=1),
    supcon_run(iterations=BATCH_STEPS, eval_every=1, seed=2),
]


def batch_file(folder: Path, entries: list[dict]) -> Path:
    """A batch file beside ``folder`` whose runs (``entries``: config, and optionally
    log) write into ``folder``; its done marker is ``folder/done.json``."""
    runs = [
        {
            "config": entry["config"],
            "out": str(folder / "runs" / f"r{index}"),
            "log": entry.get("log", str(folder / "logs" / f"r{index}.log")),
        }
        for index, entry in enumerate(entries)
    ]
    path = folder.parent / f"{folder.name}.json"
    path.write_text(json.dumps({"runs": runs, "done": str(folder / "done.json")}))
    return path


def test_a_batch_on_two_processes_equals_the_batch_in_one(tmp_path):
    """``torchrun … protolib train --batch FILE``: both processes train both runs in
    turn (a process group per run), each run equals the same batch's run in one process
    to float32 round-off; rank 0 alone writes each log, prints and writes the done
    marker; both exit 0."""
    one = tmp_path / "one"
    entries = [{"config": config} for config in BATCH]
    assert cli_main(["train", "--no-progress", "--batch", str(batch_file(one, entries))]) == 0
    two, cwd = tmp_path / "two", tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    env["OMP_NUM_THREADS"] = "1"
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "protolib.cli"]
    command += ["train", "--no-progress", "--batch", str(batch_file(two, entries))]
    done = launcher.run(command, cwd=cwd, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for index in range(len(BATCH)):
        assert_same_run(two / "runs" / f"r{index}", one / "runs" / f"r{index}", BATCH_STEPS)
        assert processes_of(two / "runs" / f"r{index}") == [2]
        assert processes_of(one / "runs" / f"r{index}") == [1]
        log = (two / "logs" / f"r{index}.log").read_text()
        assert log.count("completed; time to fit") == 1, log  # rank 0's line, once
    assert sorted(p.name for p in (two / "logs").iterdir()) == ["r0.log", "r1.log"]
    runs = [str(two / "runs" / f"r{index}") for index in range(len(BATCH))]
    assert json.loads((two / "done.json").read_text()) == {"runs": runs}
    assert done.stdout.count("completed; time to fit") == 2, output  # one line per run
    assert list(cwd.iterdir()) == []


def srun_tasks(
    args: list[str] | Callable[[int], list[str]], cwd: Path, size: int = 2
) -> list[launcher.Process]:
    """``protolib train ARGS`` as the ``size`` tasks of an ``srun`` step would start it
    (srun's variables; the rendezvous port given as MASTER_PORT); ``args`` may depend on
    the rank."""
    cwd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    processes = []
    for rank in range(size):
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        env.update(
            SLURM_STEP_NUM_TASKS=str(size),
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NODELIST="localhost",
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        given = args(rank) if callable(args) else args
        command = [sys.executable, "-m", "protolib.cli", "train", "--no-progress", *given]
        processes.append(launcher.Process(command, cwd=cwd, env=env))
    return processes


def test_a_run_only_rank_0_cannot_start_ends_alike_on_every_process(tmp_path):
    """Two srun tasks, a batch whose first run's log cannot be opened (it lies under a
    file; only rank 0 opens logs): neither process starts that run (rank 1 alone would
    wait for rank 0 for half an hour), both train the second, both exit 1 and no done
    marker is written; rank 0 alone prints."""
    folder = tmp_path / "batch"
    (tmp_path / "a_file").write_text("not a folder\n")
    entries = [
        {"config": BATCH[0], "log": str(tmp_path / "a_file" / "r0.log")},
        {"config": BATCH[0]},
    ]
    tasks = srun_tasks(["--batch", str(batch_file(folder, entries))], tmp_path / "cwd")
    results = [task.communicate(timeout=120) for task in tasks]
    assert [task.returncode for task in tasks] == [1, 1], results
    (out0, err0), (out1, err1) = results
    assert (out1, err1) == ("", ""), results
    lines = out0.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"runs[0] {folder / 'runs' / 'r0'}: "), lines
    assert "cannot write the log" in lines[0] and "completed; time to fit" in lines[1], lines
    assert len(err0.splitlines()) == 1 and "cannot write the log" in err0, err0
    assert not (folder / "runs" / "r0").exists() and not (folder / "done.json").exists()
    assert processes_of(folder / "runs" / "r1") == [2]
    assert list((tmp_path / "cwd").iterdir()) == []


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


@pytest.mark.parametrize(
    "options", [{"drop_rate": 0.1}, {"drop_path_rate": 0.1}], ids=["dropout", "drop_path"]
)
def test_random_layers_are_refused_on_several_processes(tmp_path, capsys, two_processes, options):
    """Dropout or drop-path would draw the same masks on every process: refused before any
    work, naming the layer; the same model without them is accepted in one process."""
    config = tiny_run(
        model="timm:resnet10t", model_options=options, device="cpu", sync_batchnorm=False
    )
    code, lines, out = refused(tmp_path, capsys, config)
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and "random layer" in lines[0] and "one process" in lines[0], lines


def test_standard_input_is_refused_under_a_launcher(tmp_path, capsys, two_processes):
    """srun gives standard input to task 0 only (torchrun to every process at once): a
    batch or a config on it is refused on every process, rank 0 saying why."""
    out = tmp_path / "out"
    for args in (["--batch", "-"], ["--config", "-", "--out", str(out)]):
        two_processes(0)
        assert cli_main(["train", *args]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and f"{args[0]} - reads standard input" in lines[0], lines
        assert "give a file" in lines[0]
        two_processes(1)
        assert cli_main(["train", *args]) == 2
        assert capsys.readouterr().err == ""
    assert not out.exists()


def test_launcher_variables_are_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, lines, out = refused(tmp_path, capsys, tiny_run())
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and "MASTER_ADDR is not set" in lines[0], lines


SRUN_TASK = {  # what srun sets in task 1 of a two-task step (among much else)
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "1234",
    "SLURM_STEP_ID": "3",
}


def test_srun_tasks_are_a_launch():
    """A task of a multi-task srun step is a process of a launch: rank, size and local
    rank from SLURM, the rendezvous at the step's first host on the job and step's port;
    MASTER_ADDR and MASTER_PORT override it and torchrun's variables win."""
    port = 20000 + (1234 * 64 + 3) % 20000
    assert launch_from_environment(SRUN_TASK) == Launch(1, 2, 1, "gpu07", port)
    other_step = launch_from_environment({**SRUN_TASK, "SLURM_STEP_ID": "4"})
    assert other_step.port == port + 1
    given = {**SRUN_TASK, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    assert launch_from_environment(given) == Launch(1, 2, 1, "10.0.0.1", 29400)
    torchrun_too = {**SRUN_TASK, "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "0"}
    torchrun_too.update(MASTER_ADDR="h", MASTER_PORT="5")
    assert launch_from_environment(torchrun_too) == Launch(3, 4, 0, "h", 5)
    # one task of a step, and a batch script with --ntasks=2 (no step variables): alone
    assert launch_from_environment({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1"}) is None
    batch_step = {k: v for k, v in SRUN_TASK.items() if not k.startswith("SLURM_STEP")}
    assert launch_from_environment({**batch_step, "SLURM_PROCID": "0"}) is None
    assert launch_from_environment({}) is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SLURM_PROCID": "2"}, ["SLURM_PROCID (2)", "SLURM_STEP_NUM_TASKS (2)", "0..1"]),
        ({"SLURM_LOCALID": "5"}, ["SLURM_LOCALID (5)", "SLURM_PROCID (1)"]),
        ({"SLURM_STEP_NODELIST": ""}, ["SLURM_STEP_NODELIST is not set"]),
        ({"SLURM_STEP_NODELIST": "gpu[07"}, ["SLURM_STEP_NODELIST", "'gpu[07'"]),
        ({"SLURM_STEP_ID": "batch"}, ["SLURM_STEP_ID", "'batch'"]),
        ({"SLURM_STEP_NUM_TASKS": "two"}, ["SLURM_STEP_NUM_TASKS", "'two'"]),
        ({"MASTER_PORT": "70000"}, ["MASTER_PORT", "1..65535", "70000"]),
    ],
)
def test_inconsistent_srun_variables_are_refused(tmp_path, capsys, monkeypatch, change, named):
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**SRUN_TASK, **change}.items():
        monkeypatch.setenv(name, value)
    code, lines, out = refused(tmp_path, capsys, tiny_run())
    assert code == 2 and not out.exists()
    assert len(lines) == 1 and all(part in lines[0] for part in named), lines


def test_first_host_of_a_slurm_host_list():
    """As ``scontrol show hostnames`` lists them first."""
    assert first_host("node17") == "node17"
    assert first_host("gpu[07-09,12],cpu3") == "gpu07"
    assert first_host("cpu3,gpu[07-09]") == "cpu3"
    assert first_host("rack[2-3]n[010-011]") == "rack2n010"
    for bad in ("gpu[07", "gpu]07[", "gpu[a-b]", ""):
        with pytest.raises(ConfigError, match="SLURM_STEP_NODELIST"):
            first_host(bad)


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
