"""Kill the whole pipeline anywhere (SIGKILL to its process group), re-run the same command,
and the results equal an uninterrupted run's; the launcher behind ``make run`` clears the
stale lock such a kill leaves, and refuses while a pipeline is alive in the directory."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import launcher
from tests.conftest import tiny_grid

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAUNCH = ROOT / "workflow" / "scripts" / "launch.py"
EXPERIMENT = "kill"
CONFIG = tiny_grid(  # long enough to be killed mid-run, a checkpoint every 100 steps
    {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}},
    {"seed": [0]},
    experiment=EXPERIMENT,
    base={"iterations": 600, "eval_every": 100, "checkpoint_every": 100, "batch_size": 64},
)
CONFIG_ITERATIONS = CONFIG["experiments"][EXPERIMENT]["base"]["iterations"]
RUN_IDS = ("ce_R1_p0_s0", "supcon_nw0_R1_p0_s0")
RUN_TABLES = ("metrics", "geometry", "gamma", "data")
AGGREGATE_TABLES = ("runs", "metrics", "geometry", "gamma")
#: What legitimately differs between two runs of the same config: timing and provenance.
TIMING = {"wall_seconds", "train_seconds", "images_per_second", "hostname", "pid", "attempts"}
RECOVERED = "make run: removed the lock of an interrupted run in "
SLEEP = "import time; time.sleep(600)"
POLL_TIMEOUT = 300  # seconds; generous for a loaded machine, never hit on a healthy one


def environment() -> dict[str, str]:
    """The venv's bin first on PATH, as ``make run`` sets it."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake_argv(*targets: str) -> list[str]:
    """Snakemake on this checkout's Snakefile with one core."""
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--cores",
        "1",
        *targets,
    ]


def launch_argv(*targets: str) -> list[str]:
    """What ``make run`` executes: :func:`snakemake_argv` behind its launcher."""
    return [sys.executable, str(LAUNCH), *snakemake_argv(*targets)]


def results(workdir: Path) -> Path:
    return workdir / "results" / EXPERIMENT


