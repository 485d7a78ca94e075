"""`snakemake --profile slurm all` against a real single-node SLURM cluster.

The cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) is started by
``tests/slurm/start-cluster.sh`` and stopped by ``stop-cluster.sh``; it needs root and
Debian packages. Without root, or without SLURM installed, the test is skipped, unless
PROTOLIB_REQUIRE_SLURM=1 (set by CI): then the script installs what is missing, and
anything that stops the cluster from starting is a failure.

One workflow run on a tiny config, with the repository's profile and only what a CPU-only
node needs changed (PROTOLIB_SLURM_* variables and two plugin flags): while it runs, one
training job gets ``scancel --signal=TERM``; the retry must resume that run from its
checkpoint. Meanwhile the same config runs locally (``--cores 2``) as the reference.
Then a second workflow trains two CPU runs with PROTOLIB_SLURM_PROCESSES_PER_RUN=2: one
job whose srun step has two tasks, each run equal to the run in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import launcher
from tests.conftest import tiny_run
from tests.slurm.cluster import NODE_ENV, PLUGIN_FLAGS, SMALL_RUN, cluster_script, sacct_jobs

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

LONG_RUN = "ce_long_R1_p0_s0"
CONFIG = {
    "results": "results",
    "experiments": {
        "tiny": {
            "base": SMALL_RUN,
            "losses": {
                "ce": {"loss": "ce"},
                "supcon": {"loss": "supcon"},
                # long enough to be caught mid-run, with a periodic checkpoint every 100 steps
                # (checkpoints are taken at evaluations)
                "ce_long": {
                    "loss": "ce",
                    "iterations": 4000,
                    "eval_every": 100,
                    "checkpoint_every": 100,
                },
            },
        }
    },
}
RUN_IDS = {"ce_R1_p0_s0", "supcon_nw0_R1_p0_s0", LONG_RUN}
CLUSTER_ENV = NODE_ENV  # the three short runs are one train job (protolib.batching)
TABLES = ("metrics.parquet", "geometry.parquet", "gamma.parquet", "data.parquet")
AGGREGATES = [f"results/tiny/aggregate/{name}.parquet" for name in ("metrics", "geometry", "gamma")]


def _cluster_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start SLURM's daemons"
    installed = subprocess.run([str(HERE / "install-packages.sh"), "--check"]).returncode == 0
    if not installed and os.environ.get("PROTOLIB_REQUIRE_SLURM") != "1":
        # installing system packages is CI's business, or the user's explicit choice
        return (
            "SLURM is not installed: run tests/slurm/install-packages.sh, or set "
            "PROTOLIB_REQUIRE_SLURM=1 to have the test install it"
        )
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _cluster_unavailable()
    if reason:
        if os.environ.get("PROTOLIB_REQUIRE_SLURM") == "1":
            pytest.fail(f"PROTOLIB_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="protolib-slurm-", dir="/tmp"))
    try:
        started = cluster_script("start-cluster.sh", state, timeout=420)
        assert started.returncode == 0, started.stdout + started.stderr
        yield state
    finally:
        stopped = cluster_script("stop-cluster.sh", state, timeout=120)
        pids = _pids(state / "pids.stopped") or _pids(state / "pids")
        alive = [f"{name} ({pid})" for name, pid in pids if _running(pid)]
        assert stopped.returncode == 0 and not alive, (
            f"daemons still running: {alive}\n{stopped.stdout}{stopped.stderr}"
        )
        shutil.rmtree(state, ignore_errors=True)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon waits a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(n, int(p)) for n, p in (line.split() for line in path.read_text().splitlines())]


def _snakemake_argv(*args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args]


def _snakemake(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    log = (workdir / "snakemake.out").open("w")
    return subprocess.Popen(
        _snakemake_argv(*args),
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        # the executor plugin can wait forever when it cannot read job states: be sure it ends
        start_new_session=True,
    )


def _wait(process: subprocess.Popen | launcher.Process, timeout: float, workdir: Path) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
    output = (workdir / "snakemake.out").read_text()
    assert process.returncode == 0, output[-5000:]


def _kill_long_run_mid_way(slurm_dir: Path, process: subprocess.Popen) -> tuple[str, int]:
    """Once the long run has a periodic checkpoint, send its SLURM job SIGTERM. Returns
    the job and the step of the periodic checkpoint seen before the signal."""
    import torch

    resume = slurm_dir / "results" / "tiny" / "runs" / LONG_RUN / "resume.pt"
    deadline = time.monotonic() + 300
    while not resume.exists():
        assert process.poll() is None, "the workflow ended before the long run started"
        assert time.monotonic() < deadline, "the long run never wrote a checkpoint"
        time.sleep(0.05)
    step = torch.load(resume, map_location="cpu", weights_only=True)["step"]
    running = subprocess.run(
        ["squeue", "-h", "-t", "R", "-o", "%A|%k"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    train_jobs = [job for job, comment in (r.split("|", 1) for r in running) if "train" in comment]
    # one GPU on the node: exactly one training job runs at a time
    assert len(train_jobs) == 1, running
    subprocess.run(["scancel", "--signal=TERM", train_jobs[0]], check=True, timeout=30)
    return train_jobs[0], step


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The SLURM run (with one training job killed mid-run) and the local reference."""
    slurm_dir = Path(tempfile.mkdtemp(prefix="protolib-slurm-work-", dir="/tmp"))
    local_dir = tmp_path_factory.mktemp("local")
    for workdir in (slurm_dir, local_dir):
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **CLUSTER_ENV}
    env.pop("SLURM_CONF", None)
    slurm = _snakemake(slurm_dir, "--profile", str(ROOT / "slurm"), *PLUGIN_FLAGS, "all", env=env)
    # the reference: the same runs and their aggregate, on this machine (through
    # tests.launcher: its processes start without a new interpreter each)
    local = launcher.start(
        _snakemake_argv("--cores", "2", *AGGREGATES),
        cwd=local_dir,
        env=env,
        log=local_dir / "snakemake.out",
        start_new_session=True,
    )
    try:
        killed_job, killed_at = _kill_long_run_mid_way(slurm_dir, slurm)
        _wait(slurm, 480, slurm_dir)
        _wait(local, 480, local_dir)
    finally:
        for process in (slurm, local):
            if process.poll() is None:
                os.killpg(process.pid, 9)
    yield slurm_dir, local_dir, killed_job, killed_at
    shutil.rmtree(slurm_dir, ignore_errors=True)


