"""The report: plots and tables drawn from the aggregate of tiny real runs."""

from __future__ import annotations

import inspect
import io
import itertools
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from protolib.results import plots, tables
from protolib.results.aggregate import aggregate
from protolib.results.contract import AXES
from protolib.results.markdown import markdown_table
from protolib.results.plots.gram import gram_figure
from protolib.results.report import (
    CAPTIONS,
    ITEMS,
    PLOTS,
    TABLES,
    caption_file,
    make_report,
    read_aggregate,
    report_files,
    resolve,
)
from protolib.train import train_run
from tests import launcher

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUICK = {"iterations": 40, "eval_every": 20, "probe_iterations": 10, "threads": 1}
KEYS = ["loss", "n_w", "imbalance_ratio", "label_corruption"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid() -> list[dict]:
    """ce and supcon × p ∈ {0, 0.2} × 2 seeds at R = 1, and supcon n_w ∈ {0, 10} at R = 1, 10."""
    points = [
        {"loss": loss, "n_w": 0, "imbalance_ratio": 1, "label_corruption": p, "seed": seed}
        for loss, p, seed in itertools.product(["ce", "supcon"], [0.0, 0.2], [0, 1])
    ]
    points += [
        {"loss": "supcon", "n_w": n_w, "imbalance_ratio": ratio, "label_corruption": 0.0, "seed": 0}
        for n_w, ratio in [(10, 1), (0, 10), (10, 10)]
    ]
    return points


def run_id(point: dict) -> str:
    return (
        f"{point['loss']}_nw{point['n_w']}_R{point['imbalance_ratio']}"
        f"_p{point['label_corruption']}_s{point['seed']}"
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    run_dirs = []
    for point in grid():
        out = root / "runs" / run_id(point)
        train_run({**QUICK, **point, "run_id": run_id(point)}, out, progress=False)
        run_dirs.append(out)
    aggregate(run_dirs, root / "aggregate")
    written = make_report(root / "aggregate", root / "report")
    return SimpleNamespace(
        root=root,
        run_dirs=run_dirs,
        aggregate=root / "aggregate",
        out=root / "report",
        written=written,
        frames=read_aggregate(root / "aggregate"),
    )


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def assert_valid_png(path: Path, *, min_bytes: int = 0) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].var()) > 1e-3, f"{path} is (nearly) a single colour"


# -- files -----------------------------------------------------------------------------
def test_report_writes_exactly_the_declared_files(experiment):
    declared = report_files(experiment.out)
    assert len(declared) == len(set(declared)) == len(PLOTS) + 3 * len(TABLES)
    assert set(experiment.written.values()) == set(declared)
    assert files_under(experiment.out) == set(declared)  # no temporary files left behind
    for key, path in experiment.written.items():
        assert path == experiment.out / key


def test_every_plot_is_a_valid_nontrivial_png(experiment):
    for name in PLOTS:
        assert_valid_png(experiment.out / "plots" / f"{name}.png", min_bytes=10_000)


def test_captions_cover_every_plot_and_table_and_are_valid_rst():
    expected = {f"plots/{n}" for n in PLOTS} | {f"tables/{n}" for n in TABLES}
    assert set(CAPTIONS) == expected
    core = pytest.importorskip("docutils.core")
    for key, text in CAPTIONS.items():
        warnings = io.StringIO()
        core.publish_doctree(
            text, settings_overrides={"warning_stream": warnings, "report_level": 1}
        )
        assert warnings.getvalue() == "", (key, warnings.getvalue())


def test_report_files_are_the_documented_report_in_order(tmp_path):
    plots_ = ["time_to_fit", "delta_g", "gram", "gamma", "accuracy_vs_imbalance"]
    tables_ = [
        "accuracy",
        "time_to_fit",
        "trained_bounds",
        "accuracy_by_group",
        "collapse",
        "delta_g",
    ]
    expected = [tmp_path / "plots" / f"{n}.png" for n in plots_] + [
        tmp_path / "tables" / f"{n}.{ext}" for n in tables_ for ext in ("csv", "md", "tex")
    ]
    assert report_files(tmp_path) == expected
    assert report_files(str(tmp_path)) == expected


