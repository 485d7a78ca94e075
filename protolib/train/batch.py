"""Several runs in one process (``protolib train --batch FILE``): the batch file, and
what keeps each run as if it were alone in a fresh process.

A batch file is ``{"runs": [{"config": {...}, "out": "DIR", "log": "PATH"}, ...]}``,
optionally with ``"done": "PATH"``, a marker written when every run has succeeded (a
workflow's output). :func:`read_batch` refuses, before any work, a file of another
shape, an invalid run config and two runs sharing an ``out`` or a ``log``. While a run trains,
:func:`output_to` sends file descriptors 1 and 2 to its log and :func:`fresh_state`
keeps what a run changes in the process (random number generators, torch's threads
and flags, the warnings already shown) from reaching the next run.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protolib.train.config import ConfigError, RunConfig, parse_config_json, read_config_file

ENTRY_KEYS = ("config", "out", "log")


@dataclass(frozen=True)
class BatchRun:
    """One run of a batch: its validated config, run directory and log file."""

    config: RunConfig
    out: str
    log: str


@dataclass(frozen=True)
class Batch:
    """The runs of a batch file, in order, and its ``done`` marker (or None)."""

    runs: list[BatchRun]
    done: str | None


def read_batch(source: str, stdin_bytes: bytes | None = None) -> Batch:
    """The batch file ``source`` (``-``: ``stdin_bytes``), every run config validated;
    :class:`ConfigError` naming the entry and key on any fault."""
    if source == "-":
        data = parse_config_json(stdin_bytes or b"", "on standard input", what="batch file")
        where = "batch file on standard input"
    else:
        data = read_config_file(source, what="batch file")
        where = f"batch file {source!r}"
    shape = 'give {"runs": [{"config": {...}, "out": DIR, "log": PATH}, ...]}'
    extra = sorted(set(data) - {"runs", "done"})
    if extra or "runs" not in data:
        problem = f"has unknown key {extra[0]!r}" if extra else "has no key 'runs'"
        raise ConfigError(f"{where} {problem}; {shape}")
    entries, done = data["runs"], data.get("done")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: runs must be a non-empty list; {shape}")
    if done is not None and (not isinstance(done, str) or not done.strip()):
        raise ConfigError(f"{where}: done must be a path string or null, got {done!r}")
    runs = [_entry(where, i, entry) for i, entry in enumerate(entries)]
    _refuse_shared_paths(where, runs, done)
    return Batch(runs, done)


def _entry(where: str, index: int, entry: Any) -> BatchRun:
    """Entry ``index`` of the batch, checked and with its config validated."""
    name = f"{where}: runs[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{name} must be an object with keys config, out and log")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{name} has unknown key {unknown[0]!r}; allowed: config, out, log")
    for key in ENTRY_KEYS:
        if key not in entry:
            raise ConfigError(f"{name} has no {key!r}; each run needs config, out and log")
    for key in ("out", "log"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise ConfigError(f"{name}.{key} must be a non-empty path string, got {entry[key]!r}")
    try:
        config = RunConfig.from_dict(entry["config"])
    except ConfigError as error:
        raise ConfigError(f"{name}.config: {error}") from None
    return BatchRun(config=config, out=entry["out"], log=entry["log"])


def _refuse_shared_paths(where: str, runs: list[BatchRun], done: str | None) -> None:
    """No two of the runs' directories, their logs and the done marker may be one path."""
    paths = [
        (f"runs[{i}].{key}", getattr(run, key))
        for i, run in enumerate(runs)
        for key in ("out", "log")
    ]
    if done is not None:
        paths.append(("done", done))
    seen: dict[Path, str] = {}
    for name, given in paths:
        path = Path(given).resolve()
        if path in seen:
            raise ConfigError(
                f"{where}: {name} {given!r} is also {seen[path]}; "
                "each run needs its own out and log"
            )
        seen[path] = name


@contextmanager
def output_to(log: str | Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 (and so ``sys.stdout``, ``sys.stderr`` and whatever
    C++ code prints) to ``log``, appended to (its folders made), as a shell's
    ``>> LOG 2>&1`` would, so that an interrupted attempt's lines stay before the lines of
    the attempt that resumes it; restore them afterwards. ``OSError`` when it cannot be opened."""
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, fd):
            os.close(descriptor)


@contextmanager
def fresh_state() -> Iterator[None]:
    """Undo, after a run, what it changed in the process: the global random states of
    torch (CPU), numpy and ``random``; torch's thread count, deterministic-algorithm and
    cuDNN flags, default dtype and matmul precision; warning filters and the record of
    warnings already shown (so the next run's log shows its own)."""
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    threads = torch.get_num_threads()
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    dtype, precision = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    with warnings.catch_warnings():  # entering it also forgets the warnings shown
        try:
            yield
        finally:
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            random.setstate(rng[2])
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
            torch.set_default_dtype(dtype)
            torch.set_float32_matmul_precision(precision)
