"""Unconstrained-features simulations (MATH.md §5): each reaches its bound or target."""

from __future__ import annotations

import contextlib
import io
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from protolib.geometry import simplex_gamma
from protolib.losses import supcon_limit_loss, supcon_loss
from protolib.theory import bounds, ufm
from protolib.theory.report import THEORY_FILES, write_theory
from protolib.theory.tables import bounds_table
from tests.test_cli_commands import written_lines

# ---------------------------------------------------------------- private references


def reference_ce_l2_bound(K: int, rho: float, lam: float) -> tuple[float, float]:
    """Corollary 2 with r* by plain bisection on 2λx − ρ/(exp(Kρx/(K−1)) + K − 1)."""
    a = K * rho / (K - 1)

    def f(x: float) -> float:
        return 2 * lam * x - rho / (math.exp(a * x) + K - 1)

    lo, hi = 0.0, rho / (2 * lam)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    r = (lo + hi) / 2
    return math.log(1 + (K - 1) * math.exp(-a * r)) + lam * K * r * r, r


def reference_supcon_bound(N: int, K: int, b: int, rho: float) -> float:
    """Theorem 2 per batch, by enumerating every multiset's class sizes |B_y|."""
    counts = ufm.multiset_counts(N, b)
    labels = np.repeat(np.arange(K), N // K)
    class_sizes = counts @ np.eye(K, dtype=np.int64)[labels]  # (M, K)
    decay = math.exp(-K * rho * rho / (K - 1))
    total = 0.0
    for size in range(2, b + 1):
        batches_with_size = int((class_sizes == size).sum())  # M_l
        total += size * batches_with_size * math.log(size - 1 + (b - size) * decay)
    return total / counts.shape[0]


def value(result: ufm.UFMResult, quantity: str, setting: str | None = None) -> float:
    rows = result.table[result.table["quantity"] == quantity]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    assert len(rows) == 1, (quantity, setting, rows)
    return float(rows["value"].iloc[0])


def expand(counts: np.ndarray, members: torch.Tensor, labels: torch.Tensor):
    """The literal batch of a count vector: member t repeated counts[t] times."""
    index = torch.from_numpy(np.repeat(np.arange(len(counts)), counts))
    return members[index], labels[index]


# -------------------------------------------------------------- shared default runs


@pytest.fixture(scope="module")
def theory_run(tmp_path_factory):
    """One real ``protolib theory`` (the simulations about 8 s on one thread), in-process:
    what ``run_all`` returned to it (the five simulations at their defaults, seed 0), the
    seed it was given, its output folder and what it printed. Every test of the default
    runs reads these."""
    from protolib.cli import main

    given: dict = {}

    def recorded(seed):
        given["seed"] = seed
        given["results"] = real_run_all(seed=seed)
        return given["results"]

    real_run_all = ufm.run_all
    out = tmp_path_factory.mktemp("theory") / "theory"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(ufm, "run_all", recorded)
        status = main(["theory", "--out", str(out), "--seed", "0"])
    return status, given, out, printed.getvalue()


@pytest.fixture(scope="module")
def results(theory_run):
    """The four simulations these tests check (the fifth: tests/theory/test_batchwise.py)."""
    everything = theory_run[1]["results"]
    return {
        name: everything[name]
        for name in ("ce_l2", "supcon_circle", "supcon_all_multisets", "limit_geometries")
    }


@pytest.fixture(scope="module")
def ce(results):
    return results["ce_l2"]


@pytest.fixture(scope="module")
def circle(results):
    return results["supcon_circle"]


@pytest.fixture(scope="module")
def multisets(results):
    return results["supcon_all_multisets"]


@pytest.fixture(scope="module")
def limit(results):
    return results["limit_geometries"]


# ------------------------------------------------------------------------ format


def test_tables_are_tidy(results):
    for name, result in results.items():
        table = result.table
        assert tuple(table.columns) == ufm.TABLE_COLUMNS
        assert (table["simulation"] == name).all()
        assert table["value"].dtype == np.float64
        assert np.isfinite(table["value"]).all()
        assert not table.duplicated(["simulation", "setting", "quantity"]).any()
        assert tuple(result.trace.columns) == ufm.TRACE_COLUMNS
        assert result.trace["step"].dtype == np.int64
        assert len(result.trace) > 0
        assert all(isinstance(v, np.ndarray) for v in result.final.values())


# ------------------------------------------------------------------- 1. CE + L2


def test_private_references_agree_with_bounds_module():
    for lam in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        got = bounds.ce_l2_bound(3, 1.0, lam)
        want = reference_ce_l2_bound(3, 1.0, lam)
        assert got == pytest.approx(want, rel=1e-12)
    for rho in (1.0, 2.0, math.sqrt(5)):
        got = bounds.supcon_lower_bound(12, 3, 9, rho)
        assert got == pytest.approx(reference_supcon_bound(12, 3, 9, rho), rel=1e-12)


def test_ce_l2_attains_corollary_2(ce):
    lams = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    assert sorted(ce.table["setting"].unique()) == sorted(f"lambda={lam:g}" for lam in lams)
    for lam in lams:
        setting = f"lambda={lam:g}"
        bound, r_star = reference_ce_l2_bound(3, 1.0, lam)
        attained = value(ce, "attained", setting)
        assert value(ce, "bound", setting) == pytest.approx(bound, rel=1e-12)
        assert value(ce, "r_star", setting) == pytest.approx(r_star, rel=1e-9)
        gap = value(ce, "gap", setting)
        assert gap == pytest.approx(attained - value(ce, "bound", setting), abs=1e-15)
        assert -1e-9 <= gap <= 1e-4 * abs(bound)
        assert value(ce, "mean_w_norm", setting) == pytest.approx(r_star, rel=1e-2)
        # the optimum is the collapsed simplex of Corollary 2 (every ‖w_y‖ = r*)
        w = ce.final[f"{setting}/classifier"]
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), r_star, rtol=1e-2)
        h = ce.final[f"{setting}/embeddings"]
        np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, rtol=1e-12)
        assert value(ce, "within_gamma_min", setting) > 0.999
        assert value(ce, "delta_g_etf", setting) < 1e-3
    # the reported loss is the objective at the reported configuration
    setting = "lambda=0.01"
    h = torch.from_numpy(ce.final[f"{setting}/embeddings"])
    w = torch.from_numpy(ce.final[f"{setting}/classifier"])
    y = torch.from_numpy(ce.final["labels"])
    loss = F.cross_entropy(h @ w.T, y) + 0.01 * w.square().sum()
    assert float(loss) == pytest.approx(value(ce, "attained", setting), rel=1e-14)


