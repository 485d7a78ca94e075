"""The ``protolib`` command.

Each subcommand imports what it needs when it runs: ``protolib --help``, ``--version``,
``query`` and ``aggregate`` never import torch (``list``, ``train``, ``report``, ``theory``
and ``track`` do what they must). Every subcommand refuses bad input before any work with
one line, ``protolib <command>: error: …``, and exit status 2.

The console script is :func:`run`: it ends the process with ``os._exit`` once the command
has returned (its outputs are on disk, written atomically), skipping the interpreter's
teardown, which takes about a second once torch is loaded. :func:`main` returns the exit
status, for callers in the same process.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

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
    ``protolib train`` refuses in one line, naming the argument."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        return None, text
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    return key, value


def _train(args: argparse.Namespace) -> int:
    """``protolib train``: :func:`protolib.train.command.run` (imported only when run)."""
    from protolib.train import command

    return command.run(args)


def _write_error(error: OSError, out: str, what: str) -> str:
    """One line for an output that could not be written (a full disk says so)."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.errno == errno.ENOSPC:
        return (
            f"no space left on {out} ({reason}); free some space, then re-run the same "
            "command to resume"
        )
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write {what} {out}{where}: {reason}"


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


def _folder_problem(path: str | Path, what: str) -> str | None:
    """Why the folder ``path`` could not be created or written (``None`` when it can):
    checked before any work, so a refused command writes nothing."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        return f"{what} {path} is a file, not a folder; give a folder"
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{what} {path} cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be written: {existing} is not writable"
    return None


def _written(written: dict[str, Path]) -> None:
    """One ``name: path`` line per file written."""
    for name, path in written.items():
        print(f"{name}: {path}")


def _report(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from protolib.results.report import make_report, read_aggregate

    aggregate_dir = Path(args.aggregate_dir)
    if not aggregate_dir.is_dir():
        return _fail(
            "report",
            f"AGGREGATE_DIR {args.aggregate_dir} is not a folder; give an aggregate "
            "folder (runs.parquet, metrics.parquet, geometry.parquet, gamma.parquet)",
        )
    problem = _folder_problem(args.out, "--out")
    if problem:
        return _fail("report", problem)
    try:
        frames = read_aggregate(aggregate_dir)
    except (OSError, ValueError, pa.ArrowException) as error:
        return _fail("report", " ".join(str(error).split()))
    if args.gram_runs is not None:
        known = set(frames["runs"]["run_id"]) | set(frames["geometry"]["run_id"])
        unknown = [r for r in args.gram_runs if r not in known]
        if unknown:
            return _fail(
                "report",
                f"--gram-runs: unknown run id(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known)) or 'none'}",
            )
    try:
        written = make_report(aggregate_dir, args.out, gram_runs=args.gram_runs)
    except OSError as error:
        return _fail("report", _write_error(error, args.out, "the report"))
    except (ValueError, pa.ArrowException) as error:
        return _fail("report", " ".join(str(error).split()))
    _written(written)
    return 0


def _int_in_range(key: str, value: int | None, low: int, high: int) -> str | None:
    if value is None or low <= value <= high:
        return None
    return f"{key} must be an integer in {low}..{high}, got {value}"


def _theory(args: argparse.Namespace) -> int:
    from protolib.train.config import INT_RANGES

    for key, value, field in (
        ("--threads", args.threads, "threads"),
        ("--seed", args.seed, "seed"),
    ):
        problem = _int_in_range(key, value, *INT_RANGES[field])
        if problem:
            return _fail("theory", problem)
    problem = _folder_problem(args.out, "--out")
    if problem:
        return _fail("theory", problem)
    from protolib.theory.report import make_theory

    try:
        written = make_theory(args.out, threads=args.threads, seed=args.seed)
    except OSError as error:
        return _fail("theory", _write_error(error, args.out, "the theory outputs"))
    _written(written)
    return 0


def _run_dirs(texts: list[str]) -> dict[str, Path] | str:
    """``RUN_ID=PATH`` arguments as ``{run_id: path}``, or the one-line problem."""
    run_dirs: dict[str, Path] = {}
    for text in texts:
        run_id, sep, path = text.partition("=")
        if not sep or not run_id.strip() or not path:
            return f"--run-dir expects RUN_ID=PATH, got {text!r}"
        if run_id in run_dirs:
            return f"--run-dir {run_id} is given twice; give each run once"
        run_dirs[run_id] = Path(path)
    return run_dirs


def _aggregate_run_ids(aggregate_dir: Path, fallback: dict[str, Path]) -> set[str]:
    """The run ids of ``aggregate_dir/runs.parquet`` (``fallback``'s when it cannot be
    read: the sync then refuses the aggregate itself, naming the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(aggregate_dir / "runs.parquet", columns=["run_id"])
        return set(table["run_id"].to_pylist())
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return set(fallback)


def _track(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from jobs
    run_dirs = _run_dirs(args.run_dirs)
    if isinstance(run_dirs, str):
        return _fail("track", run_dirs)
    if not args.experiment.strip():
        return _fail("track", "--experiment must be a non-empty name")
    if not Path(args.aggregate_dir).is_dir():
        return _fail(
            "track",
            f"AGGREGATE_DIR {args.aggregate_dir} is not a folder; give an aggregate "
            "folder (runs.parquet, metrics.parquet)",
        )
    unknown = sorted(set(run_dirs) - _aggregate_run_ids(Path(args.aggregate_dir), run_dirs))
    if unknown:
        return _fail(
            "track",
            f"--run-dir {unknown[0]}: not a run of {args.aggregate_dir}/runs.parquet; "
            "give the directories of the aggregated runs only",
        )
    marker = Path(args.marker)
    if marker.is_dir():
        return _fail("track", f"--marker {args.marker} is a folder; give a file path")
    for path, what in (
        (marker.parent, f"the folder of --marker {args.marker}:"),
        (args.results, "--results"),
    ):
        problem = _folder_problem(path, what)
        if problem:
            return _fail("track", problem)
    from protolib.tracking import TrackingError, sync_experiment

    try:
        counts = sync_experiment(
            Path(args.aggregate_dir),
            experiment=args.experiment,
            tracking_uri=args.tracking_uri or None,
            results=Path(args.results),
            run_dirs=run_dirs or None,
            artifacts=[Path(p) for p in args.artifacts],
            marker=marker,
        )
    except TrackingError as error:
        return _fail("track", str(error))
    except OSError as error:  # the marker could not be written
        return _fail("track", _write_error(error, args.marker, "the marker"))
    print(json.dumps(counts))
    print(f"marker: {marker}")
    return 0


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


def _add_train(commands: Any) -> None:
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
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a config key (VALUE parsed as JSON when it can be)",
    )
    bar = train.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    train.set_defaults(func=_train)


def _add_bounds(commands: Any) -> None:
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


def _add_query(commands: Any) -> None:
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


def _add_pipeline_steps(commands: Any) -> None:
    """aggregate, report, theory, track: the pipeline's steps after training."""
    agg = commands.add_parser(
        "aggregate",
        help="compact run directories into runs/metrics/geometry/gamma.parquet",
    )
    agg.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    agg.add_argument("--out", required=True, help="the aggregate folder to write")
    agg.set_defaults(func=_aggregate)
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
    report.set_defaults(func=_report)
    theory = commands.add_parser(
        "theory", help="compute the loss bounds and run the unconstrained-features simulations"
    )
    theory.add_argument("--out", required=True, help="the theory folder to write")
    theory.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    theory.add_argument("--seed", type=int, default=0, help="seed of the simulations (default: 0)")
    theory.set_defaults(func=_theory)
    track = commands.add_parser("track", help="mirror an experiment's aggregate into MLflow")
    track.add_argument("aggregate_dir", metavar="AGGREGATE_DIR", help="the aggregate folder")
    track.add_argument(
        "--experiment", required=True, help="the experiment (MLflow: protolib/<experiment>)"
    )
    track.add_argument(
        "--results", required=True, help="the results folder (local store, artifacts)"
    )
    track.add_argument(
        "--marker", required=True, metavar="PATH", help="the marker written after the sync"
    )
    track.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default: SQLite in --results)"
    )
    track.add_argument(
        "--run-dir",
        dest="run_dirs",
        action="append",
        default=[],
        metavar="RUN_ID=PATH",
        help="a run's directory (its config and summary are logged too); repeat per run",
    )
    track.add_argument(
        "--artifact",
        dest="artifacts",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or folder logged on the parent run (plots, tables); repeatable",
    )
    track.set_defaults(func=_track)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="protolib", description=protolib.__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    listing.add_argument("-v", "--verbose", action="store_true", help="show what each loss needs")
    listing.set_defaults(func=_list)
    _add_train(commands)
    _add_bounds(commands)
    _add_query(commands)
    _add_pipeline_steps(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: ``sys.argv[1:]``); return its exit status
    (``--help``, ``--version`` and usage errors too, which argparse ends with SystemExit)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return _exit_status(stop.code)
    return args.func(args)


def _exit_status(code: object) -> int:
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
        code = _exit_status(stop.code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    run()
