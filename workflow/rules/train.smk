# Train jobs: each is a batch of runs (protolib.batching: short runs several to a process,
# long ones alone), trained one after another by one `protolib train --batch` process, each
# into its own run directory (every file written atomically) with its own log
# (logs/train/<run_id>.log), lock and resume state. The job's output is a marker written
# when every run of the batch has finished; the run directories are not declared outputs,
# so that Snakemake never deletes a finished run (a re-run batch skips its finished runs and
# resumes the interrupted one from its resume.pt).
#
# On a cluster (`--profile slurm`): a time limit derived from the batch's budget (minutes,
# times the attempt number: a retry gets longer and resumes), one GPU (its type and
# partition) unless the runs are pinned to the CPU (protolib/resources.py). Locally these
# only matter with `--resources gpu=N`.
#
# PROTOLIB_SLURM_PROCESSES_PER_RUN = G > 1 (protolib/resources.py; default 1): each run of
# a batch trains on G processes (MATH.md §1.10), every process training the batch's runs
# in turn. The job asks for G tasks and, for GPU runs, G GPUs (one per task); inside a
# SLURM job the command starts them with `srun --ntasks=G` (the `mpi` resource makes the
# executor plugin run the command as it is in the allocation), on a machine without SLURM
# with `torchrun --standalone --nproc-per-node=G`. srun gives standard input to task 0
# only, so the batch spec is a file beside the batch log, which every task reads. A run
# whose batch G processes cannot share equally is refused here, before any job.
#
# A finished run whose summary.json is corrupt, whose declared files are missing or of
# another size than its manifest records, or whose config.json is not the experiment's
# config any more, is retrained, and only it (with its experiment's aggregate, report and
# tracking downstream): the runs are checked once at plan time (one stat per file and one
# small read; protolib.batching.stale_reason) and their batches forced, in dry runs too,
# which only report. So is a finished batch with a run that has no summary. When the
# workflow really starts, the stale outputs are first moved to <run>/.corrupt/<timestamp>/.

from protolib.batching import stale_reason
from protolib.results.contract import SUMMARY
from protolib.results.manifest import quarantine


def force_rerun(files):
    """Force the jobs producing ``files``, as ``--forcerun FILE`` would.

    Called from input functions, that is while Snakemake builds the DAG and before it
    decides which jobs need to run; a no-op in the processes a cluster job starts.
    """
    dag = workflow.dag
    if files and dag is not None and workflow.is_main_process:
        dag.forcefiles.update(files)


try:
    PROCESSES = resources.processes_per_run()
    for _runs in RUNS.values():
        resources.check_processes(_runs, PROCESSES)
except ValueError as error:
    _fail(error)


def train_log(experiment, run_id):
    return f"{RESULTS}/{experiment}/logs/train/{run_id}.log"


STALE_RUNS = {}  # run directory -> why its outputs cannot stand
RETRAIN = set()  # batch markers whose batch must train again
if workflow.is_main_process:  # not in the processes a cluster job starts
    for _experiment, _batches in BATCHES.items():
        for _name, _batch in _batches.items():
            _marker = batch_marker(_experiment, _name)
            for _run in _batch.runs:
                _folder = run_dir(_experiment, _run)
                _why = stale_reason(_folder, RUNS[_experiment][_run])
                if _why is not None:
                    print(f"protolib: {_why}; retraining {_folder}", file=sys.stderr)
                    STALE_RUNS[_folder] = _why
                    RETRAIN.add(_marker)
                elif os.path.exists(_marker) and not os.path.exists(f"{_folder}/{SUMMARY}"):
                    print(f"protolib: {_folder} has no {SUMMARY}; training it", file=sys.stderr)
                    RETRAIN.add(_marker)


def _retrain_if_stale(wildcards):
    marker = batch_marker(wildcards.experiment, wildcards.batch)
    if marker in RETRAIN:
        force_rerun([marker])
    return []


def _batch_spec(wildcards, output):
    experiment = wildcards.experiment
    runs = [
        {
            "config": RUNS[experiment][r],
            "out": run_dir(experiment, r),
            "log": train_log(experiment, r),
        }
        for r in BATCHES[experiment][wildcards.batch].runs
    ]
    return json.dumps({"runs": runs, "done": output[0]}, sort_keys=True)


def _batch_configs(wildcards):
    return [RUNS[wildcards.experiment][r] for r in BATCHES[wildcards.experiment][wildcards.batch].runs]


def _tasks(key):
    """The job's ``key`` of resources.job_tasks (None: not asked)."""
    return lambda w: resources.job_tasks(_batch_configs(w)[0], PROCESSES)[key]


onstart:
    if not workflow.touch:
        for folder in STALE_RUNS:
            kept = quarantine(folder)
            if kept is not None:
                print(f"protolib: moved the stale outputs of {folder} to {kept}", file=sys.stderr)


rule train:
    input:
        _retrain_if_stale,  # no files: forces the job of a batch with a stale run
    output:
        f"{RESULTS}/{{experiment}}/batches/{{batch}}.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/batches/{{batch}}.log",
        spec=f"{RESULTS}/{{experiment}}/logs/batches/{{batch}}.spec.json",
    params:
        spec=_batch_spec,
    threads: 1
    resources:
        runtime=lambda w, attempt: resources.runtime_minutes(_batch_configs(w), attempt),
        gpu=_tasks("gpu"),
        tasks=_tasks("tasks"),
        tasks_per_gpu=_tasks("tasks_per_gpu"),
        mpi=_tasks("mpi"),
        processes=PROCESSES,
        gpu_model=lambda w: resources.gpu_model(_batch_configs(w)[0]),
        slurm_partition=lambda w: resources.partition(_batch_configs(w)[0]),
    shell:
        # exec: the shell becomes the trainer (or its launcher, which passes signals on), so a
        # SIGTERM (SLURM time limit, preemption, scancel) reaches it, and the trainer
        # checkpoints before anything ends the step.
        "printf '%s' {params.spec:q} > {log.spec:q}\n"
        "set -- protolib train --batch {log.spec:q} --threads {threads} --no-progress\n"
        "if [ {resources.processes} -gt 1 ] && [ -n \"${{SLURM_JOB_ID:-}}\" ]; then\n"
        "    set -- srun --ntasks={resources.processes} --cpus-per-task={threads}"
        " --kill-on-bad-exit=1 \"$@\"\n"
        "elif [ {resources.processes} -gt 1 ]; then\n"
        "    set -- torchrun --standalone --nproc-per-node={resources.processes} --no-python \"$@\"\n"
        "fi\n"
        "exec \"$@\" > {log[0]:q} 2>&1"
