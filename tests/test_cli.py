"""The `protolib` command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "protolib.cli", *args], capture_output=True, text=True, check=False
    )


def test_list_shows_registries_and_needs():
    result = run("list", "-v")
    assert result.returncode == 0, result.stderr
    assert "losses: bcl, ce, ce_fix, supcon, supcon_limit, supcon_limit_paper" in result.stdout
    assert (
        "geometries: etf, from_gram, majority_collapse, minority_angles, orthonormal"
        in result.stdout
    )
    assert "ce_fix               head=fixed_linear" in result.stdout


def test_bad_family_is_one_clear_error():
    result = run("list", "lossses")
    assert result.returncode == 2
    assert "invalid choice: 'lossses'" in result.stderr
