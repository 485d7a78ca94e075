"""Results integrity: the run manifest, aggregate's checks of what it reads, read-only queries.

Real run directories (the session's tiny grid), damaged on copies; every refusal is one
line naming the file, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protolib.cli import main
from protolib.results.aggregate import AggregateError, aggregate
from protolib.results.manifest import RUN_FILES, quarantine, run_damage
from protolib.results.query import QueryError, query
from tests.results.grid_fixture import grid_fixture  # noqa: F401 (the results_grid fixture)

TABLES = ["runs.parquet", "metrics.parquet", "geometry.parquet", "gamma.parquet"]


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root``: relative path → (size, SHA-256 of the bytes)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).digest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def runs(results_grid, tmp_path) -> list[Path]:
    """Writable copies of grid_a's two run directories (ce-p0.0, supcon-p0.2)."""
    out = []
    for run_dir in results_grid.runs["grid_a"]:
        shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)
        out.append(tmp_path / "runs" / run_dir.name)
    return out


# -- the manifest ------------------------------------------------------------------------


def test_summary_manifest_lists_every_other_output_with_size_and_sha256(results_grid):
    for run_dir in results_grid.runs["grid_a"]:
        manifest = json.loads((run_dir / "summary.json").read_text())["manifest"]
        assert sorted(manifest) == sorted(RUN_FILES)
        for name, entry in manifest.items():
            data = (run_dir / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def damaged_runs(runs) -> dict[str, str]:
    """run directory → why it is damaged, for the damaged ones (the plan-time check)."""
    return {str(r): why for r in runs if (why := run_damage(r)) is not None}


def test_plan_time_check_finds_exactly_the_damaged_runs(runs):
    assert damaged_runs(runs) == {}
    with open(runs[0] / "metrics.parquet", "r+b") as handle:
        handle.truncate(100)
    (runs[1] / "checkpoint.pt").unlink()
    size = json.loads((runs[0] / "summary.json").read_text())["manifest"]["metrics.parquet"]
    assert damaged_runs(runs) == {
        str(runs[0]): f"{runs[0] / 'metrics.parquet'} is 100 bytes, but the run's manifest "
        f"says {size['size']}: the file was truncated or replaced",
        str(runs[1]): f"{runs[1] / 'checkpoint.pt'} is missing",
    }
    kept = quarantine(runs[0])
    assert kept.parent == runs[0] / ".corrupt"
    assert sorted(p.name for p in kept.iterdir()) == sorted(["summary.json", *RUN_FILES])
    assert not (runs[0] / "summary.json").exists()
    assert damaged_runs(runs[:1]) == {}  # no summary: unfinished, the pipeline reruns it


def test_a_corrupt_or_manifestless_summary_is_damaged(runs):
    (runs[0] / "summary.json").write_text('{"run_id": ')
    summary = json.loads((runs[1] / "summary.json").read_text())
    del summary["manifest"]
    (runs[1] / "summary.json").write_text(json.dumps(summary))
    found = damaged_runs(runs)
    assert found[str(runs[0])].startswith(f"{runs[0] / 'summary.json'} is not valid JSON")
    assert found[str(runs[1])].startswith(f"{runs[1] / 'summary.json'} has no manifest")


# -- aggregate verifies what it reads ----------------------------------------------------


def test_a_table_copied_from_another_run_is_refused_naming_what_it_holds(runs, tmp_path):
    shutil.copy2(runs[1] / "metrics.parquet", runs[0] / "metrics.parquet")
    with pytest.raises(AggregateError) as error:
        aggregate(runs, tmp_path / "agg")
    assert str(error.value) == (
        f"{runs[0] / 'metrics.parquet'} holds rows of run_id 'supcon-p0.2' in experiment "
        "'grid_a', expected only run_id 'ce-p0.0' in experiment 'grid_a' (from its "
        "summary.json): a table copied from another run?"
    )
    assert not (tmp_path / "agg").exists()


def test_a_run_directory_copied_under_another_name_is_refused(runs, tmp_path):
    clone = tmp_path / "runs" / "ce-p0.5"
    shutil.copytree(runs[0], clone)
    with pytest.raises(AggregateError) as error:
        aggregate([clone, runs[1]], tmp_path / "agg")
    assert str(error.value) == (
        f"{clone / 'summary.json'} holds run_id 'ce-p0.0', expected 'ce-p0.5' (the name of "
        "its run directory): a summary copied from another run?"
    )


def test_a_changed_byte_of_a_table_is_caught_by_its_checksum(runs, tmp_path):
    path = runs[1] / "gamma.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(AggregateError) as error:
        aggregate(runs, tmp_path / "agg")
    assert str(error.value).startswith(f"{path} has sha256 ")
    assert "but the run's manifest says" in str(error.value)
    assert not (tmp_path / "agg").exists()


def test_a_truncated_table_is_named_with_both_sizes(runs, tmp_path):
    path = runs[0] / "geometry.parquet"
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 10)
    with pytest.raises(AggregateError) as error:
        aggregate(runs, tmp_path / "agg")
    assert str(error.value) == (
        f"{path} is {size - 10} bytes, but the run's manifest says {size}: the file was "
        "truncated or replaced; retrain the run"
    )


