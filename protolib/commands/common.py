"""What every subcommand shares: its one-line refusal and the checks of output folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def fail(command: str, message: str) -> int:
    """Print ``protolib <command>: error: <first line of message>``; exit status 2."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"protolib {command}: error: {first}", file=sys.stderr)
    return 2


def folder_problem(path: str | Path, what: str) -> str | None:
    """Why the folder ``path`` could not be created or written (``None`` when it can):
    checked before any work, so a refused command writes nothing."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        return f"{what} {path} is a file, not a folder; give a folder"
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{what} {path} cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be written: {existing} is not writable"
    return None


def print_written(written: dict[str, Path]) -> None:
    """One ``name: path`` line per file written."""
    for name, path in written.items():
        print(f"{name}: {path}")


def print_rows_written(rows: int, path: str | Path) -> None:
    """``wrote N row(s) to PATH``."""
    print(f"wrote {rows} row{'s' if rows != 1 else ''} to {path}")
