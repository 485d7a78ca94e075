"""Batch-wise minimisers of SupCon (MATH.md §5.5, the SC-vs-CE study's Fig. 5): the
minimiser of one batch's loss depends on the batch's labels."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from protolib.theory import bounds, ufm
from protolib.theory.plots import plot_batchwise
from protolib.theory.tables import batchwise_markdown, batchwise_table

RHO = 2.0  # the default radius (τ = 1/ρ² = 0.25), that of the all-multisets simulation

# ---------------------------------------------------------------- private references


def loop_supcon(points: np.ndarray, labels: np.ndarray) -> float:
    """SupCon summed over anchors (MATH.md §1.3) of points on a sphere of radius ρ (no
    temperature), by plain loops over anchors, positives and others."""
    total = 0.0
    for i in range(len(points)):
        others = [k for k in range(len(points)) if k != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(points[i] @ points[k]) for k in others))
        total += sum(log_denominator - points[i] @ points[j] for j in positives) / len(positives)
    return total


def collapsed_simplex(sizes: tuple[int, ...], rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Class c collapsed at angle 2πc/K on the circle of radius ρ."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    angles = 2 * math.pi * labels / len(sizes)
    return rho * np.stack([np.cos(angles), np.sin(angles)], axis=1), labels


def angle(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two vectors of R², exact near 0 and π."""
    return math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u @ v)


def value(result: ufm.UFMResult, setting: str, quantity: str) -> float:
    rows = result.table[(result.table.setting == setting) & (result.table.quantity == quantity)]
    assert len(rows) == 1, (setting, quantity)
    return float(rows.value.iloc[0])


def setting_of(sizes: tuple[int, ...]) -> str:
    return "counts=" + ",".join(map(str, sizes))


@pytest.fixture(scope="module")
def batchwise():
    return ufm.batchwise_minimisers()


# ------------------------------------------------------------------------ the terms


@pytest.mark.parametrize("rho", [1.0, RHO])
def test_batch_terms_regroup_theorem_2(rho):
    """Σ over every multiset of 12 points (3 classes × 4) of size 9 of the batch's term is
    Theorem 2's bound (MATH.md §4), per batch."""
    counts = ufm.multiset_counts(12, 9)
    class_sizes = counts @ np.eye(3, dtype=np.int64)[np.repeat(np.arange(3), 4)]
    unique, multiplicity = np.unique(class_sizes, axis=0, return_counts=True)
    total = sum(
        m * ufm.theorem2_batch_term(tuple(int(n) for n in sizes), rho)
        for sizes, m in zip(unique, multiplicity, strict=True)
    )
    assert total / len(counts) == pytest.approx(bounds.supcon_lower_bound(12, 3, 9, rho), rel=1e-12)


def test_batch_terms_are_the_losses_at_the_simplex_and_at_antipodes():
    for sizes in ufm.LABEL_CONFIGURATIONS:
        points, labels = collapsed_simplex(sizes, RHO)
        term = ufm.theorem2_batch_term(sizes, RHO)
        assert term == pytest.approx(loop_supcon(points, labels), rel=1e-12)
    # two classes, collapsed and antipodal: the antipodal bound is the loss there
    points = RHO * np.array([[1.0, 0.0]] * 7 + [[-1.0, 0.0]] * 2)
    labels = np.array([0] * 7 + [1] * 2)
    bound = ufm.antipodal_batch_bound((7, 2, 0), RHO)
    assert bound == pytest.approx(loop_supcon(points, labels), rel=1e-12)
    decay = math.exp(-2 * RHO**2)
    assert bound == pytest.approx(7 * math.log(6 + 2 * decay) + 2 * math.log(1 + 7 * decay))


# ------------------------------------------------------------------- the minimisers


def test_tables_are_tidy_and_cover_every_configuration(batchwise):
    table = batchwise.table
    assert tuple(table.columns) == ufm.TABLE_COLUMNS
    assert (table.simulation == "batchwise_minimisers").all()
    assert np.isfinite(table.value).all()
    assert not table.duplicated(["setting", "quantity"]).any()
    assert list(table.setting.unique()) == [setting_of(s) for s in ufm.LABEL_CONFIGURATIONS]
    assert tuple(batchwise.trace.columns) == ufm.TRACE_COLUMNS
    np.testing.assert_array_equal(batchwise.final["configurations"], ufm.LABEL_CONFIGURATIONS)


def test_balanced_batch_is_minimised_by_the_simplex(batchwise):
    setting = setting_of((3, 3, 3))
    term = ufm.theorem2_batch_term((3, 3, 3), RHO)
    assert abs(value(batchwise, setting, "attained") - term) < 1e-9
    for pair in ("0_1", "0_2", "1_2"):
        assert value(batchwise, setting, f"class_mean_angle_{pair}") == pytest.approx(
            2 * math.pi / 3, abs=1e-6
        )
    gram = batchwise.final[f"{setting}/class_mean_gram"]
    np.testing.assert_allclose(gram, 1.5 * np.eye(3) - 0.5, atol=1e-6)
    assert value(batchwise, setting, "collapsed") == 1.0


