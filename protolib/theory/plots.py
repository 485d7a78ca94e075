"""The theory target's plots: Corollary 2 over λ, the batch-loss histogram of the
all-multisets simulation, the learned class-mean Grams beside their targets, the
trajectories on the circle, and the batch-wise minimisers (MATH.md §5). Each takes a
:class:`UFMResult` and writes one PNG atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protolib.results.figures import new_figure, save_figure
from protolib.theory.tables import result_value
from protolib.theory.ufm import UFMResult


def plot_ce_l2(result: UFMResult, path: Path) -> Path:
    """CE + L2 (:func:`~protolib.theory.ufm.ce_l2`): attained loss and mean ‖w_y‖ against
    Corollary 2's bound and r* over the weight decay λ."""
    table = result.table
    settings = list(table.setting.unique())
    lams = [float(s.split("=", 1)[1]) for s in settings]
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    for quantity, style, label in [
        ("bound", "-", "Corollary 2 bound"),
        ("attained", "o", "attained"),
    ]:
        left.plot(lams, [result_value(table, s, quantity) for s in settings], style, label=label)
    for quantity, style, label in [("r_star", "-", "r*"), ("mean_w_norm", "o", "mean ‖w_y‖")]:
        right.plot(lams, [result_value(table, s, quantity) for s in settings], style, label=label)
    for ax, ylabel in [(left, "CE + λ‖W‖²"), (right, "classifier row norm")]:
        ax.set_xscale("log")
        ax.set_xlabel("weight decay λ")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Unconstrained features, CE + L2: attained loss and ‖w_y‖ against Corollary 2")
    return save_figure(fig, path)


def plot_batch_losses(result: UFMResult, path: Path) -> Path:
    """Histogram of the batch losses of every multiset at the optimum
    (:func:`~protolib.theory.ufm.supcon_all_multisets`), with their mean and the bound."""
    counts, edges = result.final["hist_counts"], result.final["hist_edges"]
    table = result.table
    setting = next(s for s in table.setting.unique() if not s.startswith("bin_centre"))
    fig = new_figure(7, 4)
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, alpha=0.6)
    ax.set_xlabel("SupCon loss of a batch (summed over its anchors)")
    ax.set_ylabel("number of multisets")
    ax.set_title(
        f"All {int(result_value(table, setting, 'num_multisets'))} "
        "multisets of size 9 at the optimum "
        f"({setting}); mean {result_value(table, setting, 'attained_mean'):.6f}, "
        f"bound {result_value(table, setting, 'bound_mean'):.6f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_limit_grams(result: UFMResult, path: Path) -> Path:
    """Per prototype geometry (:func:`~protolib.theory.ufm.limit_geometries`): the learned
    class-mean Gram above the target Gram, each divided by its Frobenius norm."""
    geometries = [k.split("/")[0] for k in result.final if k.endswith("/target_gram")]
    fig = new_figure(3.2 * len(geometries), 6.2)
    axes = fig.subplots(2, len(geometries), squeeze=False)
    image = None
    for column, geometry in enumerate(geometries):
        delta = result_value(result.table, f"geometry={geometry}", "delta_g")
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
    return save_figure(fig, path)


def plot_circle(result: UFMResult, path: Path) -> Path:
    """SupCon on the circle (:func:`~protolib.theory.ufm.supcon_circle`): every point's
    angle per L-BFGS step, and the start and end configurations."""
    history = np.mod(result.final["angles_history"], 2 * np.pi)
    labels = result.final["labels"]
    fig = new_figure(11, 4.5)
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
    return save_figure(fig, path)


def plot_batchwise(result: UFMResult, path: Path) -> Path:
    """The minimiser of one batch's SupCon loss per label configuration
    (:func:`~protolib.theory.ufm.batchwise_minimisers`; the SC-vs-CE study's Fig. 5): one
    circle per configuration, the points coloured by class (a collapsed class is one dot,
    labelled with its size), the simplex's directions as grey ticks."""
    configurations = result.final["configurations"]
    table = result.table
    fig = new_figure(2.3 * len(configurations), 3.0)
    axes = fig.subplots(1, len(configurations), squeeze=False)[0]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    theta = np.linspace(0, 2 * np.pi, 200)
    K = configurations.shape[1]
    for ax, sizes in zip(axes, configurations, strict=True):
        setting = "counts=" + ",".join(str(n) for n in sizes)
        points = result.final[f"{setting}/embeddings"]
        labels = result.final[f"{setting}/labels"]
        rho = float(np.linalg.norm(points[0]))
        ax.plot(rho * np.cos(theta), rho * np.sin(theta), color="0.75", lw=0.8)
        for c in range(K):  # the simplex, rotated like the points (largest class up)
            angle = np.pi / 2 + 2 * np.pi * c / K
            tick = np.outer([0.85 * rho, 1.15 * rho], [np.cos(angle), np.sin(angle)])
            ax.plot(tick[:, 0], tick[:, 1], color="0.6", lw=1.5)
        placed: list[np.ndarray] = []  # label directions so far; coinciding classes stack
        for c in range(K):
            own = points[labels == c]
            if len(own) == 0:
                continue
            # later classes smaller, so classes sharing a point show as concentric dots
            ax.scatter(own[:, 0], own[:, 1], s=110 - 35 * c, color=colors[c % 3], zorder=3 + c)
            mean = own.mean(axis=0)
            direction = mean / np.linalg.norm(mean)
            stacked = sum(float(direction @ d) > 0.99 for d in placed)
            placed.append(direction)
            ax.annotate(
                str(len(own)),
                tuple((1.35 + 0.3 * stacked) * rho * direction),
                ha="center",
                va="center",
                fontsize=9,
                color=colors[c % 3],
            )
        ax.set_title(
            f"({', '.join(str(n) for n in sizes)})\n"
            f"loss {result_value(table, setting, 'attained'):.4f}\n"
            f"simplex {result_value(table, setting, 'simplex_loss'):.4f}",
            fontsize=9,
        )
        ax.set_xlim(-1.9 * rho, 1.9 * rho)
        ax.set_ylim(-1.9 * rho, 1.9 * rho)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle(
        "Minimiser of one batch's SupCon loss per label configuration (b = 9, K = 3): "
        "it depends on the batch"
    )
    return save_figure(fig, path)
