# Plots and tables, drawn from an experiment's aggregate only; each file is marked for
# Snakemake's own report (`snakemake --report report.html`).

from protolib.results.report import report_files


localrules:
    report,


def _report_output(path):
    kind = Path(path).parent.name  # plots or tables; captions: protolib.results.report.CAPTIONS
    return report(
        path,
        caption=f"../report/{kind}_{Path(path).stem}.rst",
        category="{experiment}",
        subcategory=kind,
    )


def report_outputs(experiment):
    return [str(p) for p in report_files(report_dir(experiment))]


rule report:
    input:
        runs=f"{RESULTS}/{{experiment}}/aggregate/runs.parquet",
        metrics=f"{RESULTS}/{{experiment}}/aggregate/metrics.parquet",
        geometry=f"{RESULTS}/{{experiment}}/aggregate/geometry.parquet",
        gamma=f"{RESULTS}/{{experiment}}/aggregate/gamma.parquet",
    output:
        [_report_output(str(p)) for p in report_files(f"{RESULTS}/{{experiment}}/report")],
    log:
        f"{RESULTS}/{{experiment}}/logs/report.log",
    params:
        gram_runs=PLAN.gram_runs,
    run:
        from protolib.results.report import make_report

        written = make_report(
            Path(input.runs).parent, report_dir(wildcards.experiment), gram_runs=params.gram_runs
        )
        Path(log[0]).write_text("".join(f"{k}: {v}\n" for k, v in written.items()))
