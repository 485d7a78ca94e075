"""``protolib list``: the registered components of each family."""

from __future__ import annotations

import argparse
from typing import Any

from protolib.registry import DATASETS, GEOMETRIES, LOSSES, METRICS, MODELS

FAMILIES = {
    "losses": LOSSES,
    "geometries": GEOMETRIES,
    "models": MODELS,
    "datasets": DATASETS,
    "metrics": METRICS,
}


def add_parser(commands: Any) -> None:
    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    listing.add_argument("-v", "--verbose", action="store_true", help="show what each loss needs")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each family's names (with ``--verbose``, what each loss needs)."""
    chosen = [args.family] if args.family else list(FAMILIES)
    for family in chosen:
        registry = FAMILIES[family]
        print(f"{family}: {', '.join(registry.names()) or '(none yet)'}")
        if family == "losses" and args.verbose:
            from protolib.losses import Loss

            for name in registry.names():
                loss = registry.get(name)
                if loss.needs_for.__func__ is not Loss.needs_for.__func__:
                    print(f"  {name:<20} needs: from its loss_options (a composite's parts)")
                    continue
                needs = loss.needs
                print(
                    f"  {name:<20} head={needs.head:<13} normalized={needs.normalized!s:<6} "
                    f"prototypes={needs.prototypes}"
                )
    return 0
