"""The ``protolib`` command."""

from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolib", description=protolib.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"protolib {protolib.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    listing.add_argument("-v", "--verbose", action="store_true", help="show what each loss needs")
    listing.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
