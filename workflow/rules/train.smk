# One job per run: `protolib train` writes the run directory (every file atomically).
# The periodic resume state (resume.pt) is deliberately not a declared output, so that
# Snakemake's clean-up of an interrupted job keeps it and the re-run resumes.


rule train:
    output:
        summary=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/summary.json",
        config=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/config.json",
        metrics=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/metrics.parquet",
        geometry=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/geometry.parquet",
        gamma=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/gamma.parquet",
        data=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/data.parquet",
        checkpoint=f"{RESULTS}/{{experiment}}/runs/{{run_id}}/checkpoint.pt",
    log:
        f"{RESULTS}/{{experiment}}/logs/train/{{run_id}}.log",
    params:
        config=lambda w: json.dumps(RUNS[w.experiment][w.run_id], sort_keys=True),
        out=lambda w: run_dir(w.experiment, w.run_id),
    threads: 1
    shell:
        "protolib train --config - --out {params.out} --threads {threads} --no-progress"
        " <<< {params.config:q} > {log} 2>&1"
