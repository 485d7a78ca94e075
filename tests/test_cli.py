"""The `protolib` command, run as a user runs it."""

from __future__ import annotations

import sys

from protolib.cli import main
from tests import launcher

LOSSES = {"bcl", "ce", "ce_fix", "supcon", "supcon_limit", "supcon_limit_paper"}
GEOMETRIES = {"etf", "from_gram", "majority_collapse", "minority_angles", "orthonormal"}


def run(*args):
    return launcher.run([sys.executable, "-m", "protolib.cli", *args])


def listed(stdout: str) -> dict[str, list[str]]:
    """``family: a, b, c`` lines as ``{family: [a, b, c]}``."""
    families = {}
    for line in stdout.splitlines():
        if not line.startswith(" "):
            family, _, names = line.partition(": ")
            families[family] = names.split(", ")
    return families


def test_list_shows_registries_and_needs():
    result = run("list", "-v")
    assert result.returncode == 0, result.stderr
    families = listed(result.stdout)
    assert set(families["losses"]) >= LOSSES
    assert set(families["geometries"]) >= GEOMETRIES
    assert {"mlp", "cnn_small"} <= set(families["models"])
    assert {"digits", "synthetic"} <= set(families["datasets"])
    assert all(names == sorted(names) for names in families.values())
    assert "ce_fix               head=fixed_linear" in result.stdout


def test_bad_family_is_one_clear_error():
    result = run("list", "lossses")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("protolib list: error: ")
    assert "invalid choice: 'lossses'" in result.stderr


def test_train_needs_exactly_one_of_out_and_batch(tmp_path, capsys):
    """--out is no longer required (--batch is the other way); neither, or both, is
    refused in one line before anything is written."""
    batch = tmp_path / "batch.json"
    batch.write_text('{"runs": []}')
    for args in ([], ["--out", str(tmp_path / "run"), "--batch", str(batch)]):
        assert main(["train", "--no-progress", *args]) == 2
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("protolib train: error: "), lines
        assert "--out" in lines[0] and "--batch" in lines[0] and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.json"]
