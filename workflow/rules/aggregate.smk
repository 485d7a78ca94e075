# Fan-in: compact every run of an experiment into its query tables (DuckDB).


localrules:
    aggregate,


rule aggregate:
    input:
        summaries=run_summaries,
    output:
        runs=f"{RESULTS}/{{experiment}}/aggregate/runs.parquet",
        metrics=f"{RESULTS}/{{experiment}}/aggregate/metrics.parquet",
        geometry=f"{RESULTS}/{{experiment}}/aggregate/geometry.parquet",
        gamma=f"{RESULTS}/{{experiment}}/aggregate/gamma.parquet",
    log:
        f"{RESULTS}/{{experiment}}/logs/aggregate.log",
    run:
        from protolib.results.aggregate import aggregate

        written = aggregate([Path(s).parent for s in input.summaries], Path(output.runs).parent)
        Path(log[0]).write_text(
            "".join(f"{name}: {path}\n" for name, path in written.items())
        )
