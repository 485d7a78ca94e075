# Bounds and unconstrained-features simulations (MATH.md §4–5), on the CPU, beside the
# training grid: results/theory/{bounds,ufm}.parquet, Markdown tables of bound vs
# attained loss and of the batch-wise minimisers (§5.5), and plots (`protolib theory`);
# the outputs are THEORY_FILES.

from protolib.theory.report import THEORY_FILES


rule theory:
    output:
        [f"{RESULTS}/theory/{name}" for name in THEORY_FILES],
    log:
        f"{RESULTS}/theory/logs/theory.log",
    params:
        out=f"{RESULTS}/theory",
    threads: 1
    shell:
        "protolib theory --out {params.out:q} --threads {threads} > {log} 2>&1"