def _summary(workdir: Path, run_id: str, experiment: str = "tiny") -> dict:
    path = workdir / "results" / experiment / "runs" / run_id / "summary.json"
    return json.loads(path.read_text())


def test_every_job_went_through_sbatch(runs):
    slurm_dir, _, killed_job, _ = runs
    jobs = sacct_jobs(slurm_dir, ["JobID", "State", "Comment", "AllocTRES", "Timelimit"])
    # one train job for the three short runs (a batch), its retry after the kill, and
    # theory; aggregate, report and tracking are local rules
    assert len(jobs) == 3, jobs
    trains = jobs[jobs["Comment"].str.contains("train")]
    assert len(trains) == 2, jobs
    assert (trains["AllocTRES"].str.contains("gres/gpu=1")).all(), trains
    assert set(jobs[jobs["Comment"] == "rule_theory"]["State"]) == {"COMPLETED"}, jobs
    states = dict(zip(jobs["JobID"], jobs["State"], strict=True))
    assert states.pop(killed_job) in {"FAILED", "CANCELLED"}, jobs
    assert set(states.values()) == {"COMPLETED"}, jobs
    # each run names the SLURM jobs that worked on it, all in the records
    worked_on = {
        r: [a["slurm_job_id"] for a in _summary(slurm_dir, r)["attempts"]] for r in RUN_IDS
    }
    used = {job for ids in worked_on.values() for job in ids}
    # three runs, two SLURM jobs: the runs share them (the retry skips the finished ones)
    assert used == set(trains["JobID"]), worked_on
    finished_by = {r: ids[-1] for r, ids in worked_on.items()}
    # the time limit comes from the runs' budgets; a retry asks for twice as long
    limits = dict(zip(trains["JobID"], trains["Timelimit"].map(_minutes), strict=True))
    retry = finished_by[LONG_RUN]
    assert limits[retry] == 2 * limits[killed_job], limits
    # one start-up and three runs of seconds, twice: 5 minutes (10 for the retry)
    assert sorted(limits.values()) == [5, 10], limits


