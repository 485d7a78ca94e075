"""Run the pipeline in the current directory, first clearing a lock left by a killed run.

``make run`` is ``python workflow/scripts/launch.py .venv/bin/snakemake --cores all all``:
this script checks the directory and then *becomes* the command it is given (``exec``),
so signals, output and exit status are Snakemake's own.

A pipeline killed with SIGKILL (or a lost node, or an OOM kill) leaves Snakemake's lock in
``.snakemake/locks/``, and the next run stops with "Directory cannot be locked". Before
starting, this script therefore looks for a live process working here: a ``snakemake``
(its own job processes included) or a ``protolib train`` whose working directory is this
one. If there is one, it says so in one line and exits 1, touching nothing. If there is
none and a lock is present, the lock is stale: it runs the command with ``--unlock``
added, says so in one line, and starts the pipeline. An exclusive ``flock`` on
the directory itself, held from the check until Snakemake ends (the descriptor survives
``exec``), keeps two launches from racing past the check together. Where there is no
``/proc`` (macOS), nothing can prove a lock stale: Snakemake is started as it is and
reports a lock itself. Standard library only, so the check costs no import of torch.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

PROG = "make run"
#: Working-directory lock files of Snakemake (``.snakemake/locks/<n>.{input,output}.lock``).
LOCKS = Path(".snakemake") / "locks"


def describe_worker(argv: list[str]) -> str | None:
    """``'snakemake'`` or ``'protolib train'`` when ``argv`` is such a process (run
    directly, as a script through a Python interpreter, or ``python -m snakemake``), else
    ``None``."""
    names = [os.path.basename(a) for a in argv[:3]]
    if names[:1] == ["snakemake"]:
        return "snakemake"
    if names and names[0].startswith("python"):
        rest = argv[1:]
        if rest[:2] == ["-m", "snakemake"] or names[1:2] == ["snakemake"]:
            return "snakemake"
        if names[1:3] == ["protolib", "train"] or rest[:3] == ["-m", "protolib.cli", "train"]:
            return "protolib train"
    if names[:2] == ["protolib", "train"]:
        return "protolib train"
    return None


def live_workers(directory: Path) -> list[tuple[int, str]] | None:
    """``(pid, kind)`` of every process (this one excluded) whose working directory is
    ``directory`` and that is a Snakemake or a training run (see :func:`describe_worker`);
    processes whose details cannot be read (another user's) are skipped. ``None`` where
    there is no ``/proc`` to look in (macOS)."""
    here = directory.resolve()
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return None
    found = []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != here:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        kind = describe_worker([a.decode(errors="replace") for a in argv if a])
        if kind is not None:
            found.append((int(entry.name), kind))
    return sorted(found)


def _refuse(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def main(command: list[str]) -> int:
    """Check this directory, clear a stale lock, and exec ``command`` (``snakemake`` and
    its arguments); returns only on a usage error, a refusal or a failed unlock."""
    if not command:
        print("usage: launch.py SNAKEMAKE [ARGUMENT ...]", file=sys.stderr)
        return 2
    here = Path.cwd()
    busy = live_workers(here)
    if busy:
        pids = ", ".join(f"{kind} (pid {pid})" for pid, kind in busy[:3])
        more = f" and {len(busy) - 3} more" if len(busy) > 3 else ""
        return _refuse(
            f"{here} is in use by {pids}{more}; wait for it to finish or stop it, "
            "then run again (nothing was changed)"
        )
    guard = os.open(here, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _refuse(
            f"{here} is in use by another '{PROG}' that is starting; "
            "wait for it to finish, then run again (nothing was changed)"
        )
    except OSError:  # no flock on this filesystem: the process check alone guards
        pass
    # without /proc nothing proves the lock stale: leave it to Snakemake to report
    if busy is not None and LOCKS.is_dir() and any(LOCKS.iterdir()):
        unlock = subprocess.run([*command, "--unlock"], capture_output=True, text=True, check=False)
        if unlock.returncode != 0:
            sys.stderr.write(unlock.stderr)
            return unlock.returncode
        print(
            f"{PROG}: removed the lock of an interrupted run in {here} "
            "(no snakemake is running here); resuming",
            file=sys.stderr,
        )
    os.set_inheritable(guard, True)  # held by snakemake until it ends
    os.execvp(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
