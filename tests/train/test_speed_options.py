"""The speed options on the CPU (README, "Speed on a GPU"): ``sgd_impl`` and ``compile``
honoured or refused in one line; nothing read back from the device inside the training
steps; the divergence check where it was; the device-time field null on the CPU; and a
default training run that never imports ``torch._dynamo``. The CUDA side is in
``test_speed_cuda.py``; compiling on the CPU in ``test_compile.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from protolib import LOSSES
from protolib.cli import main as cli_main
from protolib.train import RunConfig, prepare, train_run
from protolib.train.loop import DIVERGENCE_CHECK_EVERY, Loop
from protolib.train.watch import DeviceTimer, FiniteWatch
from tests.conftest import tiny_run

#: operators whose result the host must wait for on CUDA: a value read back (``.item()``,
#: ``bool()``, ``float()``) or an output whose size depends on the data
READ_BACKS = {
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::item",
    "aten::equal",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
}


class OperatorLog(TorchDispatchMode):
    """Every ATen operator called while active (forward, backward and optimiser)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    @property
    def read_backs(self) -> set[str]:
        return set(self.names) & READ_BACKS


def loss_keys(name: str) -> dict:
    """Run-config keys that exercise loss ``name`` fully (prototypes, two views)."""
    if name == "composite":
        parts = {"bcl": {}, "ce_la": {"weight": 0.5}}
        return {"loss_options": {"parts": parts}, "n_w": 2, "projector": "mlp", "views": 2}
    keys: dict = {"model_options": {"widths": [16], "out_dim": 16}}  # d >= K - 1
    if LOSSES.get(name).needs.prototypes == "optional":
        keys.update(n_w=2, views=2)
    return keys


def loop_of(tmp_path, **keys) -> Loop:
    """A prepared run's loop whose first evaluation is far away."""
    config = tiny_run(threads=1, iterations=1000, eval_every=1000, **keys)
    return Loop(prepare(RunConfig.from_dict(config)), tmp_path / "run", progress=False)


@pytest.mark.parametrize("loss", LOSSES.names())
def test_training_steps_read_nothing_back_from_the_device(tmp_path, loss):
    """Between the checks nothing waits for the device, for every loss, with augmentation
    and batch binding; what a step runs on CUDA is what it runs here, so an operator that
    reads back here would stall the GPU there."""
    augment = {"crop_padding": 2, "flip": True, "binding": 1}
    loop = loop_of(tmp_path, loss=loss, **augment, **loss_keys(loss))
    with OperatorLog() as log:
        for _ in range(3):
            loop._advance()
    assert loop.step == 3 and loop.status == "running"
    assert any(name.endswith("_backward") for name in log.names)  # the log sees backward
    assert any(name.startswith("aten::_foreach_") for name in log.names)  # and the update
    assert not log.read_backs, log.read_backs


def test_blockwise_contrastive_steps_read_nothing_back(tmp_path):
    """The blockwise path (MATH.md §1.10; 'auto' from 1 024 members, so every step of the
    prototype preset) must not read back either."""
    loop = loop_of(
        tmp_path, loss="bcl", **{**loss_keys("bcl"), "loss_options": {"blockwise": True}}
    )
    loop._advance()
    with OperatorLog() as log:
        loop._advance()
    assert not log.read_backs, log.read_backs


def test_the_operator_log_sees_a_read_back(tmp_path):
    """The log can fail: the check at an evaluation reads the running loss back."""
    loop = loop_of(tmp_path)
    loop._advance()
    with OperatorLog() as log:
        assert loop.watch.now(loop.running["loss"]) is True
    assert log.read_backs == {"aten::_local_scalar_dense"}


def test_divergence_is_found_at_the_same_step_as_before(tmp_path):
    """A NaN run stops at the first check after its loss left the reals, as before the
    checks stopped waiting for the device: step 50 (DIVERGENCE_CHECK_EVERY) on the CPU,
    before any evaluation."""
    config = tiny_run(threads=1, lr=1e30, iterations=200, eval_every=100)
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["status"] == "diverged"
    assert summary["iterations"] == DIVERGENCE_CHECK_EVERY == 50
    assert pd.read_parquet(tmp_path / "run" / "metrics.parquet").empty


def test_finite_watch_on_the_cpu_answers_for_the_value_it_is_given():
    watch = FiniteWatch(torch.device("cpu"))
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert watch.post(one) and not watch.post(nan) and watch.post(None)
    assert not watch.post(torch.tensor(float("inf")))
    assert watch.now(one) and not watch.now(nan) and watch.now(None)


