"""``protolib theory``: the loss bounds and the unconstrained-features simulations."""

from __future__ import annotations

import argparse
from typing import Any

from protolib.commands.common import fail, folder_problem, print_written


def add_parser(commands: Any) -> None:
    theory = commands.add_parser(
        "theory", help="compute the loss bounds and run the unconstrained-features simulations"
    )
    theory.add_argument("--out", required=True, help="the theory folder to write")
    theory.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    theory.add_argument("--seed", type=int, default=0, help="seed of the simulations (default: 0)")
    theory.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check --threads, --seed and --out, then write the theory outputs."""
    from protolib.train.config import INT_RANGES

    for key, value, field in (
        ("--threads", args.threads, "threads"),
        ("--seed", args.seed, "seed"),
    ):
        low, high = INT_RANGES[field]
        if value is not None and not low <= value <= high:
            return fail("theory", f"{key} must be an integer in {low}..{high}, got {value}")
    problem = folder_problem(args.out, "--out")
    if problem:
        return fail("theory", problem)
    from protolib.io import write_error
    from protolib.theory.report import make_theory

    try:
        written = make_theory(args.out, threads=args.threads, seed=args.seed)
    except OSError as error:
        return fail("theory", write_error(error, args.out, "the theory outputs"))
    print_written(written)
    return 0
