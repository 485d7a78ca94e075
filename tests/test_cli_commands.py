"""`protolib report`, `theory` and `track`, the commands the pipeline's rules run: each
writes what its library function writes, prints one line per file, and refuses bad input
in one line (exit 2) before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protolib.cli import main
from protolib.results.report import make_report, report_files
from protolib.tracking import default_tracking_uri, sync_experiment
from tests.results.grid_fixture import grid_fixture  # noqa: F401 (the results_grid fixture)


def refused(capsys, command: str, argv: list[str], *needles: str) -> str:
    """Run ``argv``: exit status 2 and one stderr line naming ``command`` and each needle."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"protolib {command}: error: "), err
    assert all(needle in lines[0] for needle in needles), lines[0]
    assert out == ""
    return lines[0]


def written_lines(stdout: str) -> dict[str, Path]:
    return {k: Path(v) for k, v in (line.split(": ", 1) for line in stdout.splitlines())}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- report -------------------------------------------------------------------------------


def test_report_writes_what_make_report_writes(results_grid, tmp_path, capsys):
    aggregate = results_grid.aggregate_dir("grid_b")
    gram = [results_grid.runs["grid_b"][0].name]  # not the default choice (one per loss)
    for name, extra, gram_runs in (("default", [], None), ("gram", ["--gram-runs", *gram], gram)):
        out = tmp_path / name / "cli"
        assert main(["report", str(aggregate), "--out", str(out), *extra]) == 0
        printed = written_lines(capsys.readouterr().out)
        expected = make_report(aggregate, tmp_path / name / "lib", gram_runs=gram_runs)
        assert printed == {key: out / key for key in expected}
        assert sorted(printed.values()) == sorted(report_files(out))
        assert tree(out) == tree(tmp_path / name / "lib")
    assert tree(tmp_path / "default" / "cli") != tree(tmp_path / "gram" / "cli")


def test_report_refuses_bad_input_before_writing(results_grid, tmp_path, capsys):
    aggregate = str(results_grid.aggregate_dir("grid_a"))
    out = tmp_path / "report"
    refused(
        capsys,
        "report",
        ["report", aggregate, "--out", str(out), "--gram-runs", "ce-p0.0", "nope"],
        "--gram-runs",
        "'nope'",
        "known: ce-p0.0, supcon-p0.2",
    )
    refused(capsys, "report", ["report", str(tmp_path / "none"), "--out", str(out)], "not a folder")
    (tmp_path / "empty").mkdir()
    refused(
        capsys, "report", ["report", str(tmp_path / "empty"), "--out", str(out)], "runs.parquet"
    )
    (tmp_path / "file").write_text("")
    refused(capsys, "report", ["report", aggregate, "--out", str(tmp_path / "file")], "a file")
    assert not out.exists()
    refused(capsys, "report", ["report", aggregate], "--out")  # argparse's own, in one line


# -- theory -------------------------------------------------------------------------------


# Its one real run is in tests/theory/test_ufm.py, which compares what it computed with that
# module's own runs of the simulations (and so needs no third run).


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--threads", "0"], ["--threads must be an integer in 1..", "got 0"]),
        (["--seed", "-1"], ["--seed must be an integer in 0..", "got -1"]),
        (["--seed", "x"], ["--seed", "invalid int value: 'x'"]),
    ],
)
def test_theory_refuses_bad_input_before_writing(tmp_path, capsys, args, needles):
    out = tmp_path / "theory"
    refused(capsys, "theory", ["theory", "--out", str(out), *args], *needles)
    assert not out.exists()


def test_theory_refuses_an_out_folder_it_cannot_create(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "theory"
    refused(capsys, "theory", ["theory", "--out", str(target)], "cannot be created", "is a file")


# -- track --------------------------------------------------------------------------------


def test_track_syncs_what_sync_experiment_syncs(results_grid, tmp_path, capsys):
    """The command's sync, re-done by the library with the same arguments, finds every
    run unchanged: the command logged exactly what the library logs."""
    aggregate = results_grid.aggregate_dir("grid_a")
    run_dirs = {d.name: d for d in results_grid.runs["grid_a"]}
    artifact = tmp_path / "plots" / "note.md"
    artifact.parent.mkdir()
    artifact.write_text("a plot would be here\n")
    results, marker = tmp_path / "results", tmp_path / "results" / "grid_a" / "tracking.json"
    argv = ["track", str(aggregate), "--experiment", "grid_a", "--results", str(results)]
    argv += ["--marker", str(marker), "--artifact", str(artifact)]
    argv += [f"--run-dir={run_id}={path}" for run_id, path in run_dirs.items()]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"created": 2, "updated": 0, "unchanged": 0}
    assert lines[1:] == [f"marker: {marker}"]
    first = json.loads(marker.read_text())
    again = sync_experiment(
        aggregate,
        experiment="grid_a",
        results=results,
        run_dirs=run_dirs,
        artifacts=[artifact],
        marker=tmp_path / "library.json",
    )
    assert again == {"created": 0, "updated": 0, "unchanged": 2}
    second = json.loads((tmp_path / "library.json").read_text())
    assert {**first, **again} == second
    assert first["tracking_uri"] == default_tracking_uri(results)


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--run-dir", "ce-p0.0"], ["--run-dir expects RUN_ID=PATH, got 'ce-p0.0'"]),
        (["--run-dir", "x=a", "--run-dir", "x=b"], ["--run-dir x is given twice"]),
        (["--run-dir", "nope=somewhere"], ["--run-dir nope: not a run of"]),
        (["--artifact", "missing.png"], ["artifact missing.png does not exist"]),
    ],
)
def test_track_refuses_bad_input_before_writing(results_grid, tmp_path, capsys, extra, needles):
    results = tmp_path / "results"
    argv = ["track", str(results_grid.aggregate_dir("grid_a")), "--experiment", "grid_a"]
    argv += ["--results", str(results), "--marker", str(results / "tracking.json"), *extra]
    refused(capsys, "track", argv, *needles)
    assert not results.exists()
