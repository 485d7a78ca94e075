"""``protolib report``: an experiment's plots and tables, drawn from its aggregate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protolib.commands.common import fail, folder_problem, print_written
from protolib.io import one_line


def add_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="draw an experiment's plots and tables from its aggregate"
    )
    report.add_argument("aggregate_dir", metavar="AGGREGATE_DIR", help="the aggregate folder")
    report.add_argument("--out", required=True, help="the report folder to write")
    report.add_argument(
        "--gram-runs",
        nargs="*",
        metavar="RUN_ID",
        help="runs whose Gram matrices are drawn (default: one per loss; none when given empty)",
    )
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the aggregate, ``--out`` and ``--gram-runs``, then draw the report."""
    import pyarrow as pa

    from protolib.io import write_error
    from protolib.results.report import make_report, read_aggregate

    aggregate_dir = Path(args.aggregate_dir)
    if not aggregate_dir.is_dir():
        return fail(
            "report",
            f"AGGREGATE_DIR {args.aggregate_dir} is not a folder; give an aggregate "
            "folder (runs.parquet, metrics.parquet, geometry.parquet, gamma.parquet)",
        )
    problem = folder_problem(args.out, "--out")
    if problem:
        return fail("report", problem)
    try:
        frames = read_aggregate(aggregate_dir)
    except (OSError, ValueError, pa.ArrowException) as error:
        return fail("report", one_line(error))
    if args.gram_runs is not None:
        known = set(frames["runs"]["run_id"]) | set(frames["geometry"]["run_id"])
        unknown = [r for r in args.gram_runs if r not in known]
        if unknown:
            return fail(
                "report",
                f"--gram-runs: unknown run id(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known)) or 'none'}",
            )
    try:
        written = make_report(aggregate_dir, args.out, gram_runs=args.gram_runs)
    except OSError as error:
        return fail("report", write_error(error, args.out, "the report"))
    except (ValueError, pa.ArrowException) as error:
        return fail("report", one_line(error))
    print_written(written)
    return 0
