"""``protolib query``: SQL over every experiment's aggregate tables (no torch)."""

from __future__ import annotations

import argparse
from typing import Any

from protolib.commands.common import fail, print_rows_written


def _max_rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--max-rows expects an integer >= 0, got {text!r}")
    return value


def add_parser(commands: Any) -> None:
    query = commands.add_parser(
        "query",
        help="run SQL over the aggregated results (views runs, metrics, geometry, gamma)",
        description="Run SQL over every experiment's aggregate tables: views runs, metrics, "
        "geometry and gamma, each with an experiment column.",
    )
    query.add_argument("sql", help='e.g. "SELECT loss, avg(test_accuracy) FROM runs GROUP BY loss"')
    query.add_argument("--results", default="results", help="the results folder (default: results)")
    query.add_argument("--experiment", help="only this experiment (default: all)")
    output = query.add_mutually_exclusive_group()
    output.add_argument("--csv", metavar="PATH", help="write the result as CSV instead")
    output.add_argument("--parquet", metavar="PATH", help="write the result as Parquet instead")
    query.add_argument(
        "--max-rows",
        type=_max_rows,
        default=50,
        metavar="N",
        help="rows to print (default: 50)",
    )
    query.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the result of ``args.sql``, or write it as CSV or Parquet."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from protolib.io import write_atomic
    from protolib.results.query import QueryError, format_table, query_arrow

    try:
        table = query_arrow(args.sql, args.results, args.experiment)
    except (QueryError, duckdb.Error) as error:  # no results, unknown experiment, bad SQL
        return fail("query", str(error))
    target = args.csv or args.parquet
    if target is None:
        print(format_table(table, args.max_rows))
        return 0
    try:
        if args.csv:
            write_atomic(target, lambda tmp: table.to_pandas().to_csv(tmp, index=False))
        else:
            write_atomic(target, lambda tmp: pq.write_table(table, tmp))
    except (OSError, pa.ArrowException) as error:
        return fail("query", f"cannot write {target}: {error}")
    print_rows_written(table.num_rows, target)
    return 0
