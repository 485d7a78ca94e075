"""Generated pipeline configs, valid and invalid: accepted exactly or refused with one line.

In-process through :func:`protolib.pipeline.plan` (what the workflow calls) and, for a
few, through the real ``snakemake -n``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from protolib.pipeline import GRID_AXES, GRID_DEFAULTS, PipelineConfigError, plan
from protolib.registry import LOSSES
from protolib.train.config import RunConfig
from tests.workflow.test_config_refusals import SCHEMA, TINY
from tests.workflow.test_pipeline import snakemake

NAN, INF = math.nan, math.inf
#: Valid values per axis (duplicates such as 1 and 1.0 are likely), then invalid ones.
AXIS_VALUES = {
    "n_w": ([0, 1, 2, 3], [-1, 1.0, NAN, "2"]),
    "imbalance_ratio": ([1, 1.0, 2, 2.5, 10], [0.5, 200, 1e300, NAN, INF]),
    "label_corruption": ([0, 0.0, -0.0, 0.1, 0.1000001, 0.2, 1], [1.5, NAN]),
    "imbalance": (["step", "exp"], ["linear", 1]),
    "minority_fraction": ([0.5, 0.3, 1], [0, 1.5, NAN]),
    "seed": ([0, 1, 2, 3], [2**32, -1, 1.5, True]),
}
#: each axis's value where a config does not set it
DEFAULTS = {axis: values[0] for axis, values in GRID_DEFAULTS.items()}
LARGEST_DIGITS_RATIO = 130  # protolib.data.largest_valid_ratio on digits' train split
KEY_PATH = re.compile(
    r"^config: (experiments\.[^ ]+|plugins[^ ]*|results|report\.gram_runs(\.\d+)?|\(top level\)): "
)


def _axis_value(axis: str) -> st.SearchStrategy[Any]:
    valid, invalid = AXIS_VALUES[axis]
    return st.sampled_from(valid * 8 + invalid)


def _mostly(usual: Any, *others: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from([usual] * 3 * len(others) + list(others))


@st.composite
def pipeline_configs(draw: st.DrawFn) -> dict[str, Any]:
    experiments = {}
    for name in draw(st.lists(st.sampled_from(["e", "f"]), min_size=1, max_size=2, unique=True)):
        base = dict(TINY)
        for axis in draw(st.lists(st.sampled_from(GRID_AXES), max_size=2, unique=True)):
            base[axis] = draw(_axis_value(axis))
        extra = draw(
            _mostly(None, ("lr", NAN), ("lr", 0.1), ("run_id", "x"), ("foo", 1), ("seed", [0, 1]))
        )
        if extra:
            base[extra[0]] = extra[1]
        losses = {}
        variants = st.sampled_from(["ce", "supcon", "bcl2"] * 3 + ["supcon_nw0"])
        for variant in draw(st.lists(variants, min_size=1, max_size=3, unique=True)):
            spec: dict[str, Any] = {"loss": draw(_mostly("ce", "supcon", "bcl", "supcn"))}
            if draw(_mostly(False, True)):
                axis = draw(st.sampled_from(GRID_AXES))
                spec[axis] = draw(_axis_value(axis))
            losses[variant] = spec
        clash = draw(_mostly(False, True))  # a grid axis also set in base or a variant
        taken = set(base) | {a for spec in losses.values() for a in spec}
        axes = [a for a in GRID_AXES if clash or a not in taken]
        grid = {
            axis: draw(st.lists(_axis_value(axis), min_size=1, max_size=3))
            for axis in draw(st.lists(st.sampled_from(axes), max_size=3, unique=True))
        }
        experiments[name] = {"base": base, "losses": losses, "grid": grid}
    cfg: dict[str, Any] = {"experiments": experiments}
    cfg["results"] = draw(_mostly("results", "out/sub", "", "taken", "a b"))
    cfg["plugins"] = draw(_mostly([], ["no_such_plugin_q"], ["bad_plugin_q"]))
    gram = draw(_mostly(None, ["ce_R1_p0_s0"], ["nope"], "ce"))
    if gram is not None:
        cfg["report"] = {"gram_runs": gram}
    return cfg


def expected_points(cfg: dict[str, Any]) -> dict[str, set[tuple]]:
    """The grid points a config asks for, per experiment (independent of the code)."""
    points = {}
    for name, exp in cfg["experiments"].items():
        found = set()
        for variant, spec in exp["losses"].items():
            takes_n_w = LOSSES.get(spec["loss"]).needs.prototypes == "optional"
            axes = {}
            for axis in GRID_AXES:
                if axis in spec:
                    axes[axis] = [spec[axis]]
                elif axis == "n_w" and not takes_n_w:
                    axes[axis] = [0]
                elif axis in exp["base"]:
                    axes[axis] = [exp["base"][axis]]
                else:
                    axes[axis] = exp["grid"].get(axis, [DEFAULTS[axis]])
            for n, r, kind, mu, p, s in itertools.product(
                *(axes[a] for a in ("n_w", "imbalance_ratio", "imbalance")),
                *(axes[a] for a in ("minority_fraction", "label_corruption", "seed")),
            ):  # μ applies to STEP only: an exp point takes 0.5, once
                found.add((variant, n, r, kind, mu if kind == "step" else 0.5, p, s))
        points[name] = found
    return points


def must_refuse(cfg: dict[str, Any]) -> str | None:
    """A reason the config must be refused, when one is plain from the config alone."""
    if cfg["results"] in ("", "taken", "a b") or cfg["plugins"]:
        return "results or plugins"
    if cfg.get("report", {}).get("gram_runs") in (["nope"], "ce"):
        return "gram_runs"
    for exp in cfg["experiments"].values():
        scalars = [exp["base"], *exp["losses"].values()]
        if any(s["loss"] == "supcn" for s in exp["losses"].values()):
            return "unknown loss"
        base = exp["base"]
        if "run_id" in base or "foo" in base or base.get("lr", 0.1) != 0.1:
            return "bad base key (run_id, unknown, NaN)"
        for axis, values in exp["grid"].items():
            if len({_key(v) for v in values}) < len(values):
                return "duplicate axis value"
            if axis in base:  # a loss variant's own value replaces the grid's
                return "grid key in two places"
            if any(not _ok(axis, v) for v in values):
                return "bad grid value"
        for s in scalars:
            for axis in GRID_AXES:
                if axis in s and not _ok(axis, s[axis]):
                    return "bad scalar"
    return None


def _key(value: Any) -> Any:
    return ("nan",) if isinstance(value, float) and math.isnan(value) else value


def _ok(axis: str, value: Any) -> bool:
    if axis == "imbalance":
        return value in ("step", "exp")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if axis == "minority_fraction":
        return 0 < value <= 1
    if axis in ("n_w", "seed"):
        return isinstance(value, int) and 0 <= value < 2**32
    if axis == "imbalance_ratio":
        return 1 <= value <= LARGEST_DIGITS_RATIO
    return 0 <= value <= 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a file named ``taken`` (a results path that cannot be a folder)."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "taken").write_text("")
    return folder


@pytest.fixture(scope="module")
def bad_plugin(tmp_path_factory, request):
    """An importable module ``bad_plugin_q`` that raises on import."""
    import sys

    folder = tmp_path_factory.mktemp("plugins")
    (folder / "bad_plugin_q.py").write_text("raise RuntimeError('broken plugin')\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@seed(20261130)
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cfg=pipeline_configs())
def test_a_config_is_honoured_exactly_or_refused_with_one_line(cfg, workdir, bad_plugin):
    reason = must_refuse(cfg)
    try:
        result = plan(cfg, SCHEMA, workdir=workdir)
    except PipelineConfigError as error:
        message = str(error)
        assert "\n" not in message and KEY_PATH.match(message), message
        event("refused")
        return
    event("accepted")
    assert reason is None, f"accepted although {reason}: {cfg}"
    expected = expected_points(cfg)
    for name, runs in result.runs.items():
        got = set()
        for rid, run in runs.items():
            checked = RunConfig.from_dict(run)  # every run, not only one per variant
            assert checked.run_id == rid and run["experiment"] == name
            got.add((run["loss_name"], *(run[axis] for axis in GRID_AXES)))
            for axis in GRID_AXES:  # exactly the value given: same type, same number
                assert type(run[axis]) in ((str,) if axis == "imbalance" else (int, float))
            ratio, kind, mu, corruption, s = re.fullmatch(
                r".+_R([^_]+)(_exp)?(?:_mu([^_]+))?_p([^_]+)_s(\d+)", rid
            ).groups()
            assert (float(ratio), float(mu or 0.5), float(corruption), int(s)) == (
                run["imbalance_ratio"],
                run["minority_fraction"],
                run["label_corruption"],
                run["seed"],
            )
            assert ("exp" if kind else "step") == run["imbalance"]
        assert got == expected[name]  # one run per grid point, none merged or lost
        assert len(runs) == len(expected[name])


@seed(20261130)
@settings(
    max_examples=6,  # each is a Snakemake start-up (seconds); the bulk is in-process above
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cfg=pipeline_configs())
def test_the_command_plans_or_refuses_with_one_line(cfg, tmp_path):
    """Generated configs through the real ``snakemake -n``: exit 0 with exactly the runs
    :func:`plan` expands, or exit 2 with exactly its one line; nothing written either way."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "taken").write_text("")
    (folder / "bad_plugin_q.py").write_text("raise RuntimeError('broken plugin')\n")
    # in the dict's order: with two faulty experiments, both sides must meet the same first
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(folder, "-n", "-p", "all", timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.startswith("protolib: config:")]
    assert not any((folder / name).exists() for name in ("results", "out", "a b"))
    sys.path.insert(0, str(folder))  # as the job's PYTHONPATH has it
    try:
        runs = plan(cfg, SCHEMA, workdir=folder).runs
    except PipelineConfigError as error:
        assert result.returncode == 2 and lines == [f"protolib: {error}"], result.stderr
        event("refused")
        return
    finally:
        sys.path.remove(str(folder))
    event("accepted")
    assert result.returncode == 0 and not lines, result.stderr[-3000:]
    # every planned run is trained by exactly one train job (a batch), with its config
    specs = [
        json.loads(shlex.split(spec)[0])
        for spec in re.findall(r"printf '%s' (.+) > \S+\.spec\.json$", result.stdout, re.M)
    ]
    trained = [(Path(r["out"]).parent.parent.name, r["config"]) for s in specs for r in s["runs"]]
    assert sorted((e, c["run_id"]) for e, c in trained) == sorted(
        (e, rid) for e, r in runs.items() for rid in r
    )
    assert all(c == runs[e][c["run_id"]] for e, c in trained)
