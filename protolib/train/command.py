"""``protolib train``: one run (``--config``/``--set``/``--out``) or a batch of runs in
one process (``--batch FILE``).

Exit status: 0 done; 2 refused before any work, with one line on standard error; 1 a
batch in which some run failed (the others ran); 128 + signal number when SIGTERM or
Ctrl-C stopped a run (it saved a checkpoint; the same command resumes).

Started by a launcher (``torchrun``, or ``srun`` with several tasks) on several
processes (:mod:`protolib.train.distributed`), one run trains on all of them; with
``--batch`` every process trains the batch's runs in turn, each run on all of them.
Rank 0 alone prints and writes (each run's log, the ``done`` marker; the others' output
goes where the launcher sends it), and every process ends with the same exit status.
Standard input (``-``) is refused under a launcher: ``srun`` gives it to one task only,
``torchrun`` to all of them at once; give a file every process can read.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from protolib.io import one_line, write_error, write_json
from protolib.train.batch import Batch, BatchRun, fresh_state, output_to, read_batch
from protolib.train.config import (
    INT_RANGES,
    ConfigError,
    RunConfig,
    parse_config_json,
    read_config_file,
)
from protolib.train.distributed import Launch, agree, launch_from_environment
from protolib.train.lock import RunDirectoryInUse
from protolib.train.loop import RunInterrupted
from protolib.train.run import train_run

PREFIX = "protolib train"


def run(args: argparse.Namespace) -> int:
    """Run ``protolib train`` with parsed ``args`` (config, out, batch, threads,
    overrides, progress); the exit status."""
    try:
        launch = launch_from_environment()
    except ConfigError as error:
        return _refuse(str(error))
    quiet = launch is not None and not launch.main  # rank 0 speaks for the run
    low, high = INT_RANGES["threads"]
    if args.threads is not None and not low <= args.threads <= high:
        return _refuse(
            f"--threads must be an integer in {low}..{high}, got {args.threads}", quiet=quiet
        )
    batch = getattr(args, "batch", None)
    stdin_flag = "--batch" if batch is not None else "--config"
    if launch is not None and (batch if batch is not None else args.config) == "-":
        return _refuse(
            f"{stdin_flag} - reads standard input, which {launch.size} processes started by "
            "a launcher do not each receive whole; give a file that every process can read",
            quiet=quiet,
        )
    if batch is not None:
        given = [
            flag
            for flag, value in (("--config", args.config), ("--out", args.out))
            if value is not None
        ] + (["--set"] if args.overrides else [])
        if given:
            return _refuse(
                f"--batch takes each run's config and out from the batch file; "
                f"do not give {', '.join(given)} with it",
                quiet=quiet,
            )
        return _batch(batch, args.threads, args.progress, launch)
    if args.out is None:
        return _refuse(
            "give --out DIR (the run directory), or --batch FILE for several runs", quiet=quiet
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return _single(args, quiet)


def _single(args: argparse.Namespace, quiet: bool = False) -> int:
    """One run: the config from ``--config`` (a file, ``-`` for standard input, or none:
    the defaults) with ``--set`` overrides."""
    overrides: dict[str, object] = {}
    for key, value in args.overrides:
        if key is None:
            return _refuse(f"--set expects KEY=VALUE, got {value!r}", quiet=quiet)
        if key in overrides:
            return _refuse(f"--set {key} is given twice; give each key once", quiet=quiet)
        overrides[key] = value

    def config() -> RunConfig:
        if args.config == "-":
            data = parse_config_json(_stdin_bytes("--config -", "run config"), "on standard input")
        else:
            data = read_config_file(args.config) if args.config else {}
        data.update(overrides)
        return RunConfig.from_dict(data)

    code, _ = _train(config, args.out, args.progress, quiet)
    return code


def _train(
    config: Callable[[], RunConfig], out: str, progress: bool | None, quiet: bool = False
) -> tuple[int, str]:
    """Train the run ``config()`` builds into ``out``: print its status line (standard
    output) or its error (one line, standard error) unless ``quiet``; return the exit
    status and line."""
    show = not quiet
    try:
        summary = train_run(config(), out, progress=progress)
    except RunInterrupted as error:
        line = f"{PREFIX}: {error}"
        if show:
            print(line, file=sys.stderr)
        return 128 + error.signum, line
    except RunDirectoryInUse as error:
        return 2, _error(str(error), show=show)
    except (ValueError, FileNotFoundError, TypeError) as error:
        return 2, _error(str(error), show=show)
    except OSError as error:  # the run directory cannot be written
        return 2, _error(write_error(error, out, "the run directory"), show=show)
    fit = summary["time_to_fit"]
    line = (
        f"{summary['run_id']}: {summary['status']}; time to fit "
        f"{fit if fit is not None else 'not reached'}; test accuracy "
        f"{summary['test_accuracy']}; outputs in {out}"
    )
    if show:
        print(line)
    return 0, line


def _batch(source: str, threads: int | None, progress: bool | None, launch: Launch | None) -> int:
    """Every run of the batch file ``source`` in turn, each into its own log; one line
    per run on standard output. 0 when all succeed (then the ``done`` marker is written),
    1 when any failed, 128 + signal number (and no further run) when a signal stopped one.
    Under a launcher every process trains every run, and the processes agree on each
    run's status (:func:`~protolib.train.distributed.agree`), so that all take the same
    path and end with the same status."""
    quiet = launch is not None and not launch.main

    def agreed(code: int) -> int:
        return code if launch is None else agree(launch, code)

    batch: Batch | None = None
    refusal = ""
    try:
        stdin = _stdin_bytes("--batch -", "batch file") if source == "-" else None
        batch = read_batch(source, stdin)
    except ValueError as error:
        refusal = str(error)
    if agreed(0 if batch is not None else 2):
        if batch is None:
            return _refuse(refusal, quiet=quiet)
        return _refuse(f"another process could not read the batch file {source!r}", quiet=quiet)
    if threads is not None:
        torch.set_num_threads(threads)
    failed = 0
    for index, batch_run in enumerate(batch.runs):
        mine, line = _batch_member(batch_run, progress, quiet, agreed)
        code = agreed(mine)
        if code != mine:
            line = _error(f"another process ended this run with exit status {code}", show=False)
        if code != 0:
            line = f"runs[{index}] {batch_run.out}: {line}"
        if not quiet:
            print(line, flush=True)
        if code > 128:
            return code
        failed += code != 0
    if failed:
        return 1
    code = 0
    if batch.done is not None and not quiet:
        try:
            write_json(batch.done, {"runs": [r.out for r in batch.runs]})
        except OSError as error:
            _error(f"cannot write {batch.done}: {error.strerror or error}")
            code = 1
    return agreed(code)


def _batch_member(
    batch_run: BatchRun, progress: bool | None, quiet: bool, agreed: Callable[[int], int]
) -> tuple[int, str]:
    """One run of a batch, as ``protolib train --config - --out OUT > LOG 2>&1`` would
    run it; any failure is its exit status and line, never an exception. ``quiet`` (a
    process other than rank 0): no log, nothing printed but a traceback. The processes
    start the run only when rank 0 could open its log (``agreed``)."""
    with ExitStack() as stack:
        line = _error("rank 0 could not open the log of this run", show=False)
        try:
            if not quiet:
                stack.enter_context(output_to(batch_run.log))
            opened = True
        except OSError as error:
            line = _error(f"cannot write the log {batch_run.log}: {error.strerror or error}")
            opened = False
        if agreed(0 if opened else 1):
            return 1, line
        stack.enter_context(fresh_state())
        try:
            return _train(lambda: batch_run.config, batch_run.out, progress, quiet)
        except Exception as error:  # what would end a process alone, ends only this run
            traceback.print_exc()
            return 1, _error(one_line(error, 300, with_type=True), show=False)


def _stdin_bytes(flag: str, what: str) -> bytes:
    """Standard input, as bytes; :class:`ValueError` naming ``flag`` when it is closed."""
    if sys.stdin is None:
        raise ValueError(f"{flag} reads the {what} from standard input, which is closed")
    raw: Any = getattr(sys.stdin, "buffer", sys.stdin).read()  # bytes; text if replaced
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw


def _error(message: str, *, show: bool = True) -> str:
    """The one-line error for ``message``, printed on standard error when ``show``."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    line = f"{PREFIX}: error: {first}"
    if show:
        print(line, file=sys.stderr)
    return line


def _refuse(message: str, *, quiet: bool = False) -> int:
    _error(message, show=not quiet)
    return 2
