# protolib — the benchmark pipeline. Thin: configuration, includes and the target.
#   snakemake --cores N all              one machine
#   snakemake --profile PROFILE all      a cluster: resources (threads, GPUs, partitions) live in profiles
# Every rule calls into the protolib package; see workflow/rules/*.smk.

# common.smk reads the config (config.yaml, or the `--configfile` presets instead), checks
# it and expands the grid; a bad config stops there with one line and exit status 2.
include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/theory.smk"


rule all:
    input:
        [report_outputs(experiment) for experiment in RUNS],
        [tracking_marker(experiment) for experiment in RUNS],
        rules.theory.output,
    default_target: True
