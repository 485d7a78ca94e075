"""tests.launcher starts commands as subprocess does: checked against subprocess itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import launcher

BIN = Path(sys.executable).parent
PATH = f"{BIN}{os.pathsep}{os.environ['PATH']}"


def _both(argv, **kw):
    """The command through the launcher and through subprocess.run, side by side."""
    forked = launcher.run(argv, **kw)
    plain = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    return forked, plain


@pytest.mark.parametrize(
    "argv",
    [
        ["protolib", "--version"],
        ["protolib", "bounds", "ce", "--classes", "4", "--rho", "1", "--lam", "0.01"],
        ["protolib", "bounds", "ce", "--classes", "1"],  # refused: exit 2, one line
        ["protolib", "no-such-command"],  # argparse: exit 2
        [sys.executable, "-m", "protolib", "--version"],
        [sys.executable, "-m", "protolib.cli", "train", "--set", "loss=nope", "--out", "x"],
        ["snakemake", "--version"],
        ["snakemake", "--no-such-flag"],
    ],
)
def test_a_command_exits_and_writes_as_in_a_fresh_interpreter(tmp_path, argv):
    forked, plain = _both(argv, cwd=tmp_path, env={**os.environ, "PATH": PATH}, timeout=120)
    assert (forked.returncode, forked.stdout) == (plain.returncode, plain.stdout)
    # the same lines; a set's order may differ (each interpreter has its own hash seed)
    assert sorted(forked.stderr.splitlines()) == sorted(plain.stderr.splitlines()) or (
        forked.stderr.splitlines()[-1:] == plain.stderr.splitlines()[-1:]
        and len(forked.stderr) == len(plain.stderr)
    )


def test_console_scripts_are_forked_and_other_programs_started_plainly(tmp_path):
    env = {**os.environ, "PATH": PATH}
    for argv, forked in (
        (["protolib", "--version"], True),
        ([str(BIN / "snakemake"), "--version"], True),
        ([sys.executable, "-m", "protolib", "--version"], True),
        (["bash", "-c", "exit 3"], False),
        (["true"], False),
        ([sys.executable, "-c", "pass"], False),
    ):
        process = launcher.Process(argv, cwd=tmp_path, env=env)
        assert process.forked is forked, argv
        process.wait(60)
        process.close()


def test_folder_environment_and_python_path_are_the_commands_own(tmp_path):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "probe_mod.py").write_text(
        "import os, sys\n"
        "print(os.getcwd(), os.environ['PROBE'], sys.argv[1:],\n"
        "      sys.path[1] == os.environ['PYTHONPATH'])\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": PATH, "PROBE": "seen", "PYTHONPATH": str(plugin)}
    forked = launcher.run([sys.executable, "-m", "probe_mod", "a", "b c"], cwd=work, env=env)
    assert forked.returncode == 0, forked.stderr
    assert forked.stdout == f"{work} seen ['a', 'b c'] True\n"
    assert "PROBE" not in os.environ


def test_signals_timeouts_and_sessions_behave_as_for_a_popen(tmp_path):
    env = {**os.environ, "PATH": PATH}
    # `protolib train` on a long run: SIGKILL gives -9, as subprocess reports it
    long_run = tmp_path / "run.json"
    long_run.write_text('{"iterations": 100000, "eval_every": 50000, "probe_iterations": 0}')
    process = launcher.Process(
        ["protolib", "train", "--config", str(long_run), "--out", str(tmp_path / "out")],
        env=env,
        start_new_session=True,
    )
    time.sleep(0.5)
    assert process.poll() is None
    assert os.getpgid(process.pid) == process.pid  # a session (and group) of its own
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL
    process.close()
    with pytest.raises(subprocess.TimeoutExpired):
        launcher.run(
            ["protolib", "train", "--config", str(long_run), "--out", str(tmp_path / "o2")],
            env=env,
            timeout=0.5,
        )
