"""The pipeline config (``config.yaml``): reading, validation and expansion into runs.

``config.yaml`` names one or more experiments; each has ``base`` run-config keys, named
loss variants (a registered loss plus run-config keys for it) and a ``grid`` over the
axes of the results contract (:mod:`protolib.results.contract`: ``n_w``,
``imbalance_ratio``, ``imbalance``, ``minority_fraction``, ``label_corruption`` and
``seed``). A grid key may instead be one scalar in ``base`` or in a loss variant (the
variant's replaces the base's and the grid's for that variant): a one-value axis. The
``n_w`` axis of ``grid`` and ``base`` is expanded only for losses that take prototype
copies (``LossNeeds.prototypes == "optional"``), so plain CE is not repeated per ``n_w``.

:func:`plan` is everything the workflow does before Snakemake builds its DAG: import the
plugins, validate against the JSON schema (registry names filled in), expand the grid
into one run config per grid point with a distinct, readable run id, and check what can
be checked cheaply (every run config, every imbalance ratio against its dataset,
``report.gram_runs``, the ``results`` folder). Each problem raises
:class:`PipelineConfigError` with one line naming the key, the value and what is allowed.
:func:`read_config_file` reads a YAML file strictly (duplicate keys and syntax errors are
one-line errors with file and line).

One concept per module: :mod:`~protolib.pipeline.reading` (strict YAML),
:mod:`~protolib.pipeline.validation` (the JSON schema), :mod:`~protolib.pipeline.grid`
(axis values, run ids, expansion), :mod:`~protolib.pipeline.checks` (plan-time checks)
and :mod:`~protolib.pipeline.planning` (:func:`plan`).
"""

from protolib.pipeline.checks import (
    RESULTS_PATTERN,
    check_gram_runs,
    check_imbalance_ratios,
    check_prototype_dims,
    check_results,
)
from protolib.pipeline.errors import PipelineConfigError
from protolib.pipeline.grid import (
    AXIS_RULES,
    GRID_AXES,
    GRID_DEFAULTS,
    LOSS_NAME,
    RESERVED_KEYS,
    expand,
    expand_experiment,
    format_number,
    run_id,
)
from protolib.pipeline.planning import Plan, plan
from protolib.pipeline.reading import read_config_file
from protolib.pipeline.validation import (
    describe_validation_error,
    load_all_plugins,
    registry_schema,
    validate_schema,
)

__all__ = [
    "AXIS_RULES",
    "GRID_AXES",
    "GRID_DEFAULTS",
    "LOSS_NAME",
    "RESERVED_KEYS",
    "RESULTS_PATTERN",
    "PipelineConfigError",
    "Plan",
    "check_gram_runs",
    "check_imbalance_ratios",
    "check_prototype_dims",
    "check_results",
    "describe_validation_error",
    "expand",
    "expand_experiment",
    "format_number",
    "load_all_plugins",
    "plan",
    "read_config_file",
    "registry_schema",
    "run_id",
    "validate_schema",
]
