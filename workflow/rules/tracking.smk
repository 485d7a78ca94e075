# Mirror an experiment into MLflow after aggregation: one parent run, one child run per
# grid point, plots and tables on the parent. Idempotent; a failing tracking server fails
# this rule with a clear message and loses nothing (re-run it later).
#
# The marker tracking.json records the store it describes; at plan time a marker whose
# store is gone or was recreated (e.g. results/mlflow.db deleted) forces a re-sync of its
# experiment (protolib.tracking.marker_staleness; read-only, dry runs too).

from protolib.tracking import marker_staleness


STALE = {}  # marker -> why it no longer describes its store
if workflow.is_main_process:  # not in the processes a cluster job starts
    for _experiment in RUNS:
        _marker = tracking_marker(_experiment)
        _why = marker_staleness(
            Path(_marker), tracking_uri=config.get("tracking_uri"), results=Path(RESULTS)
        )
        if _why is not None:
            print(f"protolib: {_why}; re-syncing experiment {_experiment}", file=sys.stderr)
            STALE[_marker] = _why


def _report_inputs(wildcards):
    marker = tracking_marker(wildcards.experiment)
    if marker in STALE:
        force_rerun([marker])  # train.smk
    return report_outputs(wildcards.experiment)


localrules:
    tracking,


rule tracking:
    input:
        runs=f"{RESULTS}/{{experiment}}/aggregate/runs.parquet",
        metrics=f"{RESULTS}/{{experiment}}/aggregate/metrics.parquet",
        report=_report_inputs,
    output:
        f"{RESULTS}/{{experiment}}/tracking.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/tracking.log",
    params:
        uri=config.get("tracking_uri"),
    run:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from jobs
        from protolib.tracking import sync_experiment

        counts = sync_experiment(
            Path(input.runs).parent,
            experiment=wildcards.experiment,
            tracking_uri=params.uri,
            results=Path(RESULTS),
            run_dirs={r: Path(run_dir(wildcards.experiment, r)) for r in RUNS[wildcards.experiment]},
            artifacts=[Path(p) for p in input.report],
            marker=Path(output[0]),
        )
        Path(log[0]).write_text(json.dumps(counts) + "\n")
