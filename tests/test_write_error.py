"""``protolib.io.write_error``: the one line for an output that could not be written, from
real failed writes (a full device, a folder where a file is)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protolib.io import write_error, write_text

FULL = Path(os.devnull).with_name("full")  # Linux's always-full device


@pytest.mark.skipif(not FULL.exists(), reason="needs a full device (Linux)")
def test_a_full_disk_says_so_and_how_to_resume():
    with pytest.raises(OSError) as caught:
        FULL.write_text("x" * 100_000)
    assert write_error(caught.value, "results/x", "the report") == (
        "no space left on results/x (No space left on device); free some space, then "
        "re-run the same command to resume"
    )


def test_another_failure_names_what_and_where(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError) as caught:
        write_text(blocker / "report" / "table.csv", "x")
    error = caught.value
    line = write_error(error, tmp_path / "out", "the report")
    assert (
        line == f"cannot write the report {tmp_path / 'out'} ({error.filename}): {error.strerror}"
    )
    assert str(blocker) in line and "\n" not in line
