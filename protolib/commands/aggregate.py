"""``protolib aggregate``: compact run directories into the four aggregate tables."""

from __future__ import annotations

import argparse
from typing import Any

from protolib.commands.common import fail, print_rows_written


def add_parser(commands: Any) -> None:
    agg = commands.add_parser(
        "aggregate",
        help="compact run directories into runs/metrics/geometry/gamma.parquet",
    )
    agg.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    agg.add_argument("--out", required=True, help="the aggregate folder to write")
    agg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Aggregate ``args.run_dirs`` into ``args.out``; one line per table written."""
    import pyarrow.parquet as pq

    from protolib.results.aggregate import AggregateError, aggregate

    try:
        written = aggregate(args.run_dirs, args.out)
    except (AggregateError, OSError) as error:
        return fail("aggregate", str(error))
    for path in written.values():
        print_rows_written(pq.read_metadata(path).num_rows, path)
    return 0
