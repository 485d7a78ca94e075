"""protolib's SGD is torch.optim.SGD bit for bit, without importing torch._dynamo, on each
of torch's kernels (sgd_impl: loop, foreach, fused)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from protolib.train.config import ConfigError
from protolib.train.sgd import SGD, SGD_FLAGS, sgd_kernels

OPTIONS = [
    {"momentum": 0.9, "weight_decay": 1e-4},
    {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    {"momentum": 0.0, "weight_decay": 0.0},
    {"momentum": 0.9, "weight_decay": 1e-4, "foreach": False},
    {"momentum": 0.9, "weight_decay": 1e-4, "dampening": 0.1},
    {"momentum": 0.9, "weight_decay": 1e-4, "foreach": True},
    {"momentum": 0.9, "weight_decay": 1e-4, "fused": True},
    {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "fused": True},
]


def _train(optimizer_class: type, options: dict, steps: int, state: dict | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    optimizer = optimizer_class(model.parameters(), lr=0.1, **options)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 ** (i // 2))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    generator = torch.Generator().manual_seed(1)
    done = 0 if state is None else state["schedule"]["last_epoch"]
    for step in range(done + steps):
        x = torch.randn(16, 5, generator=generator)
        y = torch.randint(0, 3, (16,), generator=generator)
        if step < done:  # the batches the saved run has seen
            continue
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        schedule.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_updates_and_state_equal_torch_sgd_bit_for_bit(options):
    ours, theirs = _train(SGD, options, 6), _train(torch.optim.SGD, options, 6)
    assert _equal(ours, theirs)
    # each one's state dicts continue the other's run, bit for bit
    assert _equal(_train(SGD, options, 3, state=_train(torch.optim.SGD, options, 3)), theirs)
    assert _equal(_train(torch.optim.SGD, options, 3, state=_train(SGD, options, 3)), ours)


@pytest.mark.parametrize("options", [o for o in OPTIONS if not {"foreach", "fused"} & set(o)])
def test_loop_and_foreach_bit_identical_on_the_cpu_and_fused_to_round_off(options):
    """What sgd_impl 'auto' relies on: foreach on the CPU updates exactly as the loop
    (torch's default there); fused rounds once per update, the same to float32 round-off."""
    runs = {kernels: _train(SGD, {**options, **flags}, 6) for kernels, flags in SGD_FLAGS.items()}
    loop = runs["loop"]
    assert _equal(runs["foreach"]["model"], loop["model"])
    assert _equal(runs["foreach"]["optimizer"]["state"], loop["optimizer"]["state"])
    for name, value in loop["model"].items():
        torch.testing.assert_close(runs["fused"]["model"][name], value, rtol=1e-6, atol=1e-7)
    assert runs["fused"]["optimizer"]["param_groups"][0]["fused"] is True


def test_sgd_impl_resolves_per_device_and_refuses_a_device_without_fused_kernels():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # naming CUDA touches no GPU
    assert (sgd_kernels("auto", cpu), sgd_kernels("auto", cuda)) == ("foreach", "fused")
    assert [sgd_kernels(k, cpu) for k in SGD_FLAGS] == list(SGD_FLAGS)
    with pytest.raises(ConfigError, match=r"^sgd_impl 'fused' needs .* on meta; allowed: auto"):
        sgd_kernels("fused", torch.device("meta"))


def test_differs_when_the_update_differs():
    """The comparison can fail: another momentum gives other parameters."""
    assert not _equal(_train(SGD, {"momentum": 0.8}, 3), _train(torch.optim.SGD, {}, 3))


def test_no_dynamo_import_while_torch_sgd_imports_it():
    probe = textwrap.dedent(
        """
        import sys, torch
        from protolib.train.sgd import SGD
        p = torch.nn.Parameter(torch.ones(3))
        for flags in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4, **flags)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
            for _ in range(2):
                opt.zero_grad(); (p ** 2).sum().backward(); opt.step(); sched.step()
            opt.load_state_dict(opt.state_dict()); sched.load_state_dict(sched.state_dict())
        print("ours", "torch._dynamo" in sys.modules)
        torch.optim.SGD([p], lr=0.1).step()
        print("torch", "torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["ours False", "torch True"]
