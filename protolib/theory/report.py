"""The theory target: bounds and unconstrained-features simulations written to disk.

``make_theory(out_dir)`` writes :data:`THEORY_FILES` under ``out_dir`` (each atomically):
the bounds table, the simulations' tidy table, a Markdown table of bound against
attained loss and one of the batch-wise minimisers (:mod:`protolib.theory.tables`), and
five plots (:mod:`protolib.theory.plots`). :func:`write_theory` writes them from results
already computed.

The Snakefile imports :data:`THEORY_FILES` when it is parsed, so this module imports
only the standard library at the top; :func:`make_theory` and :func:`write_theory`
import the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from protolib.theory.ufm import UFMResult

THEORY_FILES = [
    "bounds.parquet",
    "ufm.parquet",
    "bounds_vs_attained.md",
    "batchwise_minimisers.md",
    "plots/ce_l2.png",
    "plots/batch_losses.png",
    "plots/limit_grams.png",
    "plots/circle.png",
    "plots/batchwise_minimisers.png",
]


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from protolib.io import write_atomic

    table = pa.Table.from_pandas(frame, preserve_index=False)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def make_theory(
    out_dir: str | Path, *, threads: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Run the bounds and the five simulations and write :data:`THEORY_FILES`."""
    import torch

    from protolib.theory.ufm import run_all

    if threads:
        torch.set_num_threads(threads)
    return write_theory(out_dir, run_all(seed=seed))


def write_theory(out_dir: str | Path, results: dict[str, UFMResult]) -> dict[str, Path]:
    """Write :data:`THEORY_FILES` under ``out_dir`` from the simulations' ``results``
    (:func:`protolib.theory.ufm.run_all`'s dict) and the closed-form bounds."""
    import pandas as pd

    from protolib.io import write_text
    from protolib.theory import plots
    from protolib.theory.tables import (
        batchwise_markdown,
        batchwise_table,
        bounds_table,
        comparison_markdown,
        comparison_table,
    )

    out = Path(out_dir)
    batchwise = results["batchwise_minimisers"]
    written = {
        "bounds.parquet": _write_parquet(out / "bounds.parquet", bounds_table()),
        "ufm.parquet": _write_parquet(
            out / "ufm.parquet", pd.concat([r.table for r in results.values()], ignore_index=True)
        ),
        "bounds_vs_attained.md": write_text(
            out / "bounds_vs_attained.md", comparison_markdown(comparison_table(results))
        ),
        "batchwise_minimisers.md": write_text(
            out / "batchwise_minimisers.md", batchwise_markdown(batchwise_table(batchwise))
        ),
        "plots/ce_l2.png": plots.plot_ce_l2(results["ce_l2"], out / "plots" / "ce_l2.png"),
        "plots/batch_losses.png": plots.plot_batch_losses(
            results["supcon_all_multisets"], out / "plots" / "batch_losses.png"
        ),
        "plots/limit_grams.png": plots.plot_limit_grams(
            results["limit_geometries"], out / "plots" / "limit_grams.png"
        ),
        "plots/circle.png": plots.plot_circle(
            results["supcon_circle"], out / "plots" / "circle.png"
        ),
        "plots/batchwise_minimisers.png": plots.plot_batchwise(
            batchwise, out / "plots" / "batchwise_minimisers.png"
        ),
    }
    if list(written) != THEORY_FILES:  # a file added to one list and not the other
        raise RuntimeError(f"write_theory wrote {list(written)}, declared {THEORY_FILES}")
    return written
