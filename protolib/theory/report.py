"""The theory target: bounds and unconstrained-features simulations written to disk.

``make_theory(out_dir)`` writes :data:`THEORY_FILES` under ``out_dir`` (each atomically):
the bounds table, the simulations' tidy table, a Markdown table of bound against
attained loss, and four plots (Corollary 2 over λ, the batch-loss histogram of the
all-multisets simulation, the learned class-mean Grams beside their targets, the
trajectories on the circle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from protolib.io import write_atomic, write_text
from protolib.results.plots import _figure, _save
from protolib.theory.tables import bounds_table
from protolib.theory.ufm import UFMResult, run_all

THEORY_FILES = [
    "bounds.parquet",
    "ufm.parquet",
    "bounds_vs_attained.md",
    "plots/ce_l2.png",
    "plots/batch_losses.png",
    "plots/limit_grams.png",
    "plots/circle.png",
]


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _value(table: pd.DataFrame, setting: str, quantity: str) -> float:
    rows = table[(table.setting == setting) & (table.quantity == quantity)]
    return float(rows.value.iloc[0]) if len(rows) else float("nan")


def comparison_table(results: dict[str, UFMResult]) -> pd.DataFrame:
    """Bound against attained loss for every simulation with a closed-form optimum."""
    rows = []
    ce = results["ce_l2"].table
    for setting in ce.setting.unique():
        rows.append(
            {
                "simulation": "CE + λ‖W‖² on the disc (Corollary 2)",
                "setting": setting,
                "bound": _value(ce, setting, "bound"),
                "attained": _value(ce, setting, "attained"),
                "gap": _value(ce, setting, "gap"),
                "r_star": _value(ce, setting, "r_star"),
                "mean_w_norm": _value(ce, setting, "mean_w_norm"),
            }
        )
    sc = results["supcon_all_multisets"].table
    setting = next(s for s in sc.setting.unique() if not s.startswith("bin_centre"))
    rows.append(
        {
            "simulation": "SupCon over all multisets (Theorem 2, per batch)",
            "setting": setting,
            "bound": _value(sc, setting, "bound_mean"),
            "attained": _value(sc, setting, "attained_mean"),
            "gap": _value(sc, setting, "gap"),
        }
    )
    circle = results["supcon_circle"].table
    setting = circle.setting.iloc[0]
    rows.append(
        {
            "simulation": "SupCon on the circle (simplex value, per anchor)",
            "setting": setting,
            "bound": _value(circle, setting, "simplex_loss"),
            "attained": _value(circle, setting, "final_loss"),
            "gap": _value(circle, setting, "gap"),
        }
    )
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                cells.append(
                    "—"
                    if np.isnan(value)
                    else f"{value:.6g}"
                    if column != "gap"
                    else f"{value:.2e}"
                )
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ce_l2(result: UFMResult, path: Path) -> Path:
    table = result.table
    settings = list(table.setting.unique())
    lams = [float(s.split("=", 1)[1]) for s in settings]
    fig = _figure(10, 4)
    left, right = fig.subplots(1, 2)
    for quantity, style, label in [
        ("bound", "-", "Corollary 2 bound"),
        ("attained", "o", "attained"),
    ]:
        left.plot(lams, [_value(table, s, quantity) for s in settings], style, label=label)
    for quantity, style, label in [("r_star", "-", "r*"), ("mean_w_norm", "o", "mean ‖w_y‖")]:
        right.plot(lams, [_value(table, s, quantity) for s in settings], style, label=label)
    for ax, ylabel in [(left, "CE + λ‖W‖²"), (right, "classifier row norm")]:
        ax.set_xscale("log")
        ax.set_xlabel("weight decay λ")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Unconstrained features, CE + L2: attained loss and ‖w_y‖ against Corollary 2")
    return _save(fig, path)


def plot_batch_losses(result: UFMResult, path: Path) -> Path:
    counts, edges = result.final["hist_counts"], result.final["hist_edges"]
    table = result.table
    setting = next(s for s in table.setting.unique() if not s.startswith("bin_centre"))
    fig = _figure(7, 4)
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, alpha=0.6)
    ax.set_xlabel("SupCon loss of a batch (summed over its anchors)")
    ax.set_ylabel("number of multisets")
    ax.set_title(
        f"All {int(_value(table, setting, 'num_multisets'))} multisets of size 9 at the optimum "
        f"({setting}); mean {_value(table, setting, 'attained_mean'):.6f}, "
        f"bound {_value(table, setting, 'bound_mean'):.6f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_limit_grams(result: UFMResult, path: Path) -> Path:
    geometries = [k.split("/")[0] for k in result.final if k.endswith("/target_gram")]
    fig = _figure(3.2 * len(geometries), 6.2)
    axes = fig.subplots(2, len(geometries), squeeze=False)
    image = None
    for column, geometry in enumerate(geometries):
        delta = _value(result.table, f"geometry={geometry}", "delta_g")
        for row, (key, title) in enumerate(
            [("class_mean_gram", f"learned, Δ_G = {delta:.3f}"), ("target_gram", "target G*")]
        ):
            matrix = result.final[f"{geometry}/{key}"]
            matrix = matrix / np.linalg.norm(matrix)
            image = axes[row][column].imshow(matrix, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
            axes[row][column].set_title(f"{geometry}\n{title}", fontsize=9)
            axes[row][column].set_xticks([])
            axes[row][column].set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.7, label="entry of G/‖G‖_F")
    fig.suptitle("Limit loss with free embeddings: class-mean Gram against the prototype Gram")
    return _save(fig, path)


def plot_circle(result: UFMResult, path: Path) -> Path:
    history = np.mod(result.final["angles_history"], 2 * np.pi)
    labels = result.final["labels"]
    fig = _figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    steps = np.arange(history.shape[0])
    for i in range(history.shape[1]):
        left.plot(steps, history[:, i], color=colors[labels[i] % len(colors)], lw=0.5, alpha=0.5)
    left.set_xlabel("L-BFGS step")
    left.set_ylabel("angle (mod 2π)")
    left.set_title("Trajectories of the 300 points")
    for start, marker, label in [(0, "x", "start"), (-1, "o", "end")]:
        angles = history[start]
        right.scatter(
            np.cos(angles),
            np.sin(angles),
            c=[colors[c % len(colors)] for c in labels],
            marker=marker,
            s=12 if marker == "x" else 40,
            alpha=0.4 if start == 0 else 1,
            label=label,
        )
    theta = np.linspace(0, 2 * np.pi, 200)
    right.plot(np.cos(theta), np.sin(theta), color="0.7", lw=0.8)
    right.set_aspect("equal")
    right.legend(loc="upper right")
    right.set_title("Start (x) and end (o): collapse to a regular simplex")
    return _save(fig, path)


def make_theory(
    out_dir: str | Path, *, threads: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Run the bounds and the four simulations and write :data:`THEORY_FILES`."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    results = run_all(seed=seed)
    written = {
        "bounds.parquet": _write_parquet(out / "bounds.parquet", bounds_table()),
        "ufm.parquet": _write_parquet(
            out / "ufm.parquet", pd.concat([r.table for r in results.values()], ignore_index=True)
        ),
        "bounds_vs_attained.md": write_text(
            out / "bounds_vs_attained.md", _markdown(comparison_table(results))
        ),
        "plots/ce_l2.png": plot_ce_l2(results["ce_l2"], out / "plots" / "ce_l2.png"),
        "plots/batch_losses.png": plot_batch_losses(
            results["supcon_all_multisets"], out / "plots" / "batch_losses.png"
        ),
        "plots/limit_grams.png": plot_limit_grams(
            results["limit_geometries"], out / "plots" / "limit_grams.png"
        ),
        "plots/circle.png": plot_circle(results["supcon_circle"], out / "plots" / "circle.png"),
    }
    assert list(written) == THEORY_FILES
    return written
