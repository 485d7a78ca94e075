# Mirror an experiment into MLflow after aggregation (`protolib track`): one parent run, one
# child run per grid point, plots and tables on the parent. Idempotent; a failing tracking
# server fails this rule with a clear message and loses nothing (re-run it later).
#
# The marker tracking.json records the store it describes; at plan time a marker whose
# store is gone or was recreated (e.g. results/mlflow.db deleted) forces a re-sync of its
# experiment (protolib.tracking.marker_staleness; read-only, dry runs too).

from protolib.tracking import marker_staleness


STALE_MARKERS = {}  # marker -> why it no longer describes its store
if workflow.is_main_process:  # not in the processes a cluster job starts
    for _experiment in RUNS:
        _marker = tracking_marker(_experiment)
        _why = marker_staleness(
            Path(_marker), tracking_uri=config.get("tracking_uri"), results=Path(RESULTS)
        )
        if _why is not None:
            print(f"protolib: {_why}; re-syncing experiment {_experiment}", file=sys.stderr)
            STALE_MARKERS[_marker] = _why


def _report_inputs(wildcards):
    marker = tracking_marker(wildcards.experiment)
    if marker in STALE_MARKERS:
        force_rerun([marker])  # train.smk
    return report_outputs(wildcards.experiment)


localrules:
    tracking,


def _tracking_args(wildcards, input):
    """The arguments of `protolib track` that list the runs and the report's files."""
    experiment = wildcards.experiment
    args = [f"--run-dir={r}={run_dir(experiment, r)}" for r in RUNS[experiment]]
    args += [f"--artifact={p}" for p in input.report]
    if config.get("tracking_uri"):
        args.append(f"--tracking-uri={config['tracking_uri']}")
    return args


rule tracking:
    input:
        runs=rules.aggregate.output.runs,
        metrics=rules.aggregate.output.metrics,
        report=_report_inputs,
    output:
        f"{RESULTS}/{{experiment}}/tracking.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/tracking.log",
    params:
        aggregate=lambda w, input: Path(input.runs).parent,
        args=_tracking_args,
        results=RESULTS,
    shell:
        "protolib track {params.aggregate:q} --experiment {wildcards.experiment:q}"
        " --results {params.results:q} --marker {output:q} {params.args:q} > {log} 2>&1"