def _minutes(limit: str) -> int:
    """SLURM's [D-]HH:MM:SS time limit in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def test_the_killed_run_resumed_from_its_checkpoint(runs):
    slurm_dir, _, killed_job, killed_at = runs
    attempts = _summary(slurm_dir, LONG_RUN)["attempts"]
    assert len(attempts) == 2, attempts
    first, retry = attempts
    assert first["start_step"] == 0 and first["slurm_job_id"] == killed_job
    assert retry["slurm_job_id"] != killed_job
    # the first attempt saved a checkpoint on SIGTERM, after the periodic one seen before
    # the kill, and the retry started exactly there: not from scratch, not from the
    # periodic checkpoint
    assert first["stopped_by"] == "SIGTERM", attempts
    assert killed_at <= first["stop_step"] == retry["start_step"] < 4000, attempts
    assert "stopped_by" not in retry
    log = (slurm_dir / "results" / "tiny" / "logs" / "train" / f"{LONG_RUN}.log").read_text()
    assert f"resumed from step {retry['start_step']}" in log


def test_results_equal_a_local_run(runs):
    slurm_dir, local_dir, _, _ = runs
    for run_id in sorted(RUN_IDS):
        for table in TABLES:
            path = Path("results") / "tiny" / "runs" / run_id / table
            pd.testing.assert_frame_equal(
                pd.read_parquet(slurm_dir / path),
                pd.read_parquet(local_dir / path),
                check_exact=True,
            )
        ours, theirs = _summary(slurm_dir, run_id), _summary(local_dir, run_id)
        for key in ("iterations", "time_to_fit", "train_error", "test_accuracy", "final"):
            assert ours[key] == theirs[key], (run_id, key)
    for path in AGGREGATES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(slurm_dir / path), pd.read_parquet(local_dir / path), check_exact=True
        )
    # the rest of the DAG ran too: the theory job and the local report and tracking rules
    for path in ("results/theory/bounds.parquet", "results/tiny/tracking.json"):
        assert (slurm_dir / path).stat().st_size > 0, path
    assert len(list((slurm_dir / "results" / "tiny" / "report").rglob("*.png"))) >= 4


# -- one run on two SLURM tasks (PROTOLIB_SLURM_PROCESSES_PER_RUN=2) ------------------------
# Last in this module: it runs once the workflow above has finished, on the idle node (its
# 2 cores: one task each). CPU runs, so that the job asks for tasks and CPUs and no GPU.
PAIR_RUN = tiny_run(
    device="cpu",
    iterations=30,
    eval_every=1,
    batch_size=64,
    probe_iterations=0,
    model_options={"widths": [16], "out_dim": 8},
)
PAIR = {
    "results": "results",
    "experiments": {
        "pair": {
            "base": PAIR_RUN,
            "losses": {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}},
        }
    },
}
PAIR_IDS = ("ce_R1_p0_s0", "supcon_nw0_R1_p0_s0")
PAIR_BATCH = "results/pair/batches/ce_R1_p0_s0+1.json"  # both runs: one train job


@pytest.fixture(scope="module")
def two_tasks(cluster, tmp_path_factory):
    """The pair's train job through sbatch with two processes per run, and each run
    trained here in one process (while the job runs) as the reference."""
    workdir = tmp_path_factory.mktemp("pair")
    (workdir / "config.yaml").write_text(yaml.safe_dump(PAIR))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **CLUSTER_ENV}
    env["PROTOLIB_SLURM_PROCESSES_PER_RUN"] = "2"
    env.pop("SLURM_CONF", None)
    started = time.monotonic()
    slurm = _snakemake(
        workdir, "--profile", str(ROOT / "slurm"), *PLUGIN_FLAGS, PAIR_BATCH, env=env
    )
    try:
        # the runs' configs, as the job received them, trained here in one process
        from protolib.train import train_run

        spec = workdir / "results" / "pair" / "logs" / "batches" / "ce_R1_p0_s0+1.spec.json"
        deadline = time.monotonic() + 120
        while not spec.exists() or not spec.read_text().endswith("}"):
            assert slurm.poll() is None, "the workflow ended before its train job started"
            assert time.monotonic() < deadline, "the train job did not start within 2 minutes"
            time.sleep(0.1)
        reference = tmp_path_factory.mktemp("one_process")
        for run in json.loads(spec.read_text())["runs"]:
            train_run(run["config"], reference / run["config"]["run_id"], progress=False)
        _wait(slurm, 240, workdir)
    finally:
        if slurm.poll() is None:
            os.killpg(slurm.pid, 9)
    yield workdir, reference, time.monotonic() - started


def _steps(job: str) -> dict[str, dict[str, str]]:
    """SLURM's records of ``job`` and its steps: {JobID: {field: value}}."""
    fields = ["JobID", "NTasks", "State", "AllocTRES"]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return {row["JobID"]: row for row in rows}


