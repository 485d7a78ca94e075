"""Real run directories (tiny ``train_run``s) in two experiments, aggregated per experiment.

Test modules import the fixture (``from tests.results.grid_fixture import grid_fixture``)
and ask for ``results_grid``; it is built once per session, however many modules use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from protolib.results.aggregate import aggregate
from protolib.train import train_run

TINY = {"iterations": 20, "eval_every": 10, "probe_iterations": 5, "threads": 1}
# (experiment, loss, label corruption): both losses and both corruptions over the two
GRID = [
    ("grid_a", "ce", 0.0),
    ("grid_a", "supcon", 0.2),
    ("grid_b", "ce", 0.2),
    ("grid_b", "supcon", 0.0),
]


@dataclass
class Results:
    root: Path  # the results folder
    runs: dict[str, list[Path]]  # experiment → run directories, by run id

    def aggregate_dir(self, experiment: str) -> Path:
        return self.root / experiment / "aggregate"


_built: list[Results] = []


def _build(root: Path) -> Results:
    runs: dict[str, list[Path]] = {}
    for experiment, loss, corruption in GRID:
        run_id = f"{loss}-p{corruption}"
        out = root / experiment / "runs" / run_id
        config = {"run_id": run_id, "experiment": experiment, "loss": loss, **TINY}
        train_run({**config, "label_corruption": corruption}, out, progress=False)
        runs.setdefault(experiment, []).append(out)
    for experiment, dirs in runs.items():
        dirs.sort(key=lambda d: d.name)
        aggregate(list(reversed(dirs)), root / experiment / "aggregate")
    return Results(root=root, runs=runs)


@pytest.fixture(scope="session", name="results_grid")
def grid_fixture(tmp_path_factory) -> Results:
    if not _built:
        _built.append(_build(tmp_path_factory.mktemp("grid") / "results"))
    return _built[0]