def test_device_timer_counts_only_runs_timed_throughout():
    """Resumed on CUDA: the saved seconds continue; a checkpoint without them (a CPU
    attempt, an older checkpoint) makes the total unknown. On the CPU: always null."""
    cuda = torch.device("cuda")  # naming CUDA touches no GPU until a step is timed

    def resumed(device: torch.device, saved: float | None, step: int) -> float | None:
        timer = DeviceTimer(device)
        timer.resume(saved, step)
        return timer.seconds

    assert resumed(cuda, 12.5, 10) == 12.5
    assert resumed(cuda, None, 10) is None
    assert resumed(cuda, None, 0) == 0.0
    assert resumed(torch.device("cpu"), 12.5, 10) is None


@pytest.fixture(scope="module")
def impl_runs(tmp_path_factory) -> dict[str, tuple[dict, pd.DataFrame]]:
    """One tiny run per sgd_impl: its summary and metrics."""
    root = tmp_path_factory.mktemp("sgd_impl")
    runs = {}
    for impl in ("auto", "loop", "foreach", "fused"):
        summary = train_run(tiny_run(threads=1, sgd_impl=impl), root / impl, progress=False)
        runs[impl] = summary, pd.read_parquet(root / impl / "metrics.parquet")
    return runs


def test_sgd_impl_is_honoured(impl_runs):
    """The optimiser uses the kernels asked for ('auto' is foreach on the CPU), each run
    records them; loop and foreach train bit for bit alike, fused to round-off."""
    expected = {"auto": "foreach", "loop": "loop", "foreach": "foreach", "fused": "fused"}
    for impl, kernels in expected.items():
        summary, _ = impl_runs[impl]
        assert summary["attempts"][-1]["sgd_impl"] == kernels, impl
        assert summary["attempts"][-1]["compile"] == "eager", impl
        optimizer = prepare(RunConfig.from_dict(tiny_run(sgd_impl=impl))).optimizer
        flags = (optimizer.defaults["foreach"], optimizer.defaults["fused"])
        assert flags == {"loop": (False, None), "foreach": (True, None)}.get(
            kernels, (None, True)
        ), impl
    loop = impl_runs["loop"][1]
    pd.testing.assert_frame_equal(impl_runs["foreach"][1], loop, check_exact=True)
    pd.testing.assert_frame_equal(impl_runs["auto"][1], loop, check_exact=True)
    fused = impl_runs["fused"][1]
    losses = fused.metric == "loss"
    assert list(fused.step[losses]) == [2, 4]
    pd.testing.assert_series_equal(fused.value[losses], loop.value[losses], rtol=1e-5)


def test_device_seconds_are_null_on_the_cpu(impl_runs):
    summary, _ = impl_runs["loop"]
    assert "train_seconds_device" in summary and summary["train_seconds_device"] is None
    assert summary["train_seconds"] > 0


BAD = [
    ("sgd_impl=fast", "sgd_impl must be one of auto, loop, foreach, fused; got 'fast'"),
    ("compile=yes", "compile must be one of auto, model, eager; got 'yes'"),
    ("compile=true", "compile must be one of auto, model, eager, got True"),
    (
        "compile=model",
        "compile 'model' on cpu needs a C++ compiler ('no-such-compiler' is not on PATH; "
        "set CXX), which this machine lacks; allowed here: compile 'eager', or 'auto' "
        "(compiles on CUDA when it can)",
    ),
]


@pytest.mark.parametrize(("setting", "message"), BAD)
def test_bad_speed_option_is_refused_in_one_line_and_nothing_written(
    tmp_path, capsys, monkeypatch, setting, message
):
    monkeypatch.setenv("CXX", "no-such-compiler")  # the C++ compiler Inductor would use
    out = tmp_path / "run"
    code = cli_main(["train", "--out", str(out), "--no-progress", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"protolib train: error: {message}\n"
    assert not out.exists()


def test_a_default_run_never_imports_dynamo(tmp_path):
    """compile 'auto' on the CPU trains eagerly: neither torch._dynamo (about a second per
    process) nor Inductor is imported."""
    config = tiny_run(threads=1, iterations=2)
    probe = textwrap.dedent(
        f"""
        import json, sys
        from protolib.train import train_run
        summary = train_run(json.loads({json.dumps(json.dumps(config))}), sys.argv[1],
                            progress=False)
        print(summary["attempts"][-1]["compile"])
        print(sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[:2] == ["eager", "[]"]
