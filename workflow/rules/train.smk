# One job per run: `protolib train` writes the run directory (every file atomically).
# The periodic resume state (resume.pt) is deliberately not a declared output, so that
# Snakemake's clean-up of an interrupted job keeps it and the re-run resumes.
#
# On a cluster (`--profile slurm`): a time limit derived from the run's budget (minutes,
# times the attempt number: a retry after a timeout gets longer and resumes), one GPU
# (its type and partition) unless the run is pinned to the CPU, and short GPU runs in the
# job group "small_runs", which the profile packs several to a SLURM job
# (protolib/resources.py). Locally these only matter with `--resources gpu=N`.
#
# A finished run whose summary.json is corrupt, or whose declared files are missing or of
# another size than its manifest records, is retrained, and only it (with its
# experiment's aggregate, report and tracking downstream): the runs are checked once at
# plan time (one stat per file; protolib.results.manifest) and their train jobs forced,
# in dry runs too, which only report. When the workflow really starts, the damaged
# outputs are first moved to <run>/.corrupt/<timestamp>/ (Snakemake would delete them).

from protolib.results.manifest import damaged_runs, quarantine


def force_rerun(files):
    """Force the jobs producing ``files``, as ``--forcerun FILE`` would.

    Called from input functions, that is while Snakemake builds the DAG and before it
    decides which jobs need to run; a no-op in the processes a cluster job starts.
    """
    dag = workflow.dag
    if files and dag is not None and workflow.is_main_process:
        dag.forcefiles.update(files)


DAMAGED = {}  # run directory -> why it is damaged
if workflow.is_main_process:  # not in the processes a cluster job starts
    DAMAGED = damaged_runs(run_dir(e, r) for e in RUNS for r in RUNS[e])
    for _folder, _why in DAMAGED.items():
        print(f"protolib: {_why}; retraining {_folder}", file=sys.stderr)


def _retrain_if_damaged(wildcards):
    folder = run_dir(wildcards.experiment, wildcards.run_id)
    if folder in DAMAGED:
        force_rerun([f"{folder}/summary.json"])
    return []


onstart:
    if not workflow.touch:
        for folder in DAMAGED:
            kept = quarantine(folder)
            if kept is not None:
                print(f"protolib: moved the damaged outputs of {folder} to {kept}", file=sys.stderr)



rule train:
    input:
        _retrain_if_damaged,  # no files: forces the job of a damaged finished run
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
        config=lambda w: json.dumps(run_config(w), sort_keys=True),
        out=lambda w: run_dir(w.experiment, w.run_id),
    threads: 1
    resources:
        runtime=lambda w, attempt: resources.runtime_minutes(run_config(w), attempt),
        gpu=lambda w: resources.gpus(run_config(w)),
        gpu_model=lambda w: resources.gpu_model(run_config(w)),
        slurm_partition=lambda w: resources.partition(run_config(w)),
    group:
        lambda w: resources.job_group(run_config(w))
    shell:
        # exec: the shell becomes protolib, so a SIGTERM (SLURM time limit, preemption, scancel)
        # reaches the trainer, which checkpoints, and nothing ends the step before it has.
        "exec protolib train --config - --out {params.out} --threads {threads} --no-progress"
        " <<< {params.config:q} > {log} 2>&1"
