"""Aggregation against independent references: the summaries and per-run files themselves."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protolib.cli import main
from protolib.results.aggregate import (
    RUN_TABLES,
    RUNS_SCHEMA,
    AggregateError,
    aggregate,
    concat_table,
    runs_table,
)
from protolib.results.schema import METRICS_SCHEMA
from tests.results.grid_fixture import grid_fixture  # noqa: F401 (the results_grid fixture)

ALL_TABLES = {"runs.parquet": RUNS_SCHEMA, **RUN_TABLES}


def test_runs_rows_equal_the_summaries_field_by_field(results_grid):
    for experiment, dirs in results_grid.runs.items():
        rows = pq.read_table(results_grid.aggregate_dir(experiment) / "runs.parquet").to_pylist()
        assert [row["run_id"] for row in rows] == sorted(d.name for d in dirs)
        for row, run_dir in zip(rows, dirs, strict=True):
            summary = json.loads((run_dir / "summary.json").read_text())
            assert list(row) == RUNS_SCHEMA.names
            for name, value in row.items():
                assert value == summary[name], (run_dir, name)
                assert type(value) is type(summary[name]), (run_dir, name)


@pytest.mark.parametrize("name", list(RUN_TABLES))
def test_run_tables_equal_the_per_run_files_concatenated(results_grid, name):
    for experiment, dirs in results_grid.runs.items():
        reference = pd.concat(
            [pd.read_parquet(d / name) for d in sorted(dirs, key=lambda d: d.name)],
            ignore_index=True,
        )
        assert len(reference) > 0
        aggregated = pd.read_parquet(results_grid.aggregate_dir(experiment) / name)
        pd.testing.assert_frame_equal(aggregated, reference, check_exact=True)
        assert set(aggregated.experiment) == {experiment}


@pytest.mark.parametrize("name", list(ALL_TABLES))
def test_schemas_are_the_declared_ones_with_their_metadata(results_grid, name):
    for experiment in results_grid.runs:
        schema = pq.read_schema(results_grid.aggregate_dir(experiment) / name)
        assert schema.equals(ALL_TABLES[name], check_metadata=True), schema
        assert schema.metadata[b"protolib.schema_version"] == b"2"


def test_output_does_not_depend_on_the_order_of_run_dirs(results_grid, tmp_path):
    dirs = results_grid.runs["grid_a"] + results_grid.runs["grid_b"]
    aggregate(dirs, tmp_path / "forward")
    aggregate(list(reversed(dirs)), tmp_path / "backward")
    for name in ALL_TABLES:
        forward = pq.read_table(tmp_path / "forward" / name)
        assert forward.equals(pq.read_table(tmp_path / "backward" / name), check_metadata=True)
        run_ids = forward.column("run_id").to_pylist()
        assert run_ids == sorted(run_ids)


def test_empty_grid_gives_empty_tables_with_the_schemas(tmp_path):
    written = aggregate([], tmp_path / "agg")
    assert sorted(written) == ["gamma", "geometry", "metrics", "runs"]
    for name, schema in ALL_TABLES.items():
        table = pq.read_table(tmp_path / "agg" / name)
        assert table.num_rows == 0
        assert table.schema.equals(schema, check_metadata=True)


@pytest.fixture
def copies(results_grid, tmp_path):
    """Writable copies of grid_a's run directories."""
    out = []
    for run_dir in results_grid.runs["grid_a"]:
        shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)
        out.append(tmp_path / "runs" / run_dir.name)
    return out


def test_missing_summary_names_the_file_and_writes_nothing(copies, tmp_path):
    (copies[1] / "summary.json").unlink()
    with pytest.raises(AggregateError) as error:
        aggregate(copies, tmp_path / "agg")
    assert str(error.value) == (
        f"{copies[1] / 'summary.json'} is missing: the run has not finished"
    )
    assert not (tmp_path / "agg").exists()
    with pytest.raises(AggregateError, match=r"summary\.json is missing"):
        runs_table(copies)


def test_missing_run_table_names_the_file(copies, tmp_path):
    (copies[0] / "gamma.parquet").unlink()
    with pytest.raises(AggregateError, match=f"{copies[0] / 'gamma.parquet'} is missing"):
        aggregate(copies, tmp_path / "agg")


def test_unreadable_summary_names_the_file(copies, tmp_path):
    (copies[0] / "summary.json").write_text('{"run_id": ')
    with pytest.raises(AggregateError, match=f"{copies[0] / 'summary.json'} is not valid JSON"):
        aggregate(copies, tmp_path / "agg")


def test_summary_value_of_the_wrong_type_names_file_and_field(copies):
    path = copies[1] / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "iterations": "twenty"}))
    with pytest.raises(
        AggregateError, match=r"summary.json: iterations is 'twenty', expected int64"
    ):
        runs_table(copies)


def test_a_run_id_twice_is_rejected(copies, tmp_path):
    with pytest.raises(
        AggregateError, match=r"run_id 'ce-p0\.0' of experiment 'grid_a' appears twice"
    ):
        aggregate([*copies, copies[0]], tmp_path / "agg")


def test_another_schema_version_is_rejected(copies, tmp_path):
    path = copies[0] / "metrics.parquet"
    table = pq.read_table(path)
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, b"protolib.schema_version": b"1"}),
        path,
    )
    with pytest.raises(AggregateError, match=r"protolib\.schema_version is '1', expected '2'"):
        concat_table([path], METRICS_SCHEMA)


def test_a_file_without_a_column_is_one_clear_error(copies):
    path = copies[1] / "metrics.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["value"]), path)
    paths = [d / "metrics.parquet" for d in copies]
    with pytest.raises(AggregateError, match=r"cannot concatenate the metrics tables: .*value"):
        concat_table(paths, METRICS_SCHEMA)


def test_cli_aggregate_prints_one_line_per_table(results_grid, tmp_path, capsys):
    dirs = [str(d) for d in results_grid.runs["grid_b"]]
    assert main(["aggregate", *dirs, "--out", str(tmp_path / "agg")]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = {name: pq.read_metadata(tmp_path / "agg" / name).num_rows for name in ALL_TABLES}
    assert lines == [
        f"wrote {rows} row{'s' if rows != 1 else ''} to {tmp_path / 'agg' / name}"
        for name, rows in expected.items()
    ]
    assert expected["runs.parquet"] == 2
    for name in ALL_TABLES:
        assert pq.read_table(tmp_path / "agg" / name).equals(
            pq.read_table(results_grid.aggregate_dir("grid_b") / name)
        )


def test_cli_aggregate_error_is_one_line_and_exit_2(copies, tmp_path, capsys):
    (copies[0] / "summary.json").unlink()
    assert main(["aggregate", *map(str, copies), "--out", str(tmp_path / "agg")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"protolib aggregate: error: {copies[0] / 'summary.json'} is missing: "
        "the run has not finished\n"
    )


def test_runs_table_types_are_exact(results_grid):
    table = runs_table(results_grid.runs["grid_a"])
    assert table.schema.equals(RUNS_SCHEMA, check_metadata=True)
    assert table.column("time_to_fit").type == pa.int64()
