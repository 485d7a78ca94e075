# Bounds and unconstrained-features simulations (MATH.md §4–5), on the CPU, beside the
# training grid: results/theory/{bounds,ufm}.parquet, a Markdown table of bound vs
# attained loss, and plots.

from protolib.theory.report import THEORY_FILES


rule theory:
    output:
        [f"{RESULTS}/theory/{name}" for name in THEORY_FILES],
    log:
        f"{RESULTS}/theory/logs/theory.log",
    threads: 1
    run:
        from protolib.theory.report import make_theory

        written = make_theory(f"{RESULTS}/theory", threads=threads)
        Path(log[0]).write_text("".join(f"{name}: {path}\n" for name, path in written.items()))