def test_a_run_on_two_slurm_tasks_equals_one_process(two_tasks):
    """One sbatch job for the two runs, whose srun step has 2 tasks (SLURM's records);
    each run trained on both (processes 2, rank 0 writing) and equal to the run in one
    process to float32 round-off."""
    import torch

    workdir, reference, seconds = two_tasks
    jobs = sacct_jobs(workdir, ["JobID", "State", "Comment", "AllocTRES"])
    assert len(jobs) == 1 and jobs["State"][0] == "COMPLETED", jobs
    assert "cpu=2" in jobs["AllocTRES"][0] and "gres/gpu" not in jobs["AllocTRES"][0], jobs
    job = jobs["JobID"][0]
    steps = _steps(job)
    assert steps[f"{job}.0"]["NTasks"] == "2", steps  # srun --ntasks=2 inside the job
    assert steps[f"{job}.0"]["State"] == "COMPLETED", steps
    assert steps[f"{job}.batch"]["NTasks"] == "1", steps
    for run_id in PAIR_IDS:
        ours = workdir / "results" / "pair" / "runs" / run_id
        theirs = reference / run_id
        attempts = _summary(workdir, run_id, "pair")["attempts"]
        assert [(a["processes"], a["slurm_job_id"]) for a in attempts] == [(2, job)]
        # every metric at every step and the final Grams, to float32 round-off (grown
        # over 30 steps: the parameters agree to 1e-5, a metric to 1e-4)
        for table in ("metrics", "geometry"):
            mine = pd.read_parquet(ours / f"{table}.parquet")
            want = pd.read_parquet(theirs / f"{table}.parquet")
            pd.testing.assert_frame_equal(mine, want, check_exact=False, rtol=1e-4, atol=1e-5)
        mine = torch.load(ours / "checkpoint.pt", weights_only=True)["network"]
        want = torch.load(theirs / "checkpoint.pt", weights_only=True)["network"]
        assert mine.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(mine[name], want[name], rtol=1e-5, atol=1e-6)
        log = (workdir / "results" / "pair" / "logs" / "train" / f"{run_id}.log").read_text()
        assert log.count("completed; time to fit") == 1, log  # rank 0 alone wrote it
    print(f"two-task workflow: {seconds:.1f} s")