def test_a_summary_without_manifest_is_refused(runs, tmp_path):
    path = runs[1] / "summary.json"
    summary = json.loads(path.read_text())
    del summary["manifest"]
    path.write_text(json.dumps(summary))
    with pytest.raises(AggregateError, match=f"^{path} has no manifest"):
        aggregate(runs, tmp_path / "agg")


def test_cli_aggregate_failure_is_one_line_and_creates_no_folder(runs, tmp_path, capsys):
    shutil.copy2(runs[1] / "gamma.parquet", runs[0] / "gamma.parquet")
    out = tmp_path / "new" / "agg"
    assert main(["aggregate", *map(str, runs), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"protolib aggregate: error: {runs[0] / 'gamma.parquet'} ")
    assert not (tmp_path / "new").exists()


def test_a_failed_aggregate_keeps_an_existing_out_folder_and_its_tables(runs, tmp_path):
    out = tmp_path / "agg"
    aggregate(runs, out)
    before = _tree(out)
    shutil.copy2(runs[1] / "metrics.parquet", runs[0] / "metrics.parquet")
    with pytest.raises(AggregateError):
        aggregate(runs, out)
    assert _tree(out) == before


# -- queries are read-only ---------------------------------------------------------------


@pytest.fixture(scope="module")
def results_copy(results_grid, tmp_path_factory) -> Path:
    """A copy of the grid's aggregates: a query that wrote could not spoil other tests'."""
    root = tmp_path_factory.mktemp("query") / "results"
    for experiment in results_grid.runs:
        shutil.copytree(results_grid.aggregate_dir(experiment), root / experiment / "aggregate")
    return root


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("COPY (SELECT 1 AS x) TO '{runs}' (FORMAT parquet)", "COPY"),
        ("COPY runs TO 'copied.csv'", "COPY"),
        ("ATTACH 'attached.duckdb' AS other", "ATTACH"),
        ("CREATE TABLE made AS SELECT * FROM runs", "CREATE"),
        ("INSERT INTO runs SELECT * FROM runs", "INSERT"),
        ("SELECT 1; COPY (SELECT 1) TO '{runs}'", "COPY"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO 'explained.csv'", "EXPLAIN COPY"),
        ("EXPORT DATABASE 'exported'", "EXPORT"),
        ("INSTALL httpfs", "LOAD"),
        ("SET enable_external_access = false", "SET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
    ],
)
def test_a_query_that_would_write_is_refused_and_changes_nothing(
    results_copy, tmp_path, monkeypatch, capsys, sql, kind
):
    monkeypatch.chdir(tmp_path)
    runs = results_copy / "grid_a" / "aggregate" / "runs.parquet"
    before, cwd_before = _tree(results_copy), _tree(tmp_path)
    assert main(["query", sql.format(runs=runs), "--results", str(results_copy)]) == 2
    captured = capsys.readouterr()
    article = "an" if kind[0] in "AEIOU" else "a"
    assert captured.err == (
        f"protolib query: error: only read-only queries are allowed; got {article} {kind} "
        "statement\n"
    )
    assert captured.out == ""
    assert _tree(results_copy) == before
    assert _tree(tmp_path) == cwd_before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM runs",
        "WITH r AS (SELECT * FROM runs) SELECT count(*) AS n FROM r",
        "FROM runs SELECT count(*) AS n",
        "DESCRIBE runs",
        "SUMMARIZE runs",
        "SHOW TABLES",
        "VALUES (1), (2)",
        "EXPLAIN SELECT * FROM metrics",
        "EXPLAIN ANALYZE SELECT count(*) FROM metrics",
    ],
)
def test_read_only_statements_still_run(results_copy, tmp_path, monkeypatch, sql):
    monkeypatch.chdir(tmp_path)
    before = _tree(results_copy)
    assert query(sql, results_copy).shape[0] > 0
    assert _tree(results_copy) == before
    assert not os.listdir(tmp_path)


def test_the_python_api_refuses_writes_too(results_copy):
    with pytest.raises(QueryError, match=r"^only read-only queries are allowed; got a COPY"):
        query("COPY runs TO 'x.parquet'", results_copy)
    count = query("SELECT count(*) AS n FROM runs", results_copy).n[0]
    assert count == sum(
        pq.read_metadata(results_copy / e / "aggregate" / "runs.parquet").num_rows
        for e in ("grid_a", "grid_b")
    )


def test_settings_are_locked_after_the_views_exist(results_copy):
    from protolib.results.query import connect

    connection = connect(results_copy)
    try:
        with pytest.raises(Exception, match="locked"):
            connection.execute("SET enable_external_access = true")
    finally:
        connection.close()
