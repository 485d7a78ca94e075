"""The ``protolib`` command: its parser, :func:`main` and the console script :func:`run`.

Each subcommand is a module of :mod:`protolib.commands` and imports what it needs when it
runs: ``protolib --help``, ``--version``, ``query`` and ``aggregate`` never import torch
(``list``, ``train``, ``report``, ``theory`` and ``track`` do what they must). Every
subcommand refuses bad input before any work with one line, ``protolib <command>: error:
…``, and exit status 2.

The console script is :func:`run`: it ends the process with ``os._exit`` once the command
has returned (its outputs are on disk, written atomically), skipping the interpreter's
teardown, which takes about a second once torch is loaded. :func:`main` returns the exit
status, for callers in the same process.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import Any, NoReturn

import protolib
from protolib.commands import aggregate, bounds, listing, query, report, theory, track, train

#: the subcommands, in the order ``protolib --help`` lists them
COMMANDS = (listing, train, bounds, query, aggregate, report, theory, track)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **_: Any):
        super().__init__(
            option_strings, dest, default=argparse.SUPPRESS, nargs=0, help="show the version"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        print(f"protolib {protolib.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``protolib`` with every subcommand (each sets ``func``)."""
    parser = _Parser(prog="protolib", description=protolib.__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: ``sys.argv[1:]``); return its exit status
    (``--help``, ``--version`` and usage errors too, which argparse ends with SystemExit)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return exit_status(stop.code)
    return args.func(args)


def exit_status(code: object) -> int:
    """The exit status ``sys.exit(code)`` would give (a message is printed to stderr)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run() -> NoReturn:
    """The console script: :func:`main`, then ``os._exit`` without interpreter teardown.

    Exit handlers (``atexit``: logging, multiprocessing, …) still run, and standard
    output and error are flushed; only the teardown of every module and object is skipped
    (about a second once torch is loaded). A failed flush (a full disk, a closed pipe)
    turns a success into exit status 120, as Python's own exit would.
    """
    try:
        code = main()
    except SystemExit as stop:  # a command that calls sys.exit
        code = exit_status(stop.code)
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with ``code`` as :func:`run` does: exit handlers, then standard
    output and error flushed (a failed flush turns success into 120), then ``os._exit``."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    run()