# ------------------------------------------------------------ 2. SupCon, circle


def test_supcon_circle_collapses_to_a_simplex(circle):
    setting = "tau=0.1"
    assert value(circle, "within_gamma_min", setting) > 0.999
    target = simplex_gamma(3)
    for pair in ("0_1", "0_2", "1_2"):
        assert value(circle, f"class_mean_gamma_{pair}", setting) == pytest.approx(target, abs=1e-3)
    assert value(circle, "delta_g_etf", setting) < 1e-3
    # the full-batch loss reaches its value at the collapsed simplex
    n, N = 100, 300
    simplex = math.log(n - 1 + (N - n) * math.exp(-3 / (2 * 0.1)))
    assert value(circle, "simplex_loss", setting) == pytest.approx(simplex, rel=1e-14)
    assert abs(value(circle, "gap", setting)) < 1e-9
    h = torch.from_numpy(circle.final["embeddings"])
    y = torch.from_numpy(circle.final["labels"])
    loss = supcon_loss(h, y, tau=0.1)["loss"]
    assert float(loss) == pytest.approx(value(circle, "final_loss", setting), rel=1e-14)
    # the trajectory: every step's angles, starting from the random start
    history = circle.final["angles_history"]
    steps = int(value(circle, "steps", setting))
    assert history.shape == (steps + 1, N)
    np.testing.assert_array_equal(history[-1], circle.final["angles"])
    losses = circle.trace[circle.trace["quantity"] == "loss"]["value"].to_numpy()
    assert len(losses) == steps + 1
    assert losses[0] > losses[-1]
    assert np.all(np.diff(losses) <= 1e-12 * losses[0])


# ---------------------------------------------------- 3. SupCon over every multiset


def test_multiset_counts_enumerate_every_multiset():
    counts = ufm.multiset_counts(12, 9)
    assert counts.shape == (math.comb(20, 9), 12) == (167_960, 12)
    assert (counts.sum(axis=1) == 9).all() and (counts >= 0).all()
    assert len(np.unique(counts, axis=0)) == len(counts)
    for n, b in ((4, 4), (3, 3), (5, 2), (1, 3), (3, 0)):
        counts = ufm.multiset_counts(n, b)
        want = {
            tuple(np.bincount(c, minlength=n))
            for c in itertools.combinations_with_replacement(range(n), b)
        }
        assert {tuple(row) for row in counts} == want and len(counts) == len(want)


