"""The ``protolib`` command."""

from __future__ import annotations

import argparse
import errno
import json
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


def _parse_override(text: str) -> tuple[str | None, object]:
    """``KEY=VALUE`` → ``(key, value)``, VALUE parsed as JSON when it can be (else a bare
    string such as ``loss=supcon``); ``(None, text)`` when it is not ``KEY=VALUE``, which
    :func:`_train` refuses in one line (argparse would print two)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        return None, text
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    return key, value


def _train(args: argparse.Namespace) -> int:
    import torch

    from protolib.train import RunConfig, RunInterrupted, train_run
    from protolib.train.config import INT_RANGES, parse_config_json, read_config_file
    from protolib.train.lock import RunDirectoryInUse

    low, high = INT_RANGES["threads"]
    if args.threads is not None:
        if not low <= args.threads <= high:
            return _fail(
                "train", f"--threads must be an integer in {low}..{high}, got {args.threads}"
            )
        torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {}
    for key, value in args.overrides:
        if key is None:
            return _fail("train", f"--set expects KEY=VALUE, got {value!r}")
        if key in overrides:
            return _fail("train", f"--set {key} is given twice; give each key once")
        overrides[key] = value
    try:
        if args.config == "-":
            if sys.stdin is None:
                return _fail(
                    "train", "--config - reads the run config from standard input, which is closed"
                )
            raw = getattr(sys.stdin, "buffer", sys.stdin).read()  # bytes; text if replaced
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            data = parse_config_json(raw, "on standard input")
        else:
            data = read_config_file(args.config) if args.config else {}
        data.update(overrides)
        config = RunConfig.from_dict(data)
        summary = train_run(config, args.out, progress=args.progress)
    except RunInterrupted as error:
        print(f"protolib train: {error}", file=sys.stderr)
        return 128 + error.signum
    except RunDirectoryInUse as error:
        return _fail("train", str(error))
    except (ValueError, FileNotFoundError, TypeError) as error:
        return _fail("train", str(error))
    except OSError as error:  # the run directory cannot be written
        return _fail("train", _write_error(error, args.out))
    status = summary["status"]
    fit = summary["time_to_fit"]
    print(
        f"{summary['run_id']}: {status}; time to fit "
        f"{fit if fit is not None else 'not reached'}; test accuracy "
        f"{summary['test_accuracy']}; outputs in {args.out}"
    )
    return 0


def _write_error(error: OSError, out: str) -> str:
    """One line for an output that could not be written (a full disk says so)."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.errno == errno.ENOSPC:
        return (
            f"no space left on {out} ({reason}); free some space, then re-run the same "
            "command to resume"
        )
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write the run directory {out}{where}: {reason}"


def _query(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from protolib.io import write_atomic
    from protolib.results.query import QueryError, format_table, query_arrow

    try:
        table = query_arrow(args.sql, args.results, args.experiment)
    except (QueryError, duckdb.Error) as error:  # no results, unknown experiment, bad SQL
        return _fail("query", str(error))
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
        return _fail("query", f"cannot write {target}: {error}")
    rows = table.num_rows
    print(f"wrote {rows} row{'s' if rows != 1 else ''} to {target}")
    return 0


def _aggregate(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from protolib.results.aggregate import AggregateError, aggregate

    try:
        written = aggregate(args.run_dirs, args.out)
    except (AggregateError, OSError) as error:
        return _fail("aggregate", str(error))
    for path in written.values():
        rows = pq.read_metadata(path).num_rows
        print(f"wrote {rows} row{'s' if rows != 1 else ''} to {path}")
    return 0


def _max_rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--max-rows expects an integer >= 0, got {text!r}")
    return value


def _fail(command: str, message: str) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"protolib {command}: error: {first}", file=sys.stderr)
    return 2


def _bounds(args: argparse.Namespace) -> int:
    from protolib.theory import (
        BoundError,
        ce_bound_frobenius,
        ce_bound_row_norm,
        ce_l2_bound,
        supcon_bound,
    )

    if (args.rho is None) == (args.tau is None):
        return _fail(
            "bounds", "give exactly one of --rho (sphere radius) and --tau (rho = 1/sqrt(tau))"
        )
    if args.tau is not None and not args.tau > 0:
        return _fail("bounds", f"--tau must be > 0, got {args.tau}")
    rho = args.rho if args.rho is not None else 1 / args.tau**0.5
    try:
        if args.loss == "supcon":
            if args.samples is None or args.batch_size is None:
                return _fail("bounds", "supcon needs --samples and --batch-size")
            bound = supcon_bound(args.samples, args.classes, args.batch_size, rho)
            print(
                f"SupCon Theorem 2 (N={args.samples}, K={args.classes}, b={args.batch_size}, "
                f"rho={rho:.6g}): {bound.per_batch:.12g} per batch; total over all "
                f"C(N+b-1, b) = exp({bound.log_num_batches:.6f}) multisets: "
                f"exp({bound.log_total:.6f})"
            )
            return 0
        given = [x for x in (args.lam, args.weight_norm, args.row_norm) if x is not None]
        if len(given) != 1:
            return _fail("bounds", "ce needs exactly one of --lam, --weight-norm, --row-norm")
        if args.lam is not None:
            value, r = ce_l2_bound(args.classes, rho, args.lam)
            print(
                f"CE + lam*|W|_F^2 Corollary 2 (K={args.classes}, rho={rho:.6g}, "
                f"lam={args.lam:g}): {value:.12g} at r* = {r:.12g}"
            )
        elif args.weight_norm is not None:
            value = ce_bound_frobenius(args.classes, rho, args.weight_norm)
            print(
                f"CE Theorem 1 (K={args.classes}, rho={rho:.6g}, "
                f"|W|_F={args.weight_norm:g}): {value:.12g}"
            )
        else:
            value = ce_bound_row_norm(args.classes, rho, args.row_norm)
            print(
                f"CE Corollary 1 (K={args.classes}, rho={rho:.6g}, "
                f"r={args.row_norm:g}): {value:.12g}"
            )
    except BoundError as error:
        return _fail("bounds", str(error))
    return 0


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
    train.add_argument(
        "--config",
        help="run config JSON file, or - for standard input (defaults fill every missing key)",
    )
    train.add_argument(
        "--threads",
        type=int,
        help="CPU threads for this process (not part of the run's identity; default: torch's)",
    )
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
    bounds = commands.add_parser("bounds", help="print a loss lower bound (MATH.md section 4)")
    bounds.add_argument("loss", choices=["supcon", "ce"])
    bounds.add_argument("--classes", type=int, required=True, help="K")
    bounds.add_argument("--rho", type=float, help="embedding norm bound / sphere radius")
    bounds.add_argument("--tau", type=float, help="temperature; rho = 1/sqrt(tau)")
    bounds.add_argument("--samples", type=int, help="supcon: N (balanced classes)")
    bounds.add_argument("--batch-size", type=int, help="supcon: b")
    bounds.add_argument("--lam", type=float, help="ce: weight decay (Corollary 2)")
    bounds.add_argument("--weight-norm", type=float, help="ce: |W|_F (Theorem 1)")
    bounds.add_argument("--row-norm", type=float, help="ce: max |w_y| (Corollary 1)")
    bounds.set_defaults(func=_bounds)
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
    query.set_defaults(func=_query)
    agg = commands.add_parser(
        "aggregate",
        help="compact run directories into runs/metrics/geometry/gamma.parquet",
    )
    agg.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    agg.add_argument("--out", required=True, help="the aggregate folder to write")
    agg.set_defaults(func=_aggregate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
