"""The ``imbalance`` and ``minority_fraction`` axes in the pipeline: expanded like the
other axes, spelled in run ids only off their defaults, refused with one line when a
value cannot be honoured, and checked at plan time against the run's own imbalance
(MATH.md §6). In-process through :func:`protolib.pipeline.plan`, what the workflow calls."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import yaml

from protolib.data import IMBALANCE_KINDS, largest_valid_ratio, load_dataset
from protolib.pipeline import plan, run_id
from protolib.results.contract import AXES
from tests.workflow.test_config_refusals import SCHEMA, TINY, config, refusal

#: a run id: variant, n_w (optional), R, kind (optional), μ (optional), p, seed
ID = re.compile(r"^(.+?)(?:_nw(\d+))?_R([^_]+)(_exp)?(?:_mu([^_]+))?_p([^_]+)_s(\d+)$")


def values_of(rid: str) -> tuple[Any, ...]:
    """The grid point a run id spells (independent of :func:`run_id`)."""
    variant, n_w, ratio, exp, mu, p, seed = ID.fullmatch(rid).groups()
    return (
        variant,
        int(n_w or 0),
        float(ratio),
        "exp" if exp else "step",
        float(mu or 0.5),
        float(p),
        int(seed),
    )


def points(runs: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    axes = [axis.name for axis in AXES]
    return {rid: (run["loss_name"], *(run[a] for a in axes)) for rid, run in runs.items()}


def test_the_config_schema_offers_exactly_the_imbalance_kinds():
    schema = yaml.safe_load(SCHEMA.read_text())
    grid = schema["$defs"]["experiment"]["properties"]["grid"]["properties"]
    assert grid["imbalance"]["items"]["enum"] == list(IMBALANCE_KINDS) == ["step", "exp"]


def test_run_ids_spell_the_new_axes_only_off_their_defaults():
    point = {"n_w": 0, "imbalance_ratio": 100, "label_corruption": 0, "seed": 0}
    assert run_id("ce", {**point, "imbalance": "exp"}, uses_n_w=False) == "ce_R100_exp_p0_s0"
    assert run_id("ce", {**point, "imbalance": "step", "minority_fraction": 0.5}) == (
        "ce_nw0_R100_p0_s0"
    )
    mu = {**point, "imbalance_ratio": 10, "minority_fraction": 0.3}
    assert run_id("supcon", mu) == "supcon_nw0_R10_mu0.3_p0_s0"
    assert run_id("supcon", {**mu, "minority_fraction": 1}) == "supcon_nw0_R10_mu1_p0_s0"


def test_the_new_axes_expand_like_the_others_and_mu_only_for_step():
    cfg = config(
        base={**TINY, "imbalance_ratio": 10},
        grid={"imbalance": ["step", "exp"], "minority_fraction": [0.3, 0.5], "seed": [0, 1]},
    )
    runs = plan(cfg, SCHEMA).runs["e"]
    want = {
        f"{variant}_R10{tail}_p0_s{s}"
        for variant in ("ce", "supcon_nw0")
        for tail in ("", "_mu0.3", "_exp")  # exp is not repeated per μ: it has none
        for s in (0, 1)
    }
    assert set(runs) == want
    # every run holds exactly the values its id spells, of the type given
    for rid, point in points(runs).items():
        assert values_of(rid) == point, rid
        assert type(runs[rid]["minority_fraction"]) is float
    exp = runs["ce_R10_exp_p0_s1"]
    assert (exp["imbalance"], exp["minority_fraction"], exp["seed"]) == ("exp", 0.5, 1)


def test_base_and_variant_values_of_the_new_axes_are_honoured():
    cfg = config(
        base={**TINY, "imbalance": "exp", "imbalance_ratio": 20},
        losses={
            "ce": {"loss": "ce"},
            "sc": {"loss": "supcon", "imbalance": "step", "minority_fraction": 0.2},
        },
    )
    runs = plan(cfg, SCHEMA).runs["e"]
    assert set(runs) == {"ce_R20_exp_p0_s0", "sc_nw0_R20_mu0.2_p0_s0"}
    assert (runs["ce_R20_exp_p0_s0"]["imbalance"], runs["sc_nw0_R20_mu0.2_p0_s0"]["imbalance"]) == (
        "exp",
        "step",
    )
    assert runs["sc_nw0_R20_mu0.2_p0_s0"]["minority_fraction"] == 0.2


def test_no_two_grid_points_share_a_run_id():
    """Every combination of every axis: one run per point, each id spelling its point."""
    grid = {
        "n_w": [0, 3],
        "imbalance_ratio": [1, 2.5, 10],
        "imbalance": list(IMBALANCE_KINDS),
        "minority_fraction": [0.1, 0.5, 1],
        "label_corruption": [0, 0.1],
        "seed": [0, 1],
    }
    cfg = config(base={**TINY, "model_options": {"widths": [16], "out_dim": 16}}, grid=grid)
    runs = plan(cfg, SCHEMA, check_data=False).runs["e"]
    expected = set()
    for variant, takes_n_w in (("ce", False), ("supcon", True)):
        for n_w, r, kind, mu, p, s in itertools.product(*grid.values()):
            mu_used = mu if kind == "step" else 0.5  # μ applies to STEP only
            expected.add((variant, n_w if takes_n_w else 0, r, kind, mu_used, p, s))
    assert set(points(runs).values()) == expected
    # per n_w: 3 ratios × (3 STEP μ + 1 exp) × 2 p × 2 seeds; ce once, supcon per n_w
    assert len(runs) == len(expected) == (3 * 4 * 2 * 2) * (1 + 2)
    for rid, point in points(runs).items():
        assert values_of(rid)[1:] == (point[1] if rid.startswith("supcon") else 0, *point[2:])


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (  # every run is exp: the grid's μ = 0.3 would be honoured by none
            {"base": {**TINY, "imbalance": "exp"}, "grid": {"minority_fraction": [0.5, 0.3]}},
            "config: experiments.e.grid.minority_fraction.1: 0.3 is not allowed: no run of "
            "experiment 'e' has imbalance 'step', the only one minority_fraction applies to",
        ),
        (
            {"losses": {"ce": {"loss": "ce", "imbalance": "exp", "minority_fraction": 0.3}}},
            "config: experiments.e.losses.ce.minority_fraction: 0.3 is not allowed: no run",
        ),
        (
            {"base": {**TINY, "imbalance": "linear"}},
            "config: experiments.e.base.imbalance: 'linear' is not allowed; allowed: one of "
            "step, exp",
        ),
        (
            {"grid": {"imbalance": ["step", "linear"]}},
            "config: experiments.e.grid.imbalance.1: 'linear' is not allowed; allowed: step, exp",
        ),
        (
            {"grid": {"imbalance": ["exp", "exp"]}},
            "config: experiments.e.grid.imbalance: the value 'exp' is listed twice",
        ),
        (
            {"base": {**TINY, "minority_fraction": 0}},
            "config: experiments.e.base.minority_fraction: 0 is not allowed; allowed: a number "
            "in (0, 1]",
        ),
        (
            {"losses": {"ce": {"loss": "ce", "minority_fraction": 1.5}}},
            "config: experiments.e.losses.ce.minority_fraction: 1.5 is not allowed",
        ),
        ({"grid": {"minority_fraction": [0.5, 0]}}, "config: experiments.e.grid.minority_fraction"),
        (
            {"base": {**TINY, "imbalance": "exp"}, "grid": {"imbalance": ["step"]}},
            "config: experiments.e.base.imbalance: 'exp' conflicts with "
            "experiments.e.grid.imbalance",
        ),
    ],
)
def test_values_of_the_new_axes_that_cannot_be_honoured_are_refused(experiment, expected):
    assert refusal(config(**experiment)).startswith(expected)


def test_mu_of_the_grid_may_skip_exp_variants_when_a_step_run_uses_it():
    cfg = config(
        losses={"ce": {"loss": "ce"}, "lt": {"loss": "ce", "imbalance": "exp"}},
        grid={"minority_fraction": [0.3], "imbalance_ratio": [4]},
    )
    assert set(plan(cfg, SCHEMA).runs["e"]) == {"ce_R4_mu0.3_p0_s0", "lt_R4_exp_p0_s0"}


@pytest.fixture(scope="module")
def digits_limits() -> dict[str, Any]:
    labels = load_dataset("digits").train.labels
    return {
        "step": largest_valid_ratio(labels, 10),
        "mu0.1": largest_valid_ratio(labels, 10, minority_fraction=0.1),
        "exp": largest_valid_ratio(labels, 10, kind="exp"),
    }


def test_the_plan_checks_each_ratio_under_its_runs_own_imbalance(digits_limits):
    """digits' train split: the STEP minorities' smallest class has 130 points, the last
    class 135: R = 135 empties a class under STEP, not under μ = 0.1 or exponential."""
    assert digits_limits == {"step": 130, "mu0.1": 135, "exp": 135}
    ok = config(
        losses={
            "lt": {"loss": "ce", "imbalance": "exp"},
            "one": {"loss": "ce", "minority_fraction": 0.1},
        },
        grid={"imbalance_ratio": [1, 135]},
    )
    assert set(plan(ok, SCHEMA).runs["e"]) == {
        "lt_R1_exp_p0_s0",
        "lt_R135_exp_p0_s0",
        "one_R1_mu0.1_p0_s0",
        "one_R135_mu0.1_p0_s0",
    }
    step = refusal(config(grid={"imbalance_ratio": [1, 135]}))
    assert step.startswith("config: experiments.e.grid.imbalance_ratio.1: imbalance_ratio 135 ")
    assert step.endswith("the largest valid imbalance_ratio for this dataset is 130")
    exp = refusal(config(base={**TINY, "imbalance": "exp"}, grid={"imbalance_ratio": [2, 136]}))
    assert exp == (
        "config: experiments.e.grid.imbalance_ratio.1: imbalance_ratio 136 (imbalance 'exp') "
        "leaves class 9 (135 training points) without any; the largest valid "
        "imbalance_ratio (imbalance 'exp') for this dataset is 135"
    )


def test_binding_is_checked_against_the_runs_exponential_labels():
    """digits at R = 50, exponential: class 9 keeps ⌊135/50⌋ = 2 points."""
    cfg = config(
        losses={"bcl": {"loss": "bcl", "binding": 3, "imbalance": "exp"}},
        grid={"imbalance_ratio": [1, 50]},
    )
    message = refusal(cfg)
    assert message.startswith("config: experiments.e.losses.bcl.binding: binding 3 exceeds the 2")
    assert message.endswith("(run bcl_nw0_R50_exp_p0_s0)")