@pytest.mark.parametrize("rho2", [4.0, 10.0, 20.0])
def test_batched_multiset_loss_equals_supcon_on_literal_batches(rho2):
    g = torch.Generator().manual_seed(int(rho2))
    members = F.normalize(torch.randn(12, 3, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(3).repeat_interleave(4)
    all_counts = ufm.multiset_counts(12, 9)
    rng = np.random.default_rng(int(rho2))
    chosen = all_counts[rng.choice(len(all_counts), size=24, replace=False)]
    single = np.zeros((1, 12), dtype=np.int64)
    single[0, 5] = 9  # nine copies of one member
    chosen = np.concatenate([chosen, single, all_counts[:1], all_counts[-1:]])
    got = ufm.multiset_supcon_losses(members, labels, torch.from_numpy(chosen), tau=1 / rho2)
    for row, loss in zip(chosen, got, strict=True):
        batch, batch_labels = expand(row, members, labels)
        want = supcon_loss(batch, batch_labels, tau=1 / rho2, reduction="sum")["loss"]
        assert float(loss) == pytest.approx(float(want), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("K", "n", "b"), [(2, 2, 4), (3, 1, 3), (2, 3, 3)])
def test_multiset_total_equals_brute_force_loop(K, n, b):
    g = torch.Generator().manual_seed(K * 100 + n * 10 + b)
    N = K * n
    members = F.normalize(torch.randn(N, 2, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(K).repeat_interleave(n)
    tau = 0.3
    brute = 0.0
    for batch in itertools.combinations_with_replacement(range(N), b):
        index = torch.tensor(batch)
        brute += float(supcon_loss(members[index], labels[index], tau=tau, reduction="sum")["loss"])
    counts = torch.from_numpy(ufm.multiset_counts(N, b))
    total = float(ufm.multiset_supcon_losses(members, labels, counts, tau=tau).sum())
    assert total == pytest.approx(brute, rel=1e-12)


def test_batched_multiset_loss_gradient_matches_literal_batches():
    g = torch.Generator().manual_seed(3)
    angles = torch.rand(6, generator=g, dtype=torch.float64) * 2 * math.pi
    labels = torch.arange(3).repeat_interleave(2)
    counts = ufm.multiset_counts(6, 4)
    a1 = angles.clone().requires_grad_()
    h1 = torch.stack([a1.cos(), a1.sin()], dim=1)
    ufm.multiset_supcon_losses(h1, labels, torch.from_numpy(counts), tau=0.5).sum().backward()
    a2 = angles.clone().requires_grad_()
    h2 = torch.stack([a2.cos(), a2.sin()], dim=1)
    total = sum(
        supcon_loss(*expand(row, h2, labels), tau=0.5, reduction="sum")["loss"] for row in counts
    )
    total.backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("K", "n", "b"), [(3, 4, 9), (3, 2, 2), (2, 2, 1), (2, 3, 4)])
@pytest.mark.parametrize("tau", [0.25, 0.05])
def test_the_optimised_mean_equals_the_mean_of_the_batch_losses(K, n, b, tau):
    """:func:`multiset_supcon_mean` (what the simulation minimises) against the plain mean
    of the per-batch losses, value and gradient; b = 1 and 2 leave anchors without a
    positive, whose terms must vanish."""
    g = torch.Generator().manual_seed(K * 1000 + n * 100 + b)
    labels = torch.arange(K).repeat_interleave(n)
    counts = torch.from_numpy(ufm.multiset_counts(K * n, b))
    start = F.normalize(torch.randn(K * n, 3, generator=g, dtype=torch.float64), dim=1)
    plain = start.clone().requires_grad_()
    want = ufm.multiset_supcon_losses(plain, labels, counts, tau=tau).mean()
    want.backward()
    fast = start.clone().requires_grad_()
    got = ufm.multiset_supcon_mean(labels, counts, tau=tau)(fast)
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-13, abs=1e-13)
    torch.testing.assert_close(fast.grad, plain.grad, rtol=1e-11, atol=1e-13)
    if b == 1:
        assert got.item() == 0.0 and not fast.grad.any()


def test_supcon_all_multisets_attains_theorem_2(multisets):
    setting = "rho=2"
    bound = reference_supcon_bound(12, 3, 9, 2.0)
    assert value(multisets, "bound_mean", setting) == pytest.approx(bound, rel=1e-12)
    assert value(multisets, "num_multisets", setting) == 167_960
    gap = value(multisets, "gap", setting)
    assert -1e-9 <= gap <= 1e-4 * abs(bound)
    losses = multisets.final["batch_losses"]
    assert losses.shape == (167_960,)
    assert losses.mean() == pytest.approx(value(multisets, "attained_mean", setting), rel=1e-12)
    assert value(multisets, "attained_total", setting) == pytest.approx(
        value(multisets, "bound_total", setting), rel=1e-9
    )
    assert value(multisets, "bound_total", setting) == pytest.approx(bound * 167_960, rel=1e-12)
    # the optimum is the collapsed simplex on the circle of radius ρ
    assert value(multisets, "within_gamma_min", setting) > 0.999
    assert value(multisets, "delta_g_etf", setting) < 1e-3
    radii = np.linalg.norm(multisets.final["embeddings"], axis=1)
    np.testing.assert_allclose(radii, 2.0, rtol=1e-12)
    # histogram: in the table and in final, covering every batch
    hist = multisets.table[multisets.table["quantity"] == "hist_count"]
    assert hist["value"].sum() == 167_960
    assert hist["setting"].str.startswith("bin_centre=").all()
    np.testing.assert_array_equal(hist["value"].to_numpy(), multisets.final["hist_counts"])
    edges = multisets.final["hist_edges"]
    assert edges[0] == losses.min() and edges[-1] == losses.max()


# ------------------------------------------------------------- 4. the limit loss


def test_limit_geometries_realise_the_targets(limit):
    etf = "geometry=etf"
    assert value(limit, "delta_g", etf) < 1e-2
    assert value(limit, "max_dist_to_prototype", etf) < 1e-2
    assert value(limit, "delta_g", "geometry=majority_collapse") < 1e-2
    for geometry in ("etf", "minority_angles", "majority_collapse"):
        setting = f"geometry={geometry}"
        # the published limit (no prototype-anchor term) realises every target closely
        assert value(limit, "delta_g_paper", setting) < 1e-3
        gram = limit.final[f"{geometry}/class_mean_gram"]
        target = limit.final[f"{geometry}/target_gram"]
        assert gram.shape == target.shape == (6, 6)
        assert limit.final[f"{geometry}/embeddings"].shape == (120, 6)
        h = torch.from_numpy(limit.final[f"{geometry}/embeddings"])
        y = torch.from_numpy(limit.final["labels"])
        w = torch.from_numpy(limit.final[f"{geometry}/prototypes"])
        loss = supcon_limit_loss(h, y, prototypes=w, tau=0.1)["loss"]
        assert float(loss) == pytest.approx(value(limit, "final_loss", setting), rel=1e-12)


def test_limit_minority_angles_optimum_is_off_target_but_exact(limit):
    """With the exact limit, Δ_G for minority_angles is ~0.049 at τ = 0.1: the true
    optimum (every class's 20 random starts land on one point, where the Riemannian
    gradient vanishes), not an optimisation failure."""
    setting = "geometry=minority_angles"
    assert value(limit, "delta_g", setting) == pytest.approx(0.0493, abs=1e-3)
    h = torch.from_numpy(limit.final["minority_angles/embeddings"]).clone().requires_grad_()
    y = torch.from_numpy(limit.final["labels"])
    w = torch.from_numpy(limit.final["minority_angles/prototypes"])
    supcon_limit_loss(h, y, prototypes=w, tau=0.1, reduction="sum")["loss"].backward()
    grad, h = h.grad, h.detach()
    tangent = grad - (grad * h).sum(dim=1, keepdim=True) * h
    assert float(tangent.norm(dim=1).max()) < 1e-6
    spread = (h.view(6, 20, 6) - h.view(6, 20, 6)[:, :1]).norm(dim=2)
    assert float(spread.max()) < 1e-4


# ------------------------------------------------------------------ determinism


def test_protolib_theory_writes_the_files_of_run_all_with_the_seed(theory_run):
    """The real `protolib theory`: it ran ``run_all`` with its seed, printed every theory
    file, and its files are checked against the closed-form bounds."""
    status, given, out, stdout = theory_run
    assert status == 0
    assert given["seed"] == 0 and list(given["results"]) == [
        "ce_l2",
        "supcon_circle",
        "supcon_all_multisets",
        "limit_geometries",
        "batchwise_minimisers",
    ]
    printed = written_lines(stdout)
    assert printed == {name: out / name for name in THEORY_FILES}
    assert all(path.is_file() and path.stat().st_size > 0 for path in printed.values())
    pd.testing.assert_frame_equal(pd.read_parquet(out / "bounds.parquet"), bounds_table())
    table = pd.read_parquet(out / "ufm.parquet")
    pd.testing.assert_frame_equal(
        table, pd.concat([r.table for r in given["results"].values()], ignore_index=True)
    )
    ce = table[(table.simulation == "ce_l2") & (table.quantity.isin(["bound", "attained"]))]
    assert len(ce) == 10
    for setting, rows in ce.groupby("setting"):
        lam = float(setting.removeprefix("lambda="))
        values = dict(zip(rows.quantity, rows.value, strict=True))
        assert values["bound"] == pytest.approx(bounds.ce_l2_bound(3, 1.0, lam)[0], rel=1e-12)
        assert math.isclose(values["attained"], values["bound"], rel_tol=1e-6)
    assert "Corollary 2" in (out / "bounds_vs_attained.md").read_text()
    assert all(printed[f].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in printed if ".png" in f)


# Small sizes: the same code paths as the defaults, in a fraction of a second each.
SMALL = {
    "ce_l2": lambda seed: ufm.ce_l2(
        lams=(1e-2,), points_per_class=5, seed=seed, starts=2, max_steps=3, iters_per_step=5
    ),
    "supcon_circle": lambda seed: ufm.supcon_circle(
        points_per_class=5, steps=3, seed=seed, starts=2, iters_per_step=5
    ),
    "supcon_all_multisets": lambda seed: ufm.supcon_all_multisets(
        points_per_class=2, batch_size=3, seed=seed, max_steps=3, iters_per_step=5
    ),
    "limit_geometries": lambda seed: ufm.limit_geometries(
        points_per_class=3, seed=seed, max_steps=3, iters_per_step=5
    ),
}


@pytest.mark.parametrize("name", SMALL)
def test_the_same_seed_gives_identical_results(name):
    """Tables, traces and final configurations equal exactly for the same seed; another
    seed starts elsewhere (the trace's first losses differ)."""
    first, again, other = SMALL[name](0), SMALL[name](0), SMALL[name](1)
    pd.testing.assert_frame_equal(first.table, again.table, check_exact=True)
    pd.testing.assert_frame_equal(first.trace, again.trace, check_exact=True)
    assert first.final.keys() == again.final.keys()
    for key, array in first.final.items():
        np.testing.assert_array_equal(again.final[key], array)
    start = first.trace[first.trace["step"] == 0]["value"].to_numpy()
    assert not np.array_equal(start, other.trace[other.trace["step"] == 0]["value"].to_numpy())


def test_run_all_runs_the_five_with_the_seed(monkeypatch):
    calls = []
    names = (
        "ce_l2",
        "supcon_circle",
        "supcon_all_multisets",
        "limit_geometries",
        "batchwise_minimisers",
    )
    for name in names:
        monkeypatch.setattr(ufm, name, lambda seed, name=name: calls.append((name, seed)) or name)
    out = ufm.run_all(seed=7)
    assert out == {name: name for name in names}
    assert calls == [(name, 7) for name in names]


# ------------------------------------------------------------------ theory files


def test_write_theory_writes_every_theory_file_from_the_results(results, tmp_path):
    """The theory target's files (``protolib theory`` runs :func:`make_theory`, i.e.
    ``run_all`` then this) from real results: the tidy table holds every simulation's rows,
    the batch-wise minimisers (MATH.md §5.5) included, with their table and plot."""
    batchwise = ufm.batchwise_minimisers(configurations=[(7, 2, 0), (3, 3, 3)])
    written = write_theory(tmp_path / "theory", {**results, "batchwise_minimisers": batchwise})
    assert list(written) == THEORY_FILES
    assert "batchwise_minimisers.md" in THEORY_FILES
    assert "plots/batchwise_minimisers.png" in THEORY_FILES
    for name, path in written.items():
        assert path == tmp_path / "theory" / name and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_parquet(written["ufm.parquet"])
    assert list(table.simulation.unique()) == [*results, "batchwise_minimisers"]
    rows = table[table.simulation == "batchwise_minimisers"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, batchwise.table, check_exact=True)
    markdown = written["batchwise_minimisers.md"].read_text()
    assert markdown.splitlines()[2].startswith("| 7,2,0 | 2 | 12.547790 | 12.582503 |")
    assert "Theorem 2" in written["bounds_vs_attained.md"].read_text()
