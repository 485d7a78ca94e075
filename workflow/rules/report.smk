# Plots and tables, drawn from an experiment's aggregate only (`protolib report`); each file
# is marked for Snakemake's own report (`snakemake --report report.html`) with its caption
# from the report's one list of figures and tables (protolib.results.report.ITEMS).

from protolib.results.report import ITEMS, caption_file, report_files


localrules:
    report,


def report_outputs(experiment):
    return [str(p) for p in report_files(report_dir(experiment))]


def _marked(path, key):
    """path, marked for Snakemake's report with the caption of the report item key."""
    kind = key.split("/")[0]  # plots or tables
    return report(path, caption=caption_file(key), category="{experiment}", subcategory=kind)


def _marked_outputs(folder):
    """Every file of the report under folder, each with its item's caption."""
    return [_marked(f"{folder}/{name}", item.key) for item in ITEMS for name in item.files]


rule report:
    input:
        rules.aggregate.output,
    output:
        _marked_outputs(f"{RESULTS}/{{experiment}}/report"),
    log:
        f"{RESULTS}/{{experiment}}/logs/report.log",
    params:
        aggregate=lambda w, input: Path(input[0]).parent,
        out=lambda w: report_dir(w.experiment),
        gram_runs="" if PLAN.gram_runs is None else " ".join(["--gram-runs", *PLAN.gram_runs]),
    shell:
        "protolib report {params.aggregate:q} --out {params.out:q} {params.gram_runs} > {log} 2>&1"
