"""``protolib train``: its arguments; the work is :func:`protolib.train.command.run`,
imported (with torch) only when the command runs."""

from __future__ import annotations

import argparse
import json
from typing import Any


def parse_override(text: str) -> tuple[str | None, object]:
    """``KEY=VALUE`` → ``(key, value)``, VALUE parsed as JSON when it can be (else a bare
    string such as ``loss=supcon``); ``(None, text)`` when it is not ``KEY=VALUE``, which
    ``protolib train`` refuses in one line, naming the argument."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        return None, text
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    return key, value


def add_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train runs into run directories (resumes when re-run)"
    )
    train.add_argument(
        "--config",
        help="run config JSON file, or - for standard input (defaults fill every missing key)",
    )
    train.add_argument(
        "--threads",
        type=int,
        help="CPU threads for this process (not part of the run's identity; default: torch's)",
    )
    train.add_argument("--out", help="the run directory (one run; or give --batch)")
    train.add_argument(
        "--batch",
        metavar="FILE",
        help="several runs in one process: a JSON file, or - for standard input, "
        '{"runs": [{"config": {...}, "out": DIR, "log": PATH}, ...]}',
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=parse_override,
        metavar="KEY=VALUE",
        help="override a config key (VALUE parsed as JSON when it can be)",
    )
    bar = train.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``protolib train``: :func:`protolib.train.command.run` (imported only when run)."""
    from protolib.train import command

    return command.run(args)
