# Validate config.yaml against its schema (registry names filled in at start-up), expand
# the grid into the run table RUNS = {experiment: {run_id: run config}}, and helpers.

import json
import os
import sys
import tempfile
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from protolib import resources
from protolib.pipeline import (
    PipelineConfigError,
    describe_validation_error,
    expand,
    registry_schema,
)


def _fail(message):
    """One clear line on stderr and a non-zero exit, before any job is planned."""
    print(f"protolib: {message}", file=sys.stderr)
    sys.exit(1)


def _validated(config):
    try:
        schema = registry_schema(
            Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml",
            config.get("plugins", []) if isinstance(config, dict) else [],
        )
    except PipelineConfigError as error:
        _fail(error)
    with tempfile.NamedTemporaryFile("w", suffix=".schema.yaml") as handle:
        yaml.safe_dump(schema, handle)
        handle.flush()
        try:
            validate(config, handle.name)
        except WorkflowError as error:
            cause = error.__context__ if hasattr(error.__context__, "validator") else error
            _fail(describe_validation_error(cause))
    try:
        return expand(config)
    except PipelineConfigError as error:
        _fail(error)


RUNS = _validated(config)
RESULTS = config["results"]
wildcard_constraints:
    experiment="|".join(RUNS),
    run_id="[A-Za-z0-9][A-Za-z0-9._=,+-]*",


def run_config(wildcards):
    return RUNS[wildcards.experiment][wildcards.run_id]


def run_dir(experiment, run_id):
    return f"{RESULTS}/{experiment}/runs/{run_id}"


def run_summaries(wildcards):
    return [f"{run_dir(wildcards.experiment, r)}/summary.json" for r in RUNS[wildcards.experiment]]


def aggregate_dir(experiment):
    return f"{RESULTS}/{experiment}/aggregate"


def report_dir(experiment):
    return f"{RESULTS}/{experiment}/report"


def tracking_marker(experiment):
    return f"{RESULTS}/{experiment}/tracking.json"
