"""The speed options on CUDA (skipped without it): training steps that never make the
host wait for the GPU (``torch.cuda.set_sync_debug_mode("error")`` turns any wait into
an error naming its cause), the loader's non-blocking copies delivering the right data,
compiled training equal to eager, the SGD kernels agreeing, CUDA-event timing in the
summary, and the divergence check one check late. One to two minutes on one GPU, most
of it compiling (an estimate: not yet run on a GPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from protolib.data import Augment, DeviceLoader
from protolib.train import RunConfig, prepare, train_run
from protolib.train.compilation import missing_toolchain
from protolib.train.loop import DIVERGENCE_CHECK_EVERY, Loop
from protolib.train.sgd import SGD, SGD_FLAGS
from protolib.train.watch import FiniteWatch
from tests.conftest import tiny_run
from tests.train.test_speed_options import loss_keys

pytestmark = pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)

#: a small convolutional run on CUDA: bf16 autocast and channels-last (the defaults) apply
CNN = {"model": "cnn_small", "model_options": {"channels": [8, 16], "out_dim": 16}}
AUGMENT = {"crop_padding": 2, "flip": True, "binding": 1}


@contextmanager
def host_never_waits() -> Iterator[None]:
    """Any CUDA call inside that makes the host wait for the device raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def cuda_loop(tmp_path, **keys) -> Loop:
    """A prepared CUDA run's loop whose first evaluation is far away."""
    config = tiny_run(**{**CNN, "device": "cuda", "iterations": 1000, "eval_every": 1000, **keys})
    return Loop(prepare(RunConfig.from_dict(config)), tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    ("loss", "compile_mode"),
    [
        ("ce", "eager"),
        ("ce_la", "eager"),
        ("supcon", "eager"),
        ("composite", "eager"),
        ("ce", "model"),
        ("supcon", "model"),
    ],
)
def test_training_steps_never_wait_for_the_gpu(tmp_path, loss, compile_mode):
    """Two checks' worth of steps (the asynchronous divergence checks included) after a
    warm-up (compilation, cuDNN and the optimiser's lazy state)."""
    keys = {**loss_keys(loss), "model_options": CNN["model_options"]}
    loop = cuda_loop(tmp_path, loss=loss, compile=compile_mode, **AUGMENT, **keys)
    assert loop.prep.autocast and loop.prep.channels_last and loop.prep.sgd_impl == "fused"
    for _ in range(2):
        loop._advance()
    with host_never_waits():
        for _ in range(2 * DIVERGENCE_CHECK_EVERY):
            loop._advance()
    torch.cuda.synchronize()
    assert loop.status == "running" and loop.step == 2 + 2 * DIVERGENCE_CHECK_EVERY
    assert loop.watch.waits == 0  # each check's flag had arrived when it was read
    assert torch.isfinite(loop.running["loss"])


def test_blockwise_contrastive_steps_never_wait_for_the_gpu(tmp_path):
    keys = {**loss_keys("bcl"), **CNN, "loss_options": {"blockwise": True}}
    loop = cuda_loop(tmp_path, loss="bcl", compile="eager", **AUGMENT, **keys)
    loop._advance()
    with host_never_waits():
        for _ in range(3):
            loop._advance()


def test_the_sync_check_catches_a_wait():
    """The check can fail: reading a device value back inside it raises."""
    value = torch.ones((), device="cuda")
    with pytest.raises(RuntimeError), host_never_waits():
        bool(value)