def test_every_item_names_a_function_that_takes_its_inputs_and_options():
    for item in ITEMS:
        function = resolve(item.function)
        path = ("path",) if item.kind == "plot" else ()
        keywords = {keyword: None for keyword, _ in item.options}
        inspect.signature(function).bind(*item.inputs, *path, **keywords)  # TypeError if not
        if item.check is not None:
            inspect.signature(resolve(item.check)).bind(*item.inputs, **keywords)


def test_captions_are_plain_text_for_snakemakes_template_engine():
    # Snakemake renders a caption with Jinja2: {{ }}, {% %} and {# #} would be evaluated
    for key, text in CAPTIONS.items():
        assert not any(mark in text for mark in ("{{", "{%", "{#")), key


def test_caption_file_writes_the_caption_once_and_repairs_a_changed_file(tmp_path):
    path = Path(caption_file("tables/accuracy", tmp_path))
    assert path.is_absolute() and path.parent == tmp_path
    assert path.read_text(encoding="utf-8") == CAPTIONS["tables/accuracy"] + "\n"
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    assert caption_file("tables/accuracy", tmp_path) == str(path)
    assert path.stat().st_mtime_ns == stamp - 10**9  # same text: not rewritten
    path.write_text("stale\n")
    caption_file("tables/accuracy", tmp_path)
    assert path.read_text(encoding="utf-8") == CAPTIONS["tables/accuracy"] + "\n"
    with pytest.raises(KeyError, match=r"plots/nope.*known: plots/time_to_fit"):
        caption_file("plots/nope", tmp_path)


