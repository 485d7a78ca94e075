"""tests.jobserver runs a Snakemake job's `protolib` as the console script would: checked
against the console script itself, through the shell a job runs in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import jobserver, launcher
from tests.conftest import tiny_run

BIN = Path(sys.executable).parent


def _shell(script: str, cwd: Path, *, through_server: bool) -> subprocess.CompletedProcess:
    """``script`` in ``bash -c`` as a Snakemake job runs it, `protolib` found on PATH."""
    first = jobserver.client_folder() if through_server else str(BIN)
    env = {**os.environ, "PATH": f"{first}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "script",
    [
        "protolib --version",
        "protolib bounds ce --classes 4 --rho 1 --lam 0.01 > out.txt; cat out.txt",
        "protolib bounds ce --classes 1",  # refused: exit 2, one line
        "protolib no-such-command",  # argparse: exit 2
        # standard input, a relative --out in the job's folder, the job's umask
        "umask 027; echo '{\"iterations\": 2}' | protolib train --config /dev/stdin --out r"
        " 2>&1; ls r; stat -c %a r/summary.json",
        "exec protolib train --set loss=nope --out x",
    ],
)
def test_a_job_exits_and_writes_as_the_console_script(tmp_path, script):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    served = _shell(script, tmp_path / "a", through_server=True)
    plain = _shell(script, tmp_path / "b", through_server=False)
    speed = lambda text: re.sub(r"[0-9.]+ it/s", "… it/s", text)  # noqa: E731
    assert (served.returncode, speed(served.stdout), served.stderr) == (
        plain.returncode,
        speed(plain.stdout),
        plain.stderr,
    )


def _long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A `protolib train` through the client, once it has written a checkpoint."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_run(iterations=100_000, eval_every=20, checkpoint_every=20)))
    out = tmp_path / "out"
    client = Path(jobserver.client_folder()) / "protolib"
    process = subprocess.Popen(
        [str(client), "train", "--config", str(config), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "resume.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process, out


def test_a_signal_to_the_client_reaches_the_command_and_its_status_comes_back(tmp_path):
    process, out = _long_run(tmp_path)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    # what `protolib train` does on SIGTERM (tests/train/test_run.py): a checkpoint, 143
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "checkpoint saved" in stderr
    assert not (out / ".lock").exists()


def test_a_killed_client_takes_its_command_with_it(tmp_path):
    process, out = _long_run(tmp_path)
    job = int((out / ".lock").read_text())  # the run's owner: the forked command
    assert job != process.pid
    process.kill()
    assert process.wait(60) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while Path(f"/proc/{job}").exists():  # killed, then reaped by the server
        assert time.monotonic() < deadline, f"the job {job} outlived its client"
        time.sleep(0.01)
    again = _shell(
        f"protolib train --config {tmp_path / 'run.json'} --out {out} --no-progress "
        "--set iterations=40",
        tmp_path,
        through_server=False,
    )
    assert "in use" not in again.stderr, again.stderr


def test_a_status_of_a_signal_is_the_clients_own(tmp_path):
    """A command killed by a signal: the client dies of that signal, as the shell sees it."""
    process, _ = _long_run(tmp_path)
    # no handler of the command's own for SIGUSR1: it dies of it, and so does the client
    process.send_signal(signal.SIGUSR1)
    assert process.wait(60) == -signal.SIGUSR1


def test_a_snakemake_started_by_the_launcher_runs_its_jobs_through_the_server(tmp_path):
    (tmp_path / "Snakefile").write_text(
        'rule which:\n    output: "which.txt"\n    shell: "command -v protolib > {output}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PROTOLIB_TESTS_FRESH_JOBS", None)
    done = launcher.run([str(BIN / "snakemake"), "--cores", "1"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    client = Path(jobserver.client_folder()) / "protolib"
    assert (tmp_path / "which.txt").read_text().strip() == str(client)
