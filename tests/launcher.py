"""Start the suite's `snakemake` and `protolib` commands without paying for a new interpreter.

Every such command is a real process: its own pid, working directory, environment,
standard output and error, exit status and signals, running the real console-script entry
point on the real command line. What it does not pay is the start-up: a fresh interpreter
importing torch and Snakemake costs about 2.5 s of CPU, the command itself (a dry run,
say) often under one. So the processes are forked from a server that has imported those
libraries once per test worker (:mod:`multiprocessing`'s fork server, which imports
nothing of the suite's own and runs no test code): on 2 cores the suite starts a few
hundred of them.

:func:`run` is :func:`subprocess.run` with ``capture_output=True, text=True``;
:class:`Process` is :class:`subprocess.Popen` with ``stdout=PIPE, text=True`` and stderr
to a pipe or to stdout (``stderr=subprocess.STDOUT``); :func:`start` writes both to one
log file. A command whose first
word is not a console script of this environment (or of ``python -m``/``python FILE``)
is started the ordinary way. Tests of start-up itself (what a command imports, how fast it
starts) start their processes the ordinary way, on purpose.

A Snakemake started here runs its jobs' `protolib` commands through :mod:`tests.jobserver`
(forked in the same way); ``PROTOLIB_TESTS_FRESH_JOBS=1`` makes every job a fresh process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

BIN = Path(sys.executable).parent

# Imported once in the fork server: what makes a fresh process slow.
PRELOAD = ["torch", "numpy", "pandas", "pyarrow", "yaml", "snakemake.cli"]

# How a Snakemake is started (its console script, ``python -m snakemake``).
SNAKEMAKE = [("entry", "snakemake.cli:main"), ("module", "snakemake")]

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(PRELOAD)


@functools.cache
def base_path() -> list[str]:
    """``sys.path`` of a fresh interpreter of this environment, without its first entry
    (the script's folder, or the working directory for ``-m``/``-c``)."""
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout
    return json.loads(out)


def command_entry(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[str, str] | None:
    """What the command runs in this environment: ("entry", "module:function") for a
    console script, ("module", name) for ``python -m``, ("path", file) for ``python FILE``;
    None for anything else."""
    if not argv:
        return None
    first = argv[0]
    if os.sep in first:
        exe = (cwd / first) if not os.path.isabs(first) else Path(first)
    else:
        found = shutil.which(first, path=env.get("PATH"))
        exe = Path(found) if found else None
    if exe is None or not exe.exists():
        return None
    if exe.resolve() == Path(sys.executable).resolve():
        if len(argv) >= 3 and argv[1] == "-m":
            return ("module", argv[2])
        if len(argv) >= 2 and argv[1].endswith(".py"):
            return ("path", str(cwd / argv[1]))
        return None
    if exe.parent.resolve() != BIN.resolve():
        return None
    for point in importlib.metadata.entry_points(group="console_scripts"):
        if point.name == exe.name:
            return ("entry", point.value)
    return None


def _child(
    kind: str,
    target: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    out: str,
    err: str,
    new_session: bool,
    base: list[str],
    given: str | None,
) -> None:
    """In the forked process: become the command (session, output files, standard input),
    then :func:`become` it."""
    if new_session:
        os.setsid()
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(handle, fd)
        os.close(handle)
    handle = os.open(given or os.devnull, os.O_RDONLY)
    os.dup2(handle, 0)
    os.close(handle)
    become(kind, target, argv, cwd, env, base)


def become(
    kind: str, target: str, argv: list[str], cwd: str, env: dict[str, str], base: list[str]
) -> NoReturn:
    """In a forked process whose standard streams are set: become the command (folder,
    environment, path, argv, SIGINT handler), run its entry point, and exit with its
    status, as its console script does."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    first = cwd if kind == "module" else str(Path(target).parent if kind == "path" else BIN)
    sys.path[:] = [first, *extra, *base]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 stays open, as in any process)
    sys.argv = list(argv) if kind == "entry" else [target, *argv[3 if kind == "module" else 2 :]]
    code: object = 0  # what sys.exit was given, or the entry point returned
    try:
        if kind == "entry":
            module, _, function = target.partition(":")
            code = getattr(__import__(module, fromlist=["_"]), function)()
        elif kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    # imported only now: `python -m protolib.cli` must find the module not yet imported
    from protolib.cli import exit_status, exit_without_teardown

    exit_without_teardown(exit_status(code))


class Process:
    """A started command: ``pid``, :meth:`poll`, :meth:`wait`, ``returncode``, and
    :meth:`output` (what it wrote, when it writes to temporary files)."""

    def __init__(
        self,
        argv,
        *,
        cwd=None,
        env=None,
        stdout=None,
        stderr=None,
        start_new_session=False,
        input=None,
    ):
        self.args = list(map(str, argv))
        cwd = Path(cwd or os.getcwd())
        env = dict(os.environ if env is None else env)
        self._files = []
        if stdout is None:
            stdout = self._temporary()
        if stderr is None:
            stderr = self._temporary()
        elif stderr is subprocess.STDOUT:
            stderr = stdout
        self._out, self._err = str(stdout), str(stderr)
        given = None
        if input is not None:
            given = self._temporary()
            Path(given).write_text(input, encoding="utf-8")
        entry = command_entry(self.args, env, cwd)
        self.forked = entry is not None
        dry = any(arg in ("-n", "--dry-run", "--dryrun") for arg in self.args)
        if entry in SNAKEMAKE and not dry and not os.environ.get("PROTOLIB_TESTS_FRESH_JOBS"):
            # its jobs' `protolib` through tests.jobserver (a dry run starts none)
            from tests import jobserver

            env["PATH"] = os.pathsep.join(
                filter(None, [jobserver.client_folder(), env.get("PATH")])
            )
        if entry is None:
            with (
                open(self._out, "ab") as out,
                open(self._err, "ab") as err,
                open(given or os.devnull, "rb") as stdin,
            ):
                self._popen = subprocess.Popen(
                    self.args,
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=err,
                    stdin=stdin,
                    start_new_session=start_new_session,
                )
            self.pid = self._popen.pid
            return
        self._process = CONTEXT.Process(
            target=_child,
            args=(
                *entry,
                self.args,
                str(cwd),
                env,
                self._out,
                self._err,
                start_new_session,
                base_path(),
                given,
            ),
        )
        self._process.start()
        self.pid = self._process.pid

    def _temporary(self) -> str:
        handle, path = tempfile.mkstemp(prefix="launcher-", suffix=".txt")
        os.close(handle)
        self._files.append(path)
        return path

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        if not self.forked:
            return self._popen.poll()
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        if not self.forked:
            return self._popen.wait(timeout)
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """Wait, then (stdout, stderr) as Popen's with pipes gives them (stderr None when
        it went to stdout)."""
        self.wait(timeout)
        out, err = self.output()
        return out, (None if self._err == self._out else err)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """Standard output and error (one text when they went to one file)."""
        read = lambda path: Path(path).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        out = read(self._out)
        return out, (out if self._err == self._out else read(self._err))

    def close(self) -> None:
        for path in self._files:
            Path(path).unlink(missing_ok=True)


def start(argv, *, cwd=None, env=None, log=None, start_new_session=False) -> Process:
    """:class:`subprocess.Popen` with standard output and error both to ``log`` (a path)."""
    return Process(
        argv,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=start_new_session,
    )


def run(
    argv, *, cwd=None, env=None, timeout=None, check=False, start_new_session=False, input=None
) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` with ``capture_output=True, text=True``."""
    process = Process(argv, cwd=cwd, env=env, start_new_session=start_new_session, input=input)
    try:
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL) if start_new_session else process.kill()
            process.wait()
            raise
        out, err = process.output()
    finally:
        process.close()
    result = subprocess.CompletedProcess(process.args, code, out, err)
    if check:
        result.check_returncode()
    return result
