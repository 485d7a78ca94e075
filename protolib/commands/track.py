"""``protolib track``: mirror an experiment's aggregate into MLflow (:mod:`protolib.tracking`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from protolib.commands.common import fail, folder_problem


def add_parser(commands: Any) -> None:
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
    track.set_defaults(func=run)


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

    from protolib.results.contract import RUNS

    try:
        table = pq.read_table(aggregate_dir / RUNS, columns=["run_id"])
        return set(table["run_id"].to_pylist())
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return set(fallback)


def _problem(args: argparse.Namespace, run_dirs: dict[str, Path]) -> str | None:
    """What is wrong with the arguments other than --run-dir's form (``None``: nothing)."""
    if not args.experiment.strip():
        return "--experiment must be a non-empty name"
    if not Path(args.aggregate_dir).is_dir():
        return (
            f"AGGREGATE_DIR {args.aggregate_dir} is not a folder; give an aggregate "
            "folder (runs.parquet, metrics.parquet)"
        )
    unknown = sorted(set(run_dirs) - _aggregate_run_ids(Path(args.aggregate_dir), run_dirs))
    if unknown:
        return (
            f"--run-dir {unknown[0]}: not a run of {args.aggregate_dir}/runs.parquet; "
            "give the directories of the aggregated runs only"
        )
    if Path(args.marker).is_dir():
        return f"--marker {args.marker} is a folder; give a file path"
    for path, what in (
        (Path(args.marker).parent, f"the folder of --marker {args.marker}:"),
        (args.results, "--results"),
    ):
        problem = folder_problem(path, what)
        if problem:
            return problem
    return None


def run(args: argparse.Namespace) -> int:
    """Check every argument, then sync; print the counts and the marker's path."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from jobs
    run_dirs = _run_dirs(args.run_dirs)
    if isinstance(run_dirs, str):
        return fail("track", run_dirs)
    problem = _problem(args, run_dirs)
    if problem is not None:
        return fail("track", problem)
    from protolib.io import write_error
    from protolib.tracking import TrackingError, sync_experiment

    marker = Path(args.marker)
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
        return fail("track", str(error))
    except OSError as error:  # the marker could not be written
        return fail("track", write_error(error, args.marker, "the marker"))
    print(json.dumps(counts))
    print(f"marker: {marker}")
    return 0