class Pipeline:
    """One launch of the pipeline in its own session (process group), logs in files."""

    def __init__(self, workdir: Path, name: str, *targets: str) -> None:
        self.workdir = workdir
        self.stderr_path = workdir / f"{name}.stderr"
        with (workdir / f"{name}.stdout").open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                launch_argv(*targets),
                cwd=workdir,
                env=environment(),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` every 10 ms while the pipeline is alive."""
        deadline = time.monotonic() + POLL_TIMEOUT
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(
                    f"the pipeline ended (exit {self.process.returncode}) before {what}:\n"
                    + self.stderr[-3000:]
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {POLL_TIMEOUT} s:\n" + self.stderr[-3000:])
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL to the whole process group; return once none of it is running."""
        pgid = self.process.pid
        os.killpg(pgid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 60
        while _group_alive(pgid):
            assert time.monotonic() < deadline, f"process group {pgid} survived SIGKILL"
            time.sleep(0.01)

    def finish(self) -> int:
        return self.process.wait(timeout=POLL_TIMEOUT * 2)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _files(folder: Path, pattern: str) -> dict[str, int]:
    """``{path: mtime_ns}`` of the files under ``folder`` matching ``pattern``."""
    return {str(p): p.stat().st_mtime_ns for p in folder.glob(pattern) if p.exists()}


def _new_checkpoint(workdir: Path, before: dict[str, int]) -> Callable[[], bool]:
    """True once an unfinished run has written a resume.pt that was not there (or was
    older) in ``before``: that run is training and can resume from it."""

    def check() -> bool:
        for path, mtime in _files(results(workdir) / "runs", "*/resume.pt").items():
            unfinished = not (Path(path).parent / "summary.json").exists()
            if unfinished and before.get(path) != mtime:
                return True
        return False

    return check


def _summaries(workdir: Path) -> list[Path]:
    return sorted((results(workdir) / "runs").glob("*/summary.json"))


def _locks(workdir: Path) -> dict[str, bytes]:
    folder = workdir / ".snakemake" / "locks"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tables of an uninterrupted run (aggregation is all they need). Nothing is
    killed here, so it runs through tests.launcher: the same Snakemake command line, its
    processes started without a new interpreter each."""
    workdir = tmp_path_factory.mktemp("reference")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    argv = snakemake_argv(f"results/{EXPERIMENT}/aggregate/runs.parquet")
    run = launcher.run(argv, cwd=workdir, env=environment(), timeout=POLL_TIMEOUT * 2)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """The whole experiment (train, aggregate, report, tracking) killed twice, mid-training
    and mid-sync, and re-run each time with the same command, to completion."""
    workdir = tmp_path_factory.mktemp("killed")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    target = f"results/{EXPERIMENT}/tracking.json"
    record: dict = {"workdir": workdir, "stderr": []}
    # a bystander in the directory (a user's shell, a log viewer) must not block a re-run
    bystander = subprocess.Popen([sys.executable, "-c", SLEEP, ".snakemake/log"], cwd=workdir)
    try:
        _kill_and_rerun(workdir, target, record)
    finally:
        record["bystander_stayed"] = bystander.poll() is None
        bystander.kill()
        bystander.wait()
    return record


def _kill_and_rerun(workdir: Path, target: str, record: dict) -> None:
    # 1. after one run finished, while the other trains (it has checkpointed)
    first = Pipeline(workdir, "launch1", target)
    first.wait_until(
        lambda: len(_summaries(workdir)) == 1 and _new_checkpoint(workdir, {})(),
        "one finished run and a checkpoint of the other",
    )
    first.kill()
    assert len(_summaries(workdir)) == 1
    record["locks_after_kill"] = _locks(workdir)
    record["stderr"].append(first.stderr)

    # 2. during the MLflow sync, after the resumed run, aggregate and report: its store has
    # appeared, the marker has not; before that, a second launch refuses
    second = Pipeline(workdir, "launch2", target)
    second.wait_until(
        lambda: RECOVERED in second.stderr and bool(_locks(workdir)), "snakemake's own lock"
    )
    locks = _locks(workdir)
    refused = subprocess.run(
        launch_argv(target),
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the refusal removes no lock (an unlock would remove them all); snakemake itself may
    # rewrite its own lock files while it runs, so their contents are not compared
    after = _locks(workdir)
    record["refused"] = (refused, second.process.pid, bool(locks) and set(locks) <= set(after))
    record["locks_around_refusal"] = (sorted(locks), sorted(after))
    second.wait_until(lambda: (workdir / "results" / "mlflow.db").exists(), "the MLflow sync")
    second.kill()
    assert (results(workdir) / "aggregate" / "runs.parquet").exists()
    assert not (results(workdir) / "tracking.json").exists()
    record["stderr"].append(second.stderr)

    # 3. the same command, to the end
    last = Pipeline(workdir, "launch3", target)
    assert last.finish() == 0, last.stderr[-3000:]
    record["stderr"].append(last.stderr)


def _frame(path: Path, drop: set[str] = frozenset()) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame = frame.drop(columns=[c for c in frame.columns if c in drop])
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_tables_equal_an_uninterrupted_runs(killed, reference):
    workdir = killed["workdir"]
    for name in AGGREGATE_TABLES:
        got = _frame(results(workdir) / "aggregate" / f"{name}.parquet", TIMING)
        want = _frame(results(reference) / "aggregate" / f"{name}.parquet", TIMING)
        assert len(want) > 0
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    for run_id in RUN_IDS:
        run, ref = results(workdir) / "runs" / run_id, results(reference) / "runs" / run_id
        for name in RUN_TABLES:
            pd.testing.assert_frame_equal(
                _frame(run / f"{name}.parquet"), _frame(ref / f"{name}.parquet"), check_exact=True
            )
        got, want = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
        ignored = TIMING | {"manifest"}
        assert {k: v for k, v in got.items() if k not in ignored} == {
            k: v for k, v in want.items() if k not in ignored
        }
        assert not (run / "resume.pt").exists()


def test_the_kills_landed_mid_run_and_the_runs_resumed(killed):
    """Kill 1 hit a run in training: it was re-run from its checkpoint (one more attempt,
    starting past step 0), never from scratch; the finished run was not re-run."""
    workdir = killed["workdir"]
    later = []
    for run_id in RUN_IDS:
        summary = json.loads((results(workdir) / "runs" / run_id / "summary.json").read_text())
        starts = [a["start_step"] for a in summary["attempts"]]
        assert starts[0] == 0 and starts == sorted(starts), starts
        later += starts[1:]
    assert len(later) == 1 and 0 < later[0] < CONFIG_ITERATIONS, later


def test_each_rerun_cleared_the_stale_lock_and_said_so(killed):
    """A kill leaves Snakemake's lock; every re-run removed it with one line and went on."""
    workdir = killed["workdir"]
    assert killed["locks_after_kill"], "SIGKILL left no lock: the recovery was not exercised"
    assert killed["bystander_stayed"]  # an unrelated process in the directory did not block
    launches = killed["stderr"]
    assert RECOVERED not in launches[0]
    for stderr in launches[1:]:
        assert [line for line in stderr.splitlines() if line.startswith("make run:")] == [
            f"{RECOVERED}{workdir} (no snakemake is running here); resuming"
        ]
        assert "Directory cannot be locked" not in stderr
    assert _locks(workdir) == {}
    report = results(workdir) / "report"
    assert any(report.glob("plots/*.png")) and any(report.glob("tables/*.csv"))
    marker = json.loads((results(workdir) / "tracking.json").read_text())
    assert marker["experiment"] == EXPERIMENT


def test_the_mlflow_store_has_each_run_once_after_the_kills(killed):
    """The sync killed midway and re-run: one parent and one child per run, no duplicate
    (read from the SQLite store directly)."""
    store = killed["workdir"] / "results" / "mlflow.db"
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT e.name, r.lifecycle_stage, t.value FROM runs r"
            " JOIN experiments e ON e.experiment_id = r.experiment_id"
            " LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'protolib.run_id'"
        ).fetchall()
    assert sorted(rows, key=str) == sorted(
        [(f"protolib/{EXPERIMENT}", "active", None)]
        + [(f"protolib/{EXPERIMENT}", "active", run_id) for run_id in RUN_IDS],
        key=str,
    )


def test_a_launch_while_the_pipeline_runs_refuses_and_changes_nothing(killed):
    refused, pid, locks_unchanged = killed["refused"]
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, refused.stderr
    workdir = killed["workdir"]
    assert lines[0].startswith(f"make run: {workdir} is in use by ")
    assert f"snakemake (pid {pid})" in lines[0]
    assert lines[0].endswith("then run again (nothing was changed)")
    assert locks_unchanged, killed["locks_around_refusal"]


# ------------------------------------------------- the launcher's check, on plain processes


@pytest.mark.parametrize(
    "worker",
    ["argv0 snakemake", "python .../snakemake", "python -m snakemake", "python .../protolib train"],
)
def test_the_launcher_refuses_while_a_worker_is_alive_here(tmp_path, worker):
    workdir = tmp_path / "work"
    (workdir / ".snakemake" / "locks").mkdir(parents=True)
    (workdir / ".snakemake" / "locks" / "0.input.lock").write_text("stale?\n")
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name in ("snakemake", "snakemake.py", "protolib"):
        (fakes / name).write_text(SLEEP)
    argv = {
        "argv0 snakemake": ["bash", "-c", f"exec -a snakemake {sys.executable} -c '{SLEEP}'"],
        "python .../snakemake": [sys.executable, str(fakes / "snakemake"), "--cores", "1"],
        "python -m snakemake": [sys.executable, "-m", "snakemake", "--cores", "1"],
        "python .../protolib train": [sys.executable, str(fakes / "protolib"), "train"],
    }[worker]
    env = {**environment(), "PYTHONPATH": str(fakes)}
    process = subprocess.Popen(argv, cwd=workdir, env=env)
    try:
        kind = "protolib train" if "protolib" in worker else "snakemake"
        deadline = time.monotonic() + 60
        while not _cmdline_ready(process.pid, kind):
            assert time.monotonic() < deadline, "the fake worker never started"
            time.sleep(0.01)
        result = subprocess.run(
            [sys.executable, str(LAUNCH), "snakemake", "--cores", "1"],
            cwd=workdir,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        process.kill()
        process.wait()
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"make run: {workdir} is in use by {kind} (pid {process.pid}); wait for it to finish "
        "or stop it, then run again (nothing was changed)\n"
    )
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == [
        ".snakemake",
        ".snakemake/locks",
        ".snakemake/locks/0.input.lock",
    ]
    assert (workdir / ".snakemake" / "locks" / "0.input.lock").read_text() == "stale?\n"


def _cmdline_ready(pid: int, kind: str) -> bool:
    """Whether process ``pid`` runs its final command line (after exec)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    except OSError:
        return False
    return kind.split()[0] in cmdline and "bash" not in cmdline


def test_make_run_goes_through_the_launcher():
    """``make run`` is still ``snakemake --cores all all`` with the venv on PATH, behind
    the lock check."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(ROOT), "run"],
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = [line for line in result.stdout.splitlines() if "launch.py" in line]
    assert line == (
        f'PATH="{ROOT}/.venv/bin:$PATH" .venv/bin/python workflow/scripts/launch.py '
        ".venv/bin/snakemake --cores all all"
    )
