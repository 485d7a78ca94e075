"""Atomic file writes: every output goes to a temporary name in the same folder and is
renamed into place, so a killed job never leaves a half-written file; :func:`write_error`
says in one line why an output could not be written."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _MODE)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_error(error: OSError, out: str | Path, what: str) -> str:
    """One line for ``what`` (``"the report"``) at ``out`` that could not be written; a
    full disk says so, and that re-running the same command resumes."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.errno == errno.ENOSPC:
        return (
            f"no space left on {out} ({reason}); free some space, then re-run the same "
            "command to resume"
        )
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write {what} {out}{where}: {reason}"


def one_line(
    error: BaseException | str, limit: int | None = None, *, with_type: bool = False
) -> str:
    """``error`` (an exception or a message) with its white space folded onto one line: an
    exception without a message is its type's name; ``with_type`` puts ``Type: `` first;
    ``limit`` cuts it to that many characters (ending in ``…``)."""
    text = " ".join(str(error).split())
    if isinstance(error, BaseException) and (with_type or not text):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
