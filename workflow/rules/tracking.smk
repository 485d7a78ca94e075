# Mirror an experiment into MLflow after aggregation: one parent run, one child run per
# grid point, plots and tables on the parent. Idempotent; a failing tracking server fails
# this rule with a clear message and loses nothing (re-run it later).


localrules:
    tracking,


rule tracking:
    input:
        runs=f"{RESULTS}/{{experiment}}/aggregate/runs.parquet",
        metrics=f"{RESULTS}/{{experiment}}/aggregate/metrics.parquet",
        report=lambda w: report_outputs(w.experiment),
    output:
        f"{RESULTS}/{{experiment}}/tracking.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/tracking.log",
    params:
        uri=config.get("tracking_uri"),
    run:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from jobs
        from protolib.io import write_json
        from protolib.tracking import sync_experiment

        counts = sync_experiment(
            Path(input.runs).parent,
            experiment=wildcards.experiment,
            tracking_uri=params.uri,
            results=Path(RESULTS),
            run_dirs={r: Path(run_dir(wildcards.experiment, r)) for r in RUNS[wildcards.experiment]},
            artifacts=[Path(p) for p in input.report],
        )
        Path(log[0]).write_text(json.dumps(counts) + "\n")
        write_json(output[0], {"experiment": wildcards.experiment, **counts})
