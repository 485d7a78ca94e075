# Fan-in: compact every run of an experiment into its query tables (`protolib aggregate`,
# which verifies each run directory against its config and manifest).

from protolib.results.contract import TABLE_FILES


localrules:
    aggregate,


rule aggregate:
    input:
        batch_markers,
    output:
        **{name: f"{RESULTS}/{{experiment}}/aggregate/{file}" for name, file in TABLE_FILES.items()},
    log:
        f"{RESULTS}/{{experiment}}/logs/aggregate.log",
    params:
        run_dirs=lambda w: run_dirs(w.experiment),
        out=lambda w, output: Path(output.runs).parent,
    shell:
        "protolib aggregate {params.run_dirs:q} --out {params.out:q} > {log} 2>&1"