def test_loader_copies_without_waiting_and_delivers_the_split():
    """The split reaches the GPU through pinned memory without the host waiting, and what
    the GPU loader serves equals the CPU loader's (a copy read before it landed would
    not)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8192, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (8192,), generator=generator)
    keys = {"batch_size": 256, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}
    with host_never_waits():
        loader = DeviceLoader(
            images,
            labels,
            device="cuda",
            sampling="replacement",
            views=2,
            augment=Augment(crop_padding=4, flip=True),
            bound=torch.arange(10),
            **keys,
        )
        x, y, idx = loader.next_batch()
        served = list(loader.iterate(1000))
    assert x.shape == (266, 2, 3, 32, 32) and x.is_cuda and y.is_cuda and idx.is_cuda
    reference = DeviceLoader(images, labels, device="cpu", **keys)
    for (gx, gy, _), (cx, cy, _) in zip(served, reference.iterate(1000), strict=True):
        torch.testing.assert_close(gx.cpu(), cx)
        assert torch.equal(gy.cpu(), cy)


def test_compiled_training_equals_eager_on_cuda(tmp_path):
    """Five float32 steps compiled (Inductor, Triton) and eager: the same losses and
    parameters to round-off (cuDNN and Triton sum in other orders)."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    results = {}
    for mode in ("eager", "model"):
        loop = cuda_loop(tmp_path / mode, compile=mode, amp=False, **AUGMENT)
        losses = []
        for _ in range(5):
            loop._train_step()
            losses.append(loop.running["loss"].item())
        results[mode] = losses, loop.prep.network.state_dict()
    assert counters["stats"]["unique_graphs"] > graphs  # the model run compiled
    (eager_losses, eager_state), (model_losses, model_state) = results["eager"], results["model"]
    assert model_losses == pytest.approx(eager_losses, rel=1e-4)
    assert model_state.keys() == eager_state.keys()
    for name, value in eager_state.items():
        torch.testing.assert_close(model_state[name], value, rtol=1e-3, atol=1e-4)


def test_sgd_kernels_agree_on_cuda():
    def trained(flags: dict) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        ).cuda()
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **flags)
        generator = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(10):
            x = torch.randn(64, 32, device="cuda", generator=generator)
            y = torch.randint(0, 10, (64,), device="cuda", generator=generator)
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    loop = trained(SGD_FLAGS["loop"])
    for kernels in ("foreach", "fused"):
        for ours, reference in zip(trained(SGD_FLAGS[kernels]), loop, strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_a_cuda_run_records_its_device_seconds_and_speed_options(tmp_path):
    config = tiny_run(device="cuda", iterations=40, eval_every=20, **CNN)
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["status"] == "completed" and summary["device_type"] == "cuda"
    attempt = summary["attempts"][-1]
    compiles = missing_toolchain("cuda") is None
    assert attempt["compile"] == ("model" if compiles else "eager")
    assert attempt["sgd_impl"] == "fused"
    device_seconds = summary["train_seconds_device"]
    assert isinstance(device_seconds, float)
    assert 0 < device_seconds < summary["wall_seconds"]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["train_seconds_device"] == device_seconds


def test_finite_watch_on_cuda_answers_one_post_late():
    watch = FiniteWatch(torch.device("cuda"))
    nan, one = torch.tensor(float("nan"), device="cuda"), torch.ones((), device="cuda")
    with host_never_waits():
        assert watch.post(nan)  # nothing posted before: finite so far
    torch.cuda.synchronize()  # as DIVERGENCE_CHECK_EVERY steps would
    with host_never_waits():
        assert not watch.post(one)  # the NaN, one post late, already on the host
    assert watch.waits == 0
    watch.post(nan)
    assert watch.now(one)  # now() answers for its value and forgets the posted NaN ...
    assert watch.post(one)  # ... so this post has nothing to report
    watch.now(one)
    torch.cuda._sleep(100_000_000)  # a device far behind the host: the next read waits
    assert watch.post(nan)
    assert not watch.post(one) and watch.waits == 1


def test_divergence_is_noticed_one_check_later_on_cuda(tmp_path):
    """The NaN run of the CPU test stops one check later on CUDA, never past an
    evaluation."""
    config = tiny_run(lr=1e30, iterations=400, eval_every=400, compile="eager", threads=1)
    cpu = train_run({**config, "device": "cpu"}, tmp_path / "cpu", progress=False)
    cuda = train_run({**config, "device": "cuda"}, tmp_path / "cuda", progress=False)
    assert cpu["status"] == cuda["status"] == "diverged"
    assert cpu["iterations"] == DIVERGENCE_CHECK_EVERY
    assert cuda["iterations"] == cpu["iterations"] + DIVERGENCE_CHECK_EVERY
    late = {**config, "eval_every": 60}  # the evaluation at 60 comes before the check at 100
    assert (
        train_run({**late, "device": "cuda"}, tmp_path / "late", progress=False)["iterations"] == 60
    )
