"""``compile: model`` on the CPU: the network really trains compiled (Inductor), to the
eager run's numbers within float32 round-off, with the eager run's checkpoint names.

Compiling costs seconds (about 5 s of CPU with Inductor's cache warm, 20 s cold), so the
module trains one compiled run and its eager twin, once."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from protolib.train import train_run
from tests.conftest import tiny_run

CONFIG = tiny_run(threads=1, iterations=6, eval_every=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{mode: (summary, metrics, final checkpoint)}`` for compile eager and model, and
    the number of graphs torch compiled while the compiled run trained."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor

    root = tmp_path_factory.mktemp("compile")
    out = {}
    graphs_before = counters["stats"]["unique_graphs"]
    # compile in this process: no pool of compiler workers outlives the module
    with inductor.patch(compile_threads=1):
        for mode in ("eager", "model"):
            summary = train_run({**CONFIG, "compile": mode}, root / mode, progress=False)
            metrics = pd.read_parquet(root / mode / "metrics.parquet")
            state = torch.load(root / mode / "checkpoint.pt", weights_only=True)
            out[mode] = summary, metrics, state
    yield out, counters["stats"]["unique_graphs"] - graphs_before
    torch._dynamo.reset()  # the compiled code and its guards, for the tests that follow


def test_compiled_run_compiles_and_records_it(runs):
    results, graphs = runs
    assert graphs >= 1  # the forward (and its backward) went through Dynamo and Inductor
    assert results["model"][0]["attempts"][-1]["compile"] == "model"
    assert results["eager"][0]["attempts"][-1]["compile"] == "eager"


def test_compiled_run_equals_eager_to_float32_round_off(runs):
    (eager, eager_metrics, eager_state), (model, model_metrics, model_state) = (
        runs[0]["eager"],
        runs[0]["model"],
    )
    assert model["status"] == eager["status"] == "completed"
    losses = eager_metrics.metric == "loss"
    assert list(eager_metrics.step[losses]) == [3, 6]
    pd.testing.assert_series_equal(
        model_metrics.value[losses], eager_metrics.value[losses], rtol=1e-5, atol=1e-6
    )
    # the same parameter names (the network's, not a compiled wrapper's) and values
    assert model_state["network"].keys() == eager_state["network"].keys()
    for name, value in eager_state["network"].items():
        torch.testing.assert_close(model_state["network"][name], value, rtol=1e-5, atol=1e-6)
    assert model["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=2e-3)
