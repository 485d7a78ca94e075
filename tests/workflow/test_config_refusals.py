"""The pipeline config is honoured exactly or refused with one line before any work.

Value checks run in-process through :func:`protolib.pipeline.plan` (what the workflow
calls); what only the command shows (strict YAML reading, exit status, nothing written,
the trained config) runs through the real ``snakemake`` CLI.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from protolib.pipeline import PipelineConfigError, format_number, plan, read_config_file
from protolib.train.config import RunConfig
from tests.conftest import tiny_run
from tests.workflow.test_pipeline import ROOT, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
# out_dim 16: the ETF of digits' 10 classes needs at least 9 dimensions
TINY = tiny_run(model_options={"widths": [16], "out_dim": 16}, iterations=2, eval_every=1)


def config(**experiment: Any) -> dict[str, Any]:
    """A one-experiment config ``e`` with tiny base keys; ``experiment`` replaces parts."""
    exp = {"base": dict(TINY), "losses": {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}}}
    exp.update(copy.deepcopy(experiment))
    return {"experiments": {"e": exp}}


def refusal(cfg: Any, tmp_path: Path | None = None) -> str:
    with pytest.raises(PipelineConfigError) as caught:
        plan(cfg, SCHEMA, workdir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("config: "), message
    return message


# ------------------------------------------------------------------ 1. grid keys in base


def test_grid_keys_in_base_and_variants_are_honoured():
    cfg = config(
        base={**TINY, "imbalance_ratio": 10, "seed": 3},
        losses={
            "ce": {"loss": "ce", "seed": 7, "label_corruption": 0.25},
            "supcon": {"loss": "supcon", "n_w": 5},
        },
    )
    runs = plan(cfg, SCHEMA).runs["e"]
    assert set(runs) == {"ce_R10_p0.25_s7", "supcon_nw5_R10_p0_s3"}
    ce, supcon = runs["ce_R10_p0.25_s7"], runs["supcon_nw5_R10_p0_s3"]
    assert (ce["imbalance_ratio"], ce["seed"], ce["label_corruption"], ce["n_w"]) == (
        10,
        7,
        0.25,
        0,
    )
    assert (supcon["imbalance_ratio"], supcon["seed"], supcon["n_w"]) == (10, 3, 5)


def test_a_variants_own_value_replaces_the_grid_for_that_variant_only():
    cfg = config(
        losses={
            "supcon": {"loss": "supcon"},
            "bcl_bind": {"loss": "bcl", "n_w": 0, "binding": 1, "imbalance_ratio": 2},
        },
        grid={"n_w": [0, 5], "imbalance_ratio": [1, 3]},
    )
    runs = plan(cfg, SCHEMA).runs["e"]
    assert set(runs) == {
        "supcon_nw0_R1_p0_s0",
        "supcon_nw5_R1_p0_s0",
        "supcon_nw0_R3_p0_s0",
        "supcon_nw5_R3_p0_s0",
        "bcl_bind_nw0_R2_p0_s0",
    }
    bound = runs["bcl_bind_nw0_R2_p0_s0"]
    assert (bound["n_w"], bound["imbalance_ratio"], bound["binding"]) == (0, 2, 1)


def test_base_n_w_applies_only_to_losses_that_take_it():
    runs = plan(config(base={**TINY, "n_w": 4}), SCHEMA).runs["e"]
    assert set(runs) == {"ce_R1_p0_s0", "supcon_nw4_R1_p0_s0"}
    assert runs["ce_R1_p0_s0"]["n_w"] == 0


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (
            {"base": {**TINY, "seed": 1}, "grid": {"seed": [1, 2]}},
            "config: experiments.e.base.seed: 1 conflicts with experiments.e.grid.seed",
        ),
        (
            {"base": {**TINY, "seed": [0, 1]}},
            "config: experiments.e.base.seed: [0, 1] is not allowed; allowed: an integer",
        ),
        (
            {"base": {**TINY, "run_id": "x"}},
            "config: experiments.e.base.run_id: 'x' is not allowed",
        ),
        (
            {"losses": {"ce": {"loss": "ce", "loss_name": "y"}}},
            "config: experiments.e.losses.ce.loss_name: 'y' is not allowed",
        ),
        (
            {"base": {**TINY, "experiment": "z"}},
            "config: experiments.e.base.experiment: 'z' is not allowed",
        ),
    ],
)
def test_grid_keys_in_two_places_and_pipeline_keys_are_refused(experiment, expected):
    assert expected in refusal(config(**experiment))


# ------------------------------------------------------------------------ 2. run ids


def test_distinct_values_get_distinct_round_tripping_ids():
    cfg = config(grid={"label_corruption": [0.1, 0.1000001], "imbalance_ratio": [1, 1.5]})
    runs = plan(cfg, SCHEMA).runs["e"]
    ce = {rid: run for rid, run in runs.items() if rid.startswith("ce_")}
    assert set(ce) == {
        "ce_R1_p0.1_s0",
        "ce_R1_p0.1000001_s0",
        "ce_R1.5_p0.1_s0",
        "ce_R1.5_p0.1000001_s0",
    }
    for rid, run in ce.items():
        ratio, corruption = re.fullmatch(r"ce_R(.+)_p(.+)_s0", rid).groups()
        assert (
            float(ratio) == run["imbalance_ratio"] and float(corruption) == run["label_corruption"]
        )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.0, "0"),
        (10, "10"),
        (10.0, "10"),
        (0.2, "0.2"),
        (1e-7, "1e-07"),
        (2.5e20, "2.5e+20"),
    ],
)
def test_numbers_in_ids_are_readable_and_exact(value, text):
    assert format_number(value) == text and float(text) == value


@pytest.mark.parametrize(
    ("axis", "values", "shown"),
    [
        ("imbalance_ratio", [1, 1.0], "1.0"),
        ("seed", [0, 1, 0], "0"),
        ("label_corruption", [0, 0.0], "0.0"),
    ],
)
def test_duplicate_axis_values_are_refused(axis, values, shown):
    message = refusal(config(grid={axis: values}))
    assert message.startswith(
        f"config: experiments.e.grid.{axis}: the value {shown} is listed twice"
    )


def test_a_variant_name_equal_to_a_generated_id_is_refused():
    message = refusal(config(losses={"supcon": {"loss": "supcon"}, "supcon_nw0": {"loss": "ce"}}))
    assert "would share the run id 'supcon_nw0_R1_p0_s0'" in message
    assert "supcon (n_w=0" in message and "supcon_nw0 (n_w=0" in message


def test_the_default_config_keeps_its_run_ids():
    runs = plan(yaml.safe_load((ROOT / "config.yaml").read_text()), SCHEMA).runs
    ps, seeds = ["0", "0.2", "0.4", "0.6", "0.8"], [0, 1]
    fit = {f"ce_R1_p{p}_s{s}" for p in ps for s in range(5)}
    fit |= {f"supcon_nw0_R1_p{p}_s{s}" for p in ps for s in range(5)}
    prototypes = {f"ce_R{r}_p0_s{s}" for r in (1, 10, 50) for s in seeds} | {
        f"{loss}_nw{n}_R{r}_p0_s{s}"
        for loss in ("supcon", "bcl")
        for n in (0, 10, 100)
        for r in (1, 10, 50)
        for s in seeds
    }
    prototypes |= {
        f"{loss}_R{r}_p0_s{s}"
        for loss in ("bcl_bind_nw0", "ce_la")
        for r in (1, 10, 50)
        for s in seeds
    }
    limit = {f"limit_{g}_R10_p0_s0" for g in ("etf", "minority", "collapse")}
    bounds = {"ce_R1_p0_s0", "supcon_nw0_R1_p0_s0"}
    long_tail = {  # exponential imbalance: the kind is in the id (STEP, the default, is not)
        f"{variant}_R{r}_exp_p0_s{s}"
        for variant in ("ce", "ce_la", "supcon_nw0", "supcon_etf_nw100", "bcl_nw0", "bcl_bind_nw0")
        for r in (10, 50)
        for s in range(3)
    }
    assert {name: set(r) for name, r in runs.items()} == {
        "fit": fit,
        "prototypes": prototypes,
        "limit": limit,
        "long_tail": long_tail,
        "bounds": bounds,
    }
    assert sum(map(len, runs.values())) == 50 + 54 + 3 + 36 + 2


# --------------------------------------------------------------- 4, 5, 6, 9: values


def test_an_imbalance_that_empties_a_class_is_refused_naming_the_largest_valid_ratio():
    from protolib.data import largest_valid_ratio, load_dataset

    digits = load_dataset("digits")
    largest = largest_valid_ratio(digits.train.labels, digits.num_classes)
    plan(config(grid={"imbalance_ratio": [largest]}), SCHEMA)  # the largest one is accepted
    message = refusal(config(grid={"imbalance_ratio": [2, largest + 1]}))
    assert message.startswith("config: experiments.e.grid.imbalance_ratio.1: imbalance_ratio")
    assert message.endswith(f"the largest valid imbalance_ratio for this dataset is {largest}")


def test_unknown_dataset_options_are_refused_naming_the_accepted_ones():
    message = refusal(config(base={**TINY, "dataset_options": {"test_fractoin": 0.5}}))
    assert message.startswith("config: experiments.e.base.dataset_options: ")
    assert "test_fractoin" in message and message.endswith(
        "accepted options: test_fraction, split_seed)"
    )


def test_a_dataset_option_value_its_loader_refuses_names_the_key_once():
    """Known options with a value the loader refuses, met while the imbalance ratios are
    checked: the message names the key where it is written (it once said
    ``dataset_options.dataset_options``)."""
    options = {"num_classes": -3}
    base = {**TINY, "dataset": "synthetic", "dataset_options": options}
    message = refusal(config(base=base, grid={"imbalance_ratio": [1, 2]}))
    assert message == (
        "config: experiments.e.base.dataset_options: synthetic: num_classes must be an "
        "integer >= 2, got -3"
    )


def test_a_prototype_geometry_too_big_for_the_embedding_is_refused_at_plan_time():
    """10 digit classes need an 9-dimensional embedding for the ETF. The run with n_w = 0
    uses no prototypes (and is the one the expansion validates fully); the n_w = 5 run
    would fail only in its train job without this check."""
    small = {**TINY, "model_options": {"widths": [16], "out_dim": 8}}
    message = refusal(config(base=small, grid={"n_w": [0, 5]}))
    assert message == (
        "config: experiments.e.base.geometry: geometry 'etf' with K=10 classes needs "
        "dim >= 9, got 8 (the embedding dimension is set by the model or projector_dim)"
    )
    plan(
        config(
            base={**small, "model_options": {"widths": [16], "out_dim": 9}}, grid={"n_w": [0, 5]}
        ),
        SCHEMA,
    )
    plan(config(base={**small, "projector": "mlp", "projector_dim": 9}, grid={"n_w": [5]}), SCHEMA)
    plan(config(base=small), SCHEMA)  # no run uses prototypes: nothing to check


def test_gram_runs_naming_an_unknown_run_is_refused():
    cfg = {**config(), "report": {"gram_runs": ["ce_R1_p0_s0", "ce_R2_p0_s0"]}}
    message = refusal(cfg)
    assert message.startswith("config: report.gram_runs.1: 'ce_R2_p0_s0' is not a run id")
    assert "ce_R1_p0_s0" in message
    assert plan({**config(), "report": {"gram_runs": ["ce_R1_p0_s0"]}}, SCHEMA).gram_runs == [
        "ce_R1_p0_s0"
    ]


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ("", "config: results: '' is not allowed"),
        ("a file", "config: results: 'a file' is not allowed"),
        ("out{x}", "config: results: 'out{x}' is not allowed"),
        ("taken", "config: results: 'taken' is an existing file"),
        ("taken/sub", "config: results: 'taken/sub' lies under 'taken', which is a file"),
    ],
)
def test_a_results_folder_that_cannot_be_one_is_refused(tmp_path, results, expected):
    (tmp_path / "taken").write_text("")
    assert refusal({**config(), "results": results}, tmp_path).startswith(expected)
    assert plan({**config(), "results": "out/"}, SCHEMA, workdir=tmp_path).results == "out"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("base", "lr"), math.nan),
        (("base", "weight_decay"), math.inf),
        (("losses", "supcon", "loss_options"), {"tau": -math.inf}),
        (("base", "imbalance_ratio"), math.inf),
        (("losses", "ce", "label_corruption"), math.nan),
    ],
)
def test_non_finite_numbers_are_refused(where, value):
    cfg = config()
    target = cfg["experiments"]["e"]
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    assert refusal(cfg).startswith(f"config: experiments.e.{'.'.join(where)}")


@pytest.mark.parametrize("axis", ["imbalance_ratio", "label_corruption"])
def test_a_non_finite_grid_value_after_the_first_is_refused(axis):
    message = refusal(config(grid={axis: [1, math.nan]}))
    assert message.startswith(f"config: experiments.e.grid.{axis}.1: nan is not allowed")


def test_every_value_of_a_grid_is_checked_not_only_the_first():
    message = refusal(config(grid={"n_w": [0, 1.0]}))
    assert message.startswith("config: experiments.e.grid.n_w.1: 1.0 is not allowed")
    # past the run config's own range: refused when planned, not when its train job runs
    message = refusal(config(grid={"n_w": [0, 10_001]}))
    assert message == (
        "config: experiments.e.grid.n_w.1: 10001 is not allowed; allowed: an integer in 0..10000"
    )


# ------------------------------------------------------------------ 3. strict YAML


def test_duplicate_keys_and_syntax_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "experiments:\n  e:\n    losses:\n      ce: {loss: ce}\n      ce: {loss: supcon}\n"
    )
    with pytest.raises(
        PipelineConfigError, match=rf"^config: {re.escape(str(path))}:5: duplicate key 'ce'"
    ):
        read_config_file(path)
    path.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(
        PipelineConfigError, match=rf"^config: {re.escape(str(path))}:2:2: invalid YAML"
    ):
        read_config_file(path)
    path.write_text("_b: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\n")  # a merge key may be overridden
    assert read_config_file(path) == {"_b": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}


# ------------------------------------------------------------------ CLI: what only it shows


def _one_line_exit_2(result, workdir: Path) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("protolib: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr
    assert not (workdir / "results").exists()
    assert not (workdir / ".snakemake").exists()
    return lines[0]


BAD_PLUGIN = "raise ZeroDivisionError('boom at import')\n"


@pytest.mark.parametrize(
    ("text", "preset", "expected"),
    [
        (  # read before Snakemake's `configfile:` reads it (and keeps the last 'e')
            "experiments:\n  e: {losses: {ce: {loss: ce}}}\n  e: {losses: {ce: {loss: ce}}}\n",
            False,
            "protolib: config: config.yaml:3: duplicate key 'e'",
        ),
        (  # read after Snakemake has loaded `--configfile`
            "experiments:\n  e:\n    losses: {ce: {loss: ce}, ce: {loss: supcon}}\n",
            True,
            "preset.yaml:3: duplicate key 'ce'",
        ),
        (
            "plugins: [bad_plugin_b]\nexperiments:\n  e: {losses: {ce: {loss: ce}}}\n",
            False,
            "protolib: config: plugins: plugin module 'bad_plugin_b' could not be imported",
        ),
    ],
)
def test_the_command_refuses_with_one_line_exit_2_and_writes_nothing(
    tmp_path, text, preset, expected
):
    (tmp_path / "bad_plugin_b.py").write_text(BAD_PLUGIN)
    args = ["-n", "all"]
    if preset:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config()))
        (tmp_path / "preset.yaml").write_text(text)
        args = ["-n", f"--configfile={tmp_path / 'preset.yaml'}", "all"]
    else:
        (tmp_path / "config.yaml").write_text(text)
    line = _one_line_exit_2(snakemake(tmp_path, *args, timeout=120), tmp_path)
    assert expected in line, line


def test_the_train_job_gets_exactly_the_values_given_in_base_and_variant(tmp_path):
    cfg = config(
        base={**TINY, "imbalance_ratio": 10, "seed": 3},
        losses={"ce": {"loss": "ce", "label_corruption": 0.1000001, "imbalance": "exp"}},
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/e/batches/ce_R10_exp_p0.1000001_s3.json"  # a batch of one run
    result = snakemake(tmp_path, "-n", "-p", target)
    assert result.returncode == 0, result.stderr[-3000:]
    command = re.search(r"printf '%s' (.+) > \S+\.spec\.json$", result.stdout, re.M).group(1)
    (entry,) = json.loads(shlex.split(command)[0])["runs"]
    assert entry["out"] == "results/e/runs/ce_R10_exp_p0.1000001_s3"
    job = RunConfig.from_dict(entry["config"])
    assert job.grid_keys == {
        "loss": "ce",
        "n_w": 0,
        "imbalance_ratio": 10.0,
        "imbalance": "exp",
        "minority_fraction": 0.5,
        "label_corruption": 0.1000001,
        "seed": 3,
    }
    assert (job.run_id, job.experiment, job.model_options) == (
        "ce_R10_exp_p0.1000001_s3",
        "e",
        TINY["model_options"],
    )


def test_binding_beyond_a_class_of_the_runs_labels_is_refused_at_plan_time():
    # digits at R = 50: the minority classes keep 2 or 3 training points
    cfg = config(losses={"bcl": {"loss": "bcl", "binding": 3}}, grid={"imbalance_ratio": [1, 50]})
    message = refusal(cfg)
    assert message.startswith("config: experiments.e.losses.bcl.binding: binding 3 exceeds")
    assert "(run bcl_nw0_R50_p0_s0)" in message
    ok = config(losses={"bcl": {"loss": "bcl", "binding": 2}}, grid={"imbalance_ratio": [1, 50]})
    assert set(plan(ok, SCHEMA).runs["e"]) == {"bcl_nw0_R1_p0_s0", "bcl_nw0_R50_p0_s0"}


def test_a_grid_list_that_every_variant_replaces_is_refused():
    cfg = config(
        losses={"ce": {"loss": "ce", "imbalance_ratio": 100}}, grid={"imbalance_ratio": [10, 50]}
    )
    message = refusal(cfg)
    assert message.startswith("config: experiments.e.grid.imbalance_ratio: [10, 50] is not allowed")
    assert "every loss variant" in message
