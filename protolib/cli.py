"""The ``protolib`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import protolib
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, MODELS

FAMILIES = {"losses": LOSSES, "geometries": GEOMETRIES, "models": MODELS, "datasets": DATASETS}


def _list(args: argparse.Namespace) -> int:
    chosen = [args.family] if args.family else list(FAMILIES)
    for family in chosen:
        registry = FAMILIES[family]
        print(f"{family}: {', '.join(registry.names()) or '(none yet)'}")
        if family == "losses" and args.verbose:
            for name in registry.names():
                needs = registry.get(name).needs
                print(
                    f"  {name:<20} head={needs.head:<13} normalized={needs.normalized!s:<6} "
                    f"prototypes={needs.prototypes}"
                )
    return 0


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as loss=supcon
    return key, value


def _train(args: argparse.Namespace) -> int:
    from protolib.train import RunConfig, RunInterrupted, train_run

    try:
        data = json.loads(Path(args.config).read_text()) if args.config else {}
    except FileNotFoundError:
        return _fail("train", f"run config {args.config!r} does not exist")
    except json.JSONDecodeError as error:
        return _fail("train", f"run config {args.config!r} is not valid JSON: {error}")
    data.update(dict(args.overrides))
    try:
        config = RunConfig.from_dict(data)
        summary = train_run(config, args.out, progress=args.progress)
    except RunInterrupted as error:
        print(f"protolib train: {error}", file=sys.stderr)
        return 128 + error.signum
    except (ValueError, FileNotFoundError, TypeError) as error:
        return _fail("train", str(error))
    status = summary["status"]
    fit = summary["time_to_fit"]
    print(
        f"{summary['run_id']}: {status}; time to fit "
        f"{fit if fit is not None else 'not reached'}; test accuracy "
        f"{summary['test_accuracy']}; outputs in {args.out}"
    )
    return 0


def _fail(command: str, message: str) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"protolib {command}: error: {first}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolib", description=protolib.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"protolib {protolib.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    listing.add_argument("-v", "--verbose", action="store_true", help="show what each loss needs")
    listing.set_defaults(func=_list)
    train = commands.add_parser(
        "train", help="train one run into a run directory (resumes when re-run)"
    )
    train.add_argument("--config", help="run config JSON (defaults for every missing key)")
    train.add_argument("--out", required=True, help="the run directory")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a config key (VALUE parsed as JSON when it can be)",
    )
    bar = train.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