def test_snakemake_report_shows_the_caption_from_the_list(tmp_path):
    """The mechanism of workflow/rules/report.smk: a caption file written at parse time."""
    (tmp_path / "Snakefile").write_text(
        "from protolib.results.report import caption_file\n\n"
        "rule all:\n"
        "    output:\n"
        '        report("out.txt", caption=caption_file("plots/gram"), category="c"),\n'
        "    shell:\n"
        '        "echo hi > {output}"\n'
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "snakemake"), "-s", str(tmp_path / "Snakefile"), "-d", str(workdir)]
    for extra in (["--cores", "1"], ["--report", "report.html"]):
        done = launcher.run([*command, *extra], env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    html = (workdir / "report.html").read_text(encoding="utf-8")
    assert "<strong>Final Gram matrices</strong>: the class-mean Gram G_M" in html


def test_the_workflows_lists_import_without_torch_matplotlib_or_pandas():
    code = (
        "import sys\n"
        "from protolib.results.report import CAPTIONS, caption_file, report_files\n"
        "from protolib.theory.report import THEORY_FILES\n"
        "print(sorted({'torch', 'matplotlib', 'pandas', 'scipy'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


def test_unknown_gram_runs_are_refused_before_anything_is_written(experiment, tmp_path):
    with pytest.raises(ValueError, match=r"unknown run id\(s\) nope; known: ce_nw0_R1"):
        make_report(experiment.aggregate, tmp_path / "report", gram_runs=["nope"])
    assert not (tmp_path / "report").exists()


def test_markdown_table_aligns_escapes_and_checks_its_rows():
    text = markdown_table(["name", "value"], [["a|b", "1"], ["c", "2.5"]], align=["left", "right"])
    assert text == "| name | value |\n|:---|---:|\n| a\\|b | 1 |\n| c | 2.5 |\n"
    assert markdown_table(["x"], []) == "| x |\n|---|\n"
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["x", "y"], [["1"]])


# -- tables ----------------------------------------------------------------------------
def table_lines(experiment, name: str) -> tuple[pd.DataFrame, str, str]:
    folder = experiment.out / "tables"
    csv = pd.read_csv(folder / f"{name}.csv")
    return csv, (folder / f"{name}.md").read_text(), (folder / f"{name}.tex").read_text()


def row_prefixes(key: tuple) -> tuple[str, str]:
    """The (Markdown, LaTeX) start of the row of grid point ``key`` (:data:`KEYS`; the
    other grid axes at their defaults)."""
    point = {axis.name: axis.default for axis in AXES} | dict(zip(KEYS, key, strict=True))
    cells = [f"{v:g}" if isinstance(v, float) else str(v) for v in map(point.get, tables.GRID)]
    latex = " & ".join(map(tables.latex_escape, cells))
    return "| " + " | ".join(cells) + " | ", latex + " & "


def line_starting(text: str, prefix: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, (prefix, text)
    return found[0]


def formatted(mean: float, half: float, n: int, decimals: int = 3) -> tuple[str, str]:
    """The (Markdown, LaTeX) cell of a figure over all ``n`` seeds of its row."""
    if n == 1:
        return f"{mean:.{decimals}f} (n = 1)", f"{mean:.{decimals}f} (n = 1)"
    return (
        f"{mean:.{decimals}f} ± {half:.{decimals}f}",
        f"{mean:.{decimals}f} $\\pm$ {half:.{decimals}f}",
    )


@pytest.mark.parametrize(
    ("name", "figure"), [("accuracy", "test_accuracy"), ("delta_g", "delta_g")]
)
def test_summary_tables_equal_a_groupby_over_seeds(experiment, name, figure):
    runs = experiment.frames["runs"]
    expected = runs.groupby(KEYS)[figure].agg(["mean", "std", "size"])
    csv, markdown, latex = table_lines(experiment, name)
    assert len(csv) == len(expected) == 7
    got = csv.set_index(KEYS)
    for key, row in expected.iterrows():
        n = int(row["size"])
        assert got.loc[key, f"{figure}_mean"] == pytest.approx(row["mean"], rel=1e-12)
        assert got.loc[key, f"{figure}_n"] == got.loc[key, "n_seeds"] == n
        half = float("nan")
        if n == 1:
            assert math.isnan(got.loc[key, f"{figure}_std"])
            assert math.isnan(got.loc[key, f"{figure}_ci_low"])
        else:
            assert got.loc[key, f"{figure}_std"] == pytest.approx(row["std"], rel=1e-9)
            import scipy.stats  # imported here, not at collection (1.2 s per test worker)

            half = scipy.stats.t.ppf(0.975, n - 1) * row["std"] / math.sqrt(n)
            low, high = got.loc[key, f"{figure}_ci_low"], got.loc[key, f"{figure}_ci_high"]
            assert (low, high) == pytest.approx((row["mean"] - half, row["mean"] + half))
        md_text, tex_text = formatted(row["mean"], half, n)
        md_prefix, tex_prefix = row_prefixes(key)
        assert md_text in line_starting(markdown, md_prefix)
        assert tex_text in line_starting(latex, tex_prefix)
    # two seeds per balanced grid point
    assert set(expected.loc[("ce", 0, 1.0)]["size"]) == {2}


def test_accuracy_table_reports_probe_accuracy_for_headless_losses(experiment):
    table = tables.accuracy_table(experiment.frames["runs"]).set_index(KEYS)
    assert (
        table.loc[("ce", 0, 1.0, 0.0), "probe_accuracy_mean"]
        != table.loc[("ce", 0, 1.0, 0.0), "probe_accuracy_mean"]
    )  # NaN: CE has a head, no probe
    assert 0 < table.loc[("supcon", 0, 1.0, 0.0), "probe_accuracy_mean"] <= 1


def test_time_to_fit_table_averages_fitted_runs_and_counts_them(experiment):
    runs = experiment.frames["runs"]
    csv, markdown, latex = table_lines(experiment, "time_to_fit")
    got = csv.set_index(KEYS)
    groups: dict[tuple, list] = {}
    for record in runs.to_dict("records"):
        groups.setdefault(tuple(record[k] for k in KEYS), []).append(record)
    assert len(groups) == len(csv)
    saw_fitted = saw_missed = False
    for key, records in groups.items():
        fitted = [r["time_to_fit"] for r in records if not pd.isna(r["time_to_fit"])]
        label = f"{len(fitted)}/{len(records)}"
        assert got.loc[key, "fitted"] == label
        assert got.loc[key, "budget"] == max(r["iterations"] for r in records)
        md_line = line_starting(markdown, row_prefixes(key)[0])
        tex_line = line_starting(latex, row_prefixes(key)[1])
        assert f"| {label} |" in md_line and f"& {label} &" in tex_line
        if fitted:
            saw_fitted = True
            assert got.loc[key, "time_to_fit_mean"] == pytest.approx(statistics.mean(fitted))
            text = f"{statistics.mean(fitted):.0f}"
            assert text in md_line and text in tex_line
        else:
            saw_missed = True
            assert math.isnan(got.loc[key, "time_to_fit_mean"])
            assert "| — |" in md_line and "& -- &" in tex_line
    assert saw_missed  # label corruption 0.2 is not fitted in 40 iterations
    assert saw_fitted or runs["time_to_fit"].isna().all()


def test_write_table_formats_and_escapes(tmp_path):
    df = pd.DataFrame(
        {
            "loss": ["ce_fix", "supcon"],
            "n_w": [0, 100],
            "imbalance_ratio": [1.0, 10.0],
            "label_corruption": [0.0, 0.25],
            "test_accuracy_mean": [0.91234, 0.5],
            "test_accuracy_ci_low": [0.90812, float("nan")],
            "test_accuracy_ci_high": [0.91656, float("nan")],
            "test_accuracy_std": [0.0034, float("nan")],
            "test_accuracy_n": [3, 1],
            "n_seeds": [3, 1],
        }
    )
    csv, md, tex = tables.write_table(df, tmp_path / "out" / "acc.v1")
    assert [p.name for p in (csv, md, tex)] == ["acc.v1.csv", "acc.v1.md", "acc.v1.tex"]
    pd.testing.assert_frame_equal(pd.read_csv(csv), df, check_dtype=False)
    markdown = md.read_text()
    assert "| ce_fix | 0 | 1 | 0 | 0.912 ± 0.004 | 3 |" in markdown
    assert "| supcon | 100 | 10 | 0.25 | 0.500 (n = 1) | 1 |" in markdown
    assert markdown.splitlines()[1] == "|:---|---:|---:|---:|---:|---:|"
    assert markdown.endswith(f"\n\n{tables.LEGEND}\n")
    latex = tex.read_text()
    assert r"ce\_fix & 0 & 1 & 0 & 0.912 $\pm$ 0.004 & 3 \\" in latex
    assert r"loss & $n_w$ & $R$ & $p$ & test accuracy & seeds \\" in latex
    assert latex.startswith(f"% {tables.LEGEND}\n" + r"\begin{tabular}{lrrrrr}")
    assert "ce_fix" not in latex
    assert files_under(tmp_path / "out") == {csv, md, tex}


# -- Gram selection --------------------------------------------------------------------
def test_default_gram_runs_of_the_experiment(experiment):
    """n_w = 0 and the largest n_w per loss at its largest R (the rule: test_gram.py); the
    ETF targets that real runs record are one target, drawn once."""
    frames = experiment.frames
    chosen = plots.select_gram_runs(frames["runs"])
    assert chosen == ["ce_nw0_R1_p0.0_s0", "supcon_nw0_R10_p0.0_s0", "supcon_nw10_R10_p0.0_s0"]
    fig = gram_figure(frames["geometry"], frames["runs"], chosen)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 4 and titles[0].startswith("target G*")


def test_gram_heatmaps_take_explicit_runs_and_reject_unknown_ones(experiment, tmp_path):
    frames = experiment.frames
    ids = ["supcon_nw0_R1_p0.0_s1", "ce_nw0_R1_p0.2_s1", "supcon_nw0_R10_p0.0_s0"]
    path = plots.plot_gram_heatmaps(
        frames["geometry"], frames["runs"], tmp_path / "g.png", run_ids=ids
    )
    assert_valid_png(path, min_bytes=10_000)
    with pytest.raises(ValueError, match=r"unknown run id.*nope"):
        plots.plot_gram_heatmaps(
            frames["geometry"], frames["runs"], tmp_path / "x.png", run_ids=["nope"]
        )
    assert not (tmp_path / "x.png").exists()


def test_normalised_grams_match_the_recorded_delta_g(experiment):
    frames = experiment.frames
    for run in frames["runs"].itertuples():
        learned = plots.long_matrix(frames["geometry"], run.run_id, "class_means")
        target = plots.long_matrix(frames["geometry"], run.run_id, "target")
        diff = learned / np.linalg.norm(learned) - target / np.linalg.norm(target)
        assert np.linalg.norm(diff) == pytest.approx(run.delta_g, abs=1e-4)


def test_number_of_classes_from_class_mean_pairs():
    assert plots.classes_from_pairs(45) == 10
    assert plots.classes_from_pairs(4950) == 100
    assert plots.classes_from_pairs(44) is None


# -- degenerate input ------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 0])
def test_report_of_one_run_or_none_still_writes_every_file(experiment, tmp_path, count):
    aggregate(experiment.run_dirs[:count], tmp_path / "aggregate")
    written = make_report(tmp_path / "aggregate", tmp_path / "report")
    assert files_under(tmp_path / "report") == set(report_files(tmp_path / "report"))
    assert set(written.values()) == set(report_files(tmp_path / "report"))
    for name in PLOTS:
        assert_valid_png(tmp_path / "report" / "plots" / f"{name}.png")
    accuracy = pd.read_csv(tmp_path / "report" / "tables" / "accuracy.csv")
    assert len(accuracy) == count


def test_plots_survive_missing_metrics_and_single_values(experiment, tmp_path):
    frames = experiment.frames
    runs, metrics, gamma = frames["runs"], frames["metrics"], frames["gamma"]
    balanced_clean = runs[(runs["imbalance_ratio"] == 1) & (runs["label_corruption"] == 0)]
    cases = {
        "no_delta_g": lambda p: plots.plot_delta_g(metrics[metrics["metric"] != "delta_g"], p),
        "one_step": lambda p: plots.plot_delta_g(metrics[metrics["step"] == 40], p),
        "one_p": lambda p: plots.plot_time_to_fit(balanced_clean, p),
        "no_balanced": lambda p: plots.plot_time_to_fit(runs[runs["imbalance_ratio"] > 1], p),
        "one_ratio": lambda p: plots.plot_accuracy_vs_imbalance(balanced_clean, p),
        "no_accuracy": lambda p: plots.plot_accuracy_vs_imbalance(
            runs.assign(test_accuracy=float("nan")), p
        ),
        "no_weights": lambda p: plots.plot_gamma(
            gamma[gamma["distribution"] != "weights"], runs, p, num_classes=None
        ),
        "no_geometry": lambda p: plots.plot_gram_heatmaps(frames["geometry"].iloc[:0], runs, p),
    }
    for name, draw in cases.items():
        path = draw(tmp_path / f"{name}.png")
        assert path == tmp_path / f"{name}.png"
        assert_valid_png(path)


def test_make_report_names_a_missing_aggregate(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"runs\.parquet is missing"):
        make_report(tmp_path / "nothing", tmp_path / "report")
