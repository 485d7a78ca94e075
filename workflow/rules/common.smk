# Read the config strictly, plan it (protolib.pipeline.plan: plugins, schema with registry
# names, grid expansion into the run table RUNS = {experiment: {run_id: run config}}, and
# every check that needs no job), and helpers. A bad config stops here, before any job,
# with one line on stderr and exit status 2.

import json
import os
import re
import sys
from pathlib import Path

from protolib import resources
from protolib.batching import plan_batches
from protolib.pipeline import PipelineConfigError, plan, read_config_file
from protolib.train.config import RUN_ID_PATTERN


def _fail(error):
    """One line on stderr and exit status 2, before any job is planned."""
    print(f"protolib: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)


# config.yaml is the default; `--configfile PRESET` replaces it (rather than adding the
# preset's experiments to the default ones). Snakemake's own YAML reader keeps the last of
# two equal keys and reports a syntax error without its place, so every config file is
# read strictly first (Snakemake reads `--configfile` files before this runs: a syntax
# error there is reported by Snakemake itself).
if not workflow.overwrite_configfiles:
    try:
        read_config_file("config.yaml")
    except PipelineConfigError as error:
        _fail(error)

    configfile: "config.yaml"


for _path in dict.fromkeys(map(str, workflow.configfiles)):
    try:
        read_config_file(_path)
    except PipelineConfigError as error:
        _fail(error)

try:
    PLAN = plan(
        config,
        Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml",
        check_data=workflow.is_main_process,
    )
except PipelineConfigError as error:
    _fail(error)
if workflow.is_main_process:
    for _note in PLAN.notes:
        print(f"protolib: {_note}", file=sys.stderr)
RUNS = PLAN.runs
RESULTS = PLAN.results


def _slots():
    """Train jobs that should run at once: the cores here; on a cluster, where a job costs a
    scheduler round trip, as few as ``batch_seconds`` allows (protolib.batching). The
    executor is not known while the Snakefile is read, but `--jobs` is set (and `--cores`
    ignored) for a cluster only, in dry runs too; and the process a cluster job starts,
    which reads the Snakefile again to find its batch, must plan the same batches."""
    if workflow.nodes or not workflow.is_main_process:
        return 1
    return workflow.global_resources["_cores"].value or 1


# The train jobs: {experiment: {batch name: Batch}}; each trains its runs in one process.
BATCHES = {
    experiment: plan_batches(runs, batch_seconds=PLAN.batch_seconds, slots=_slots())
    for experiment, runs in RUNS.items()
}


wildcard_constraints:
    experiment="|".join(re.escape(name) for name in RUNS),
    batch=RUN_ID_PATTERN.pattern.strip("^$"),  # a batch is named after its first run


def run_dir(experiment, run_id):
    return f"{RESULTS}/{experiment}/runs/{run_id}"


def run_dirs(experiment):
    return [run_dir(experiment, r) for r in RUNS[experiment]]


def batch_marker(experiment, batch):
    return f"{RESULTS}/{experiment}/batches/{batch}.json"


def batch_markers(wildcards):
    return [batch_marker(wildcards.experiment, b) for b in BATCHES[wildcards.experiment]]


def report_dir(experiment):
    return f"{RESULTS}/{experiment}/report"


def tracking_marker(experiment):
    return f"{RESULTS}/{experiment}/tracking.json"
