# Fan-in: compact every run of an experiment into its query tables (`protolib aggregate`,
# which verifies each run directory against its config and manifest).


localrules:
    aggregate,


rule aggregate:
    input:
        batch_markers,
    output:
        runs=f"{RESULTS}/{{experiment}}/aggregate/runs.parquet",
        metrics=f"{RESULTS}/{{experiment}}/aggregate/metrics.parquet",
        geometry=f"{RESULTS}/{{experiment}}/aggregate/geometry.parquet",
        gamma=f"{RESULTS}/{{experiment}}/aggregate/gamma.parquet",
    log:
        f"{RESULTS}/{{experiment}}/logs/aggregate.log",
    params:
        run_dirs=lambda w: run_dirs(w.experiment),
        out=lambda w, output: Path(output.runs).parent,
    shell:
        "protolib aggregate {params.run_dirs:q} --out {params.out:q} > {log} 2>&1"
