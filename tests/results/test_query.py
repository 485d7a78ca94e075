"""SQL over the aggregates of several experiments: views, narrowing, errors, the CLI."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protolib.cli import main
from protolib.results.query import (
    TABLES,
    QueryError,
    connect,
    format_table,
    load_metrics,
    load_runs,
    query,
)
from tests.results.grid_fixture import grid_fixture  # noqa: F401 (the results_grid fixture)


def _read(grid, name, experiments=("grid_a", "grid_b")):
    frames = [pd.read_parquet(grid.aggregate_dir(e) / f"{name}.parquet") for e in experiments]
    return pd.concat(frames, ignore_index=True)


def test_query_spans_every_experiment(results_grid):
    sql = "SELECT experiment, count(*) AS n FROM {} GROUP BY experiment ORDER BY experiment"
    for table in TABLES:
        got = query(sql.format(table), results_grid.root)
        reference = _read(results_grid, table).groupby("experiment").size()
        assert got.experiment.tolist() == ["grid_a", "grid_b"]
        assert got.n.tolist() == reference.tolist()
    runs = query("SELECT experiment, run_id FROM runs ORDER BY ALL", results_grid.root)
    assert runs.values.tolist() == [
        ["grid_a", "ce-p0.0"],
        ["grid_a", "supcon-p0.2"],
        ["grid_b", "ce-p0.2"],
        ["grid_b", "supcon-p0.0"],
    ]


def test_experiment_narrows_to_one(results_grid):
    got = query("SELECT DISTINCT experiment FROM metrics", results_grid.root, experiment="grid_b")
    assert got.experiment.tolist() == ["grid_b"]
    count = query("SELECT count(*) AS n FROM runs", results_grid.root, experiment="grid_a")
    assert count.n.tolist() == [2]


def test_load_runs_and_metrics_equal_the_parquet_files(results_grid):
    for experiment in results_grid.runs:
        pd.testing.assert_frame_equal(
            load_runs(results_grid.root, experiment), _read(results_grid, "runs", [experiment])
        )
        pd.testing.assert_frame_equal(
            load_metrics(results_grid.root, experiment),
            _read(results_grid, "metrics", [experiment]),
        )
    pd.testing.assert_frame_equal(load_runs(results_grid.root), _read(results_grid, "runs"))
    pd.testing.assert_frame_equal(load_metrics(results_grid.root), _read(results_grid, "metrics"))


def test_sql_answers_match_pandas(results_grid):
    got = query(
        "SELECT loss, avg(test_accuracy) AS acc, sum(n_corrupted) AS corrupted "
        "FROM runs GROUP BY loss ORDER BY loss",
        results_grid.root,
    )
    runs = _read(results_grid, "runs")
    reference = runs.groupby("loss").agg(acc=("test_accuracy", "mean"))
    assert got.acc.tolist() == pytest.approx(reference.acc.tolist(), rel=1e-15)
    assert got.corrupted.dtype == "int64"  # DuckDB's HUGEINT sum, as a plain integer
    assert got.corrupted.tolist() == runs.groupby("loss").n_corrupted.sum().tolist()


def test_a_table_no_experiment_has_is_an_empty_view_with_its_columns(results_grid, tmp_path):
    root = tmp_path / "o'brien" / "results"  # a quote in the path, too
    shutil.copytree(results_grid.root, root, ignore=shutil.ignore_patterns("runs"))
    for experiment in results_grid.runs:
        (root / experiment / "aggregate" / "gamma.parquet").unlink()
    (root / "grid_a" / "aggregate" / "geometry.parquet").unlink()
    connection = connect(root)
    try:
        described = connection.sql("DESCRIBE gamma").fetchall()
        assert [(name, kind) for name, kind, *_ in described] == [
            (f.name, {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE"}[str(f.type)])
            for f in TABLES["gamma"]
        ]
        assert connection.sql("SELECT count(*) FROM gamma").fetchall() == [(0,)]
        experiments = connection.sql("SELECT DISTINCT experiment FROM geometry").fetchall()
        assert experiments == [("grid_b",)]
    finally:
        connection.close()
    empty = query("SELECT * FROM gamma", root)
    assert empty.columns.tolist() == TABLES["gamma"].names
    assert len(empty) == 0


def test_no_aggregate_is_a_clear_error(tmp_path):
    with pytest.raises(QueryError) as error:
        connect(tmp_path / "results")
    assert str(error.value) == (
        f"no aggregated results under {str(tmp_path / 'results')!r} "
        "(run the pipeline first: snakemake --cores N all)"
    )


def test_unknown_experiment_lists_those_found(results_grid):
    with pytest.raises(QueryError, match=r"unknown experiment 'grid' .*; found: grid_a, grid_b"):
        load_runs(results_grid.root, experiment="grid")


def test_format_table_aligns_and_truncates():
    table = pa.table(
        {
            "name": ["a", "bb", None],
            "n": [1, 22, 333],
            "x": [1.0, 0.123456789, None],
            "ok": [True, False, None],
        }
    )
    assert format_table(table, max_rows=2) == "\n".join(
        [
            "name   n         x  ok",
            "----  --  --------  -----",
            "a      1       1.0  true",
            "bb    22  0.123457  false",
            "… 1 more row",
        ]
    )
    assert format_table(table.slice(0, 0)).endswith("(no rows)")


def test_cli_prints_an_aligned_table(results_grid, capsys):
    sql = "SELECT experiment, run_id, label_corruption, n_corrupted FROM runs ORDER BY ALL"
    assert main(["query", sql, "--results", str(results_grid.root), "--max-rows", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "run_id", "label_corruption", "n_corrupted"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["grid_a", "ce-p0.0", "0.0", "0"]
    assert lines[3].split() == ["grid_a", "supcon-p0.2", "0.2", "269"]
    assert lines[5] == "… 1 more row"
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns


def test_cli_experiment_narrows(results_grid, capsys):
    args = ["query", "SELECT DISTINCT experiment FROM runs", "--results", str(results_grid.root)]
    assert main([*args, "--experiment", "grid_a"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == ["grid_a"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_cli_writes_csv_and_parquet_that_read_back_equal(results_grid, tmp_path, capsys, kind):
    sql = "SELECT * FROM metrics ORDER BY experiment, run_id, step, split, metric"
    path = tmp_path / f"out.{kind}"
    assert main(["query", sql, "--results", str(results_grid.root), f"--{kind}", str(path)]) == 0
    expected = query(sql, results_grid.root)
    assert capsys.readouterr().out == f"wrote {len(expected)} rows to {path}\n"
    back = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, expected, check_exact=True)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["SELECT nope FROM runs"], 'Binder Error: Referenced column "nope" not found'),
        (["SELEC 1"], 'Parser Error: syntax error at or near "SELEC"'),
        (["SELECT 1", "--experiment", "grid_c"], "unknown experiment 'grid_c'"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(results_grid, capsys, args, message):
    assert main(["query", *args, "--results", str(results_grid.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"protolib query: error: {message}")
    assert captured.err.count("\n") == 1


def test_cli_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["query", "SELECT 1", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"protolib query: error: no aggregated results under {str(tmp_path)!r} "
        "(run the pipeline first: snakemake --cores N all)\n"
    )


def test_cli_parquet_output_keeps_column_types(results_grid, tmp_path, capsys):
    path = tmp_path / "runs.parquet"
    assert (
        main(
            [
                "query",
                "SELECT * FROM runs",
                "--results",
                str(results_grid.root),
                "--parquet",
                str(path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    schema = pq.read_schema(path)
    assert schema.names == TABLES["runs"].names
    assert [f.type for f in schema] == [f.type for f in TABLES["runs"]]