def test_a_class_absent_puts_the_two_present_classes_antipodal(batchwise):
    setting = setting_of((7, 2, 0))
    points = batchwise.final[f"{setting}/embeddings"]
    labels = batchwise.final[f"{setting}/labels"]
    means = [points[labels == c].mean(axis=0) for c in (0, 1)]
    assert angle(*means) == pytest.approx(math.pi, abs=1e-6)
    assert value(batchwise, setting, "class_mean_angle_0_1") == pytest.approx(math.pi, abs=1e-6)
    assert "class_mean_angle_0_2" not in set(
        batchwise.table.quantity[batchwise.table.setting == setting]
    )
    attained = value(batchwise, setting, "attained")
    simplex = loop_supcon(*collapsed_simplex((7, 2, 0), RHO))
    assert attained < simplex - 1e-2  # below the simplex placement of the same batch
    decay = math.exp(-2 * RHO**2)
    want = 7 * math.log(6 + 2 * decay) + 2 * math.log(1 + 7 * decay)
    assert attained == pytest.approx(want, abs=1e-9)
    # two singletons: both sit antipodal to the class with positives, on one point
    setting = setting_of((7, 1, 1))
    for pair, want in (("0_1", math.pi), ("0_2", math.pi), ("1_2", 0.0)):
        assert value(batchwise, setting, f"class_mean_angle_{pair}") == pytest.approx(
            want, abs=1e-6
        )


def test_only_the_balanced_batch_reaches_its_theorem2_term(batchwise):
    """Every minimum lies between the antipodal lower bound and the batch's Theorem 2 term
    (its loss at the simplex), and only the balanced batch's minimum is at that term: the
    simplex, which minimises the sum over batches, minimises no unbalanced batch."""
    for sizes in ufm.LABEL_CONFIGURATIONS:
        setting = setting_of(sizes)
        attained = value(batchwise, setting, "attained")
        points = batchwise.final[f"{setting}/embeddings"]
        labels = batchwise.final[f"{setting}/labels"]
        np.testing.assert_array_equal(labels, np.repeat(np.arange(3), sizes))
        np.testing.assert_allclose(np.linalg.norm(points, axis=1), RHO, rtol=1e-12)
        assert loop_supcon(points, labels) == pytest.approx(attained, rel=1e-12)
        lower = ufm.antipodal_batch_bound(sizes, RHO)
        term = loop_supcon(*collapsed_simplex(sizes, RHO))
        assert lower - 1e-9 <= attained <= term + 1e-9
        assert value(batchwise, setting, "gap") == pytest.approx(attained - lower, abs=1e-12)
        assert value(batchwise, setting, "simplex_loss") == pytest.approx(term, rel=1e-12)
        below = value(batchwise, setting, "below_theorem2_term")
        assert below == pytest.approx(term - attained, abs=1e-12)
        if sizes == (3, 3, 3):
            assert abs(below) < 1e-9
        else:
            assert below > 1e-3, sizes
        assert value(batchwise, setting, "within_angle_max") < 1e-6
        assert value(batchwise, setting, "collapsed") == 1.0


def test_same_seed_gives_the_same_rows_for_each_configuration(batchwise):
    """Determinism, and each configuration independent of the others in the list."""
    chosen = [(7, 2, 0), (3, 3, 3)]
    again = ufm.batchwise_minimisers(configurations=chosen)
    settings = [setting_of(s) for s in chosen]
    for frame, new in ((batchwise.table, again.table), (batchwise.trace, again.trace)):
        old = frame[frame.setting.isin(settings)].reset_index(drop=True)
        pd.testing.assert_frame_equal(new, old, check_exact=True)
    for key, array in again.final.items():
        if key != "configurations":
            np.testing.assert_array_equal(array, batchwise.final[key])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"configurations": [(1, 1, 1)]}, "one of them >= 2"),
        ({"configurations": [(3, -1, 2)]}, "(3, -1, 2)"),
        ({"configurations": [(9,)]}, "at least 2"),
        ({"configurations": [(3, 3, 3), (4, 5)]}, "the same number of classes"),
        ({"configurations": [(2, 2, 2, 3)]}, "2 or 3"),
        ({"configurations": []}, "non-empty"),
        ({"rho": 0.0}, "rho"),
    ],
)
def test_refuses_configurations_it_cannot_honour(kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        ufm.batchwise_minimisers(**kwargs)


# ----------------------------------------------------------------- table and plot


def test_markdown_table_and_plot(batchwise, tmp_path):
    frame = batchwise_table(batchwise)
    assert list(frame["class sizes"]) == [",".join(map(str, s)) for s in ufm.LABEL_CONFIGURATIONS]
    markdown = batchwise_markdown(frame)
    lines = markdown.splitlines()
    assert lines[2].startswith("| 7,2,0 | 2 | 12.547790 | 12.582503 | 12.547790 | 0–1: 180.0° |")
    assert lines[8].startswith("| 3,3,3 | 2 | 6.305003 | 6.305003 |")
    assert "0–1: 120.0°, 0–2: 120.0°, 1–2: 120.0° | yes |" in lines[8]
    path = plot_batchwise(batchwise, tmp_path / "plots" / "batchwise.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
