"""The prepared GPU check (issue 15): one command, at most 8 minutes on one GPU, one JSON
and one log. Started by ``benchmarks/gpu_check.sh`` (which installs missing wheels);
``--cpu`` is the same check at tiny sizes on the CPU, run by the test suite.

    python benchmarks/gpu_check.py [--cpu] --out DIR

Steps, in order of value; each runs in its own process group under its own time box, and
the JSON (``DIR/gpu_check.json``) is rewritten after every step and every figure, so a
failed, slow or killed step still leaves the later steps and a complete JSON:

``cuda_tests``
    every test of the suite marked ``cuda`` (``pytest -m cuda``; on a GPU a skip is a
    failure: ``PROTOLIB_REQUIRE_CUDA=1``).
``resnet18_throughput``
    ResNet-18 (CIFAR) training on synthetic CIFAR-shaped uint8 images (bf16 autocast and
    channels-last on CUDA; eager and ``torch.compile``), fed by protolib's
    ``DeviceLoader`` and by a torchvision-style ``DataLoader`` with per-sample transforms
    (``num_workers`` = CPU count): images/s, and model FLOPs (counted with
    ``torch.utils.flop_counter``) as a fraction of the bf16 matmul peak measured here.
``supcon_blockwise``
    blockwise SupCon (MATH.md §1.10) at n = 65 536 and 262 144, d = 128: forward +
    backward seconds and peak memory (``benchmarks/supcon_scale.py``'s measurement),
    and blockwise against dense at a size where both fit.
``prototype_epoch``
    the prototype preset's run (``configs/prototypes.yaml``: ResNet-18 + projector,
    1 024 images × 2 views, SupCon) through ``protolib train`` on synthetic data of
    CIFAR-10's size for three epochs: the first (with compilation) and a steady one;
    then the implied GPU-hours of every preset (its runs from the pipeline's own
    planning, :func:`protolib.pipeline.plan`) at the measured cost per sample.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # protolib from this checkout; the sibling benchmarks

from protolib.io import write_json  # noqa: E402  (after the path set-up)

STEPS = ("cuda_tests", "resnet18_throughput", "supcon_blockwise", "prototype_epoch")
#: each step's time box in seconds, on a GPU and in the CPU dry run
BOXES = {
    "cuda": {
        "cuda_tests": 200,
        "resnet18_throughput": 100,
        "supcon_blockwise": 50,
        "prototype_epoch": 100,
    },
    "cpu": {
        "cuda_tests": 60,
        "resnet18_throughput": 60,
        "supcon_blockwise": 60,
        "prototype_epoch": 60,
    },
}
#: the whole check's budget (seconds): the issue's 8 minutes less start-up and wheels
BUDGET = {"cuda": 450, "cpu": 240}
MIN_BOX = 10  # with less of the budget left than this, a step is not started
#: the issue's reference figures: a CIFAR ResNet-18 forward pass per image, one H200
REFERENCE_FORWARD_GFLOP = 1.11
REFERENCE_H200_BF16_TFLOPS = 790.0
#: training images per class of the CIFAR datasets (not registry facts: the registry
#: knows training plus test images only)
CIFAR_CLASS_SIZES = {"cifar10": [5000] * 10, "cifar100": [500] * 100}
PRESETS = ("sc_vs_ce", "prototypes", "long_tail")
CIFAR_TEST_SIZE = 10_000
CUDA_MARK = re.compile(r"\bpytest\.mark\.cuda\b")
#: ``pytest -v``'s line for a finished test, and ``-rfE``'s line for a failed one
TEST_OUTCOME = re.compile(r"^(\S+::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?: |$)")
TEST_FAILURE = re.compile(r"^(FAILED|ERROR) \S+")


@dataclass(frozen=True)
class Sizes:
    """What the steps measure, on a GPU or in the CPU dry run."""

    batch: int  # ResNet-18 throughput batch
    image_size: int  # of its synthetic images (CIFAR's 32; less in the dry run)
    train_size: int  # synthetic training images of the throughput step
    warmup: int  # untimed steps
    steps: int  # timed training steps
    data_batches: int  # timed batches of the data pipelines alone
    matmul: tuple[int, ...]  # square matmul sizes for the peak
    matmul_repeats: int
    supcon_n: tuple[int, ...]  # blockwise SupCon sizes
    supcon_check_n: int  # blockwise against dense at this size
    compile: bool  # measure torch.compile too
    epoch_train_size: int  # synthetic training images (before the preset's imbalance)
    epoch_test_size: int
    epoch_image_size: int
    epoch_batch: int | None  # None: the preset's batch size
    resnet32_batch: int
    resnet32_steps: int


SIZES = {
    "cuda": Sizes(
        batch=512,
        image_size=32,
        train_size=25_600,
        warmup=3,
        steps=20,
        data_batches=20,
        matmul=(8192, 16384),
        matmul_repeats=20,
        supcon_n=(65_536, 262_144),
        supcon_check_n=16_384,
        compile=True,
        epoch_train_size=50_000,
        epoch_test_size=10_000,
        epoch_image_size=32,
        epoch_batch=None,
        resnet32_batch=256,
        resnet32_steps=20,
    ),
    "cpu": Sizes(
        batch=2,
        image_size=8,
        train_size=32,
        warmup=1,
        steps=1,
        data_batches=2,
        matmul=(512,),
        matmul_repeats=3,
        supcon_n=(512, 1024),
        supcon_check_n=256,
        compile=False,
        epoch_train_size=100,
        epoch_test_size=20,
        epoch_image_size=4,
        epoch_batch=16,
        resnet32_batch=4,
        resnet32_steps=1,
    ),
}


class Record:
    """A step's figures, rewritten to its result file (atomically) after each one, so a
    step killed by its time box keeps what it had measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"errors": {}}

    def set(self, key: str, value: Any) -> Any:
        self.data[key] = _finite(value)
        write_json(self.path, self.data)
        return value

    def attempt(self, key: str, measure: Callable[[], Any], *, keep: bool = True) -> Any:
        """``measure()``, recorded under ``key`` when ``keep``; an exception is recorded
        under ``errors[key]`` (and in the log) instead, and the step goes on."""
        try:
            value = measure()
            return self.set(key, value) if keep else value
        except Exception as error:  # a failed figure must not lose the others
            traceback.print_exc()
            self.data["errors"][key] = f"{type(error).__name__}: {error}"[:500]
            write_json(self.path, self.data)
            return None


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- the machine -----------------------------------------------------------------------


def machine(mode: str) -> dict[str, Any]:
    """GPU name and memory, driver, CUDA and torch versions, CPU count (what is known)."""
    facts: dict[str, Any] = {
        "mode": mode,
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    if mode == "cuda":  # the dry run does not import torch here (a second saved)
        try:
            import torch

            facts["torch"] = torch.__version__
            facts["cuda_runtime"] = torch.version.cuda
            facts["cuda_available"] = torch.cuda.is_available()
            if facts["cuda_available"]:
                props = torch.cuda.get_device_properties(0)
                facts["gpu"] = props.name
                facts["gpu_memory_gib"] = props.total_memory / 2**30
                facts["gpu_count"] = torch.cuda.device_count()
                facts["cudnn"] = torch.backends.cudnn.version()
        except Exception as error:
            facts["torch_error"] = f"{type(error).__name__}: {error}"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
        facts["driver"] = done.stdout.strip().splitlines()[0] if done.returncode == 0 else None
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torch", "torchvision", "numpy", "jsonschema"):
        try:
            facts.setdefault(name, version(name))
        except PackageNotFoundError:
            facts.setdefault(name, None)
    return facts


# -- helpers shared by the measuring steps ---------------------------------------------


def _with_checkout(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with this checkout first on ``PYTHONPATH`` (protolib is not installed
    on a bare GPU machine)."""
    paths = [str(ROOT), *(p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return dict(environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))


def _device(mode: str) -> Any:
    import torch

    return torch.device("cuda" if mode == "cuda" else "cpu")


def matmul_peak(device: Any, sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """The best matmul rate over ``sizes`` (bf16 on CUDA, float32 on the CPU), TFLOP/s."""
    import torch
    from throughput_resnet18 import Timer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        timer = Timer(device)
        with timer:
            for _ in range(repeats):
                a @ b
        rates[str(n)] = 2 * n**3 * repeats / timer.seconds / 1e12
        del a, b
    return {"dtype": str(dtype), "tflops_by_size": rates, "tflops": max(rates.values())}


def resnet18_flops(image_size: int = 32) -> dict[str, float]:
    """FLOPs of one image through the CIFAR ResNet-18 with a linear head, counted by
    ``torch.utils.flop_counter`` (matmuls and convolutions, 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from protolib.models import Network, build_backbone

    network = Network(
        build_backbone("resnet18_cifar", in_shape=(3, image_size, image_size)),
        num_classes=10,
        head="linear",
    ).to("meta")  # shapes only: nothing is computed
    x = torch.randn(2, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as forward:
        network(x)
    with FlopCounterMode(display=False) as both:
        network(x).logits.sum().backward()
    return {
        "forward_gflop": forward.get_total_flops() / 2 / 1e9,
        "train_gflop": both.get_total_flops() / 2 / 1e9,
    }


class Trainer:
    """One SGD step of a network with cross-entropy, as a run takes it (bf16 autocast
    and channels-last on CUDA, fused SGD there), eager or compiled."""

    def __init__(self, network: Any, device: Any, compiled: bool) -> None:
        import torch

        self.device, self.cuda = device, device.type == "cuda"
        self.network = network.to(device)
        if self.cuda:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.forward = self.network
        if compiled:
            self.forward = torch.compile(self.network, dynamic=False)  # as compile: model
        kernels = {"fused": True} if self.cuda else {"foreach": True}
        self.optimizer = torch.optim.SGD(
            self.network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, **kernels
        )

    def __call__(self, x: Any, y: Any) -> None:
        import torch
        import torch.nn.functional as F

        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            out = self.forward(x)
            logits = out.logits if hasattr(out, "logits") else out
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def training_rate(step: Trainer, batches: Any, sizes: Sizes, batch: int) -> float:
    """Images/s of ``sizes.steps`` training steps on ``batches`` after the warm-up."""
    import itertools

    from throughput_resnet18 import Timer

    for x, y in itertools.islice(batches, sizes.warmup):
        step(x, y)
    timer = Timer(step.device)
    with timer:
        for x, y in itertools.islice(batches, sizes.steps):
            step(x, y)
    return sizes.steps * batch / timer.seconds


def data_rate(batches: Any, device: Any, count: int, batch: int) -> float:
    """Images/s of the data pipeline alone (``count`` batches, after two)."""
    import itertools

    from throughput_resnet18 import Timer

    for _ in itertools.islice(batches, 2):
        pass
    timer = Timer(device)
    with timer:
        for _ in itertools.islice(batches, count):
            pass
    return count * batch / timer.seconds


# -- the steps ---------------------------------------------------------------------------


def step_cuda_tests(mode: str, sizes: Sizes, record: Record, out: Path) -> bool:
    """``pytest -m cuda`` over every test module that marks a test ``cuda``; each test's
    outcome is recorded as pytest reports it, so a time box keeps those already known."""
    tests = ROOT / "tests"
    files = sorted(
        str(p.relative_to(ROOT))
        for p in tests.rglob("test_*.py")
        if CUDA_MARK.search(p.read_text())
    )
    record.set("files", files)
    if not files:  # a broken selection, never a pass
        record.data["errors"]["files"] = "no test module marks a test pytest.mark.cuda"
        return False
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]
    command += ["-m", "cuda", "-v", "-rfE", *files]
    env = _with_checkout(os.environ)
    if mode == "cuda":
        env["PROTOLIB_REQUIRE_CUDA"] = "1"  # a skipped CUDA test fails the check on a GPU
    else:  # the dry run skips them, on a machine with a GPU too
        env["CUDA_VISIBLE_DEVICES"] = ""
    outcomes: dict[str, str] = {}
    failures: list[str] = []
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as pytest:
        assert pytest.stdout is not None
        for line in pytest.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if found := TEST_OUTCOME.match(line):
                outcomes[found[1]] = found[2].lower()
                record.set("outcomes", outcomes)
            elif found := TEST_FAILURE.match(line):
                failures.append(line.strip()[:500])
                record.set("failures", failures)
    record.set("pytest_exit", pytest.returncode)
    counts = {o: list(outcomes.values()).count(o) for o in sorted(set(outcomes.values()))}
    record.set("counts", counts)
    return pytest.returncode == 0


def step_resnet18_throughput(mode: str, sizes: Sizes, record: Record, out: Path) -> bool:
    """ResNet-18 training images/s: protolib's DeviceLoader against a per-sample
    DataLoader, eager and compiled; model FLOPs against the measured matmul peak."""
    import torch
    from throughput_resnet18 import pipelines_of

    from protolib.models import Network, build_backbone

    device = _device(mode)
    peak = record.attempt(
        "matmul_peak", lambda: matmul_peak(device, sizes.matmul, sizes.matmul_repeats)
    )
    record.attempt("flops_per_image", resnet18_flops)  # CIFAR's 32 × 32
    flops = record.attempt("flops_per_image_measured", lambda: resnet18_flops(sizes.image_size))
    record.set("batch", sizes.batch)
    workers = os.cpu_count() or 1
    record.set("dataloader_workers", workers)
    ours, baseline = pipelines_of(sizes.image_size, sizes.train_size, sizes.batch, device, workers)
    pipelines = {"device_loader": ours, "dataloader": baseline}
    data_only: dict[str, float] = {}
    for name, batches in pipelines.items():
        rate = record.attempt(
            f"data_only.{name}",
            lambda b=batches: data_rate(b, device, sizes.data_batches, sizes.batch),
            keep=False,
        )
        if rate is not None:
            data_only[name] = rate
    record.set("data_only_images_per_second", data_only)
    rates: dict[str, dict[str, float]] = {name: {} for name in pipelines}
    for how in ["eager", "compiled"] if sizes.compile else ["eager"]:
        torch.manual_seed(0)
        shape = (3, sizes.image_size, sizes.image_size)
        backbone = build_backbone("resnet18_cifar", in_shape=shape)
        trainer = Trainer(
            Network(backbone, num_classes=10, head="linear"), device, how == "compiled"
        )
        for name, batches in pipelines.items():
            rate = record.attempt(
                f"train.{name}.{how}",
                lambda t=trainer, b=batches: training_rate(t, b, sizes, sizes.batch),
                keep=False,
            )
            if rate is not None:
                rates[name][how] = rate
                record.set("images_per_second", rates)
                _derive(record, rates, peak, flops)  # kept should a later mode time out
        record.attempt(
            f"profile.{how}", lambda t=trainer: profile_steps(t, pipelines["device_loader"])
        )
    return not record.data["errors"]


def _derive(record: Record, rates: dict[str, dict[str, float]], peak: Any, flops: Any) -> None:
    """The speed-up over the DataLoader and the fraction of the matmul peak, from the
    best rate of each pipeline so far."""
    best = {name: max(by_mode.values(), default=None) for name, by_mode in rates.items()}
    if best["device_loader"] and best["dataloader"]:
        record.set("speedup_over_dataloader", best["device_loader"] / best["dataloader"])
    if peak and flops and best["device_loader"]:
        achieved = best["device_loader"] * flops["train_gflop"] * 1e9 / 1e12
        record.set("model_tflops", achieved)
        record.set("fraction_of_matmul_peak", achieved / peak["tflops"])


def profile_steps(step: Trainer, batches: Any, count: int = 3) -> dict[str, Any]:
    """What limits a training step: ``torch.profiler`` over ``count`` steps, the kernels
    (operators in the dry run, on the CPU) with the most time, and how busy the device
    was (their summed time over the wall time: well below 1, the host or kernel launches
    limit the step). The operators' table goes to the log."""
    import itertools

    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = step.device.type == "cuda"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        for x, y in itertools.islice(batches, count):
            step(x, y)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = profiler.key_averages()
    print(events.table(sort_by=key, row_limit=20), flush=True)
    if cuda:  # the kernels themselves (an operator's self device time repeats its kernels')
        from torch.autograd import DeviceType

        events = [e for e in events if e.device_type == DeviceType.CUDA]
    total = sum(getattr(e, key) for e in events)  # microseconds
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:10]
    return {
        "steps": count,
        "wall_ms_per_step": wall * 1e3 / count,
        "busy_fraction": total / 1e6 / wall,
        "top": [
            {
                "name": e.key,
                "ms_per_step": getattr(e, key) / 1e3 / count,
                "share": getattr(e, key) / total,
            }
            for e in top
        ],
    }


def _supcon_agreement(device: Any, n: int) -> dict[str, float]:
    """Blockwise against dense SupCon (MATH.md §1.10) on the same inputs: relative
    differences of the value and of the gradient."""
    import torch
    import torch.nn.functional as F

    from protolib.losses import supcon_loss

    g = torch.Generator(device=device).manual_seed(1)
    z = F.normalize(torch.randn(n, 128, generator=g, device=device), dim=1)
    y = torch.randint(0, 100, (n,), generator=g, device=device)
    results = {}
    for blockwise in (False, True):
        leaf = z.clone().requires_grad_(True)
        value = supcon_loss(leaf, y, tau=0.1, blockwise=blockwise)["loss"]
        value.backward()
        results[blockwise] = (value.detach(), leaf.grad)
    (dense, dense_grad), (block, block_grad) = results[False], results[True]
    return {
        "n": n,
        "value_dense": float(dense),
        "value_blockwise": float(block),
        "value_relative_difference": float((block - dense).abs() / dense.abs()),
        "gradient_relative_difference": float((block_grad - dense_grad).norm() / dense_grad.norm()),
    }


def step_supcon_blockwise(mode: str, sizes: Sizes, record: Record, out: Path) -> bool:
    """Blockwise SupCon forward + backward: seconds and peak memory at each size."""
    from supcon_scale import child as measure

    device = _device(mode)
    record.attempt("agreement", lambda: _supcon_agreement(device, sizes.supcon_check_n))
    for n in sizes.supcon_n:
        # supcon_scale's measurement: a warm-up at n = 256, then one timed forward +
        # backward at n; peak memory is torch.cuda.max_memory_allocated on CUDA
        result = record.attempt(f"n{n}", lambda n=n: measure("blockwise", n, device.type, 1))
        if result is not None:
            # random unit features (d = 128, τ = 0.1, many classes): the loss is near
            # log(n − 1) + 1/(2dτ²), the log-mean-exp of similarities of variance 1/d
            result["expected_near"] = math.log(n - 1) + 1 / (2 * 128 * 0.1**2)
            record.set(f"n{n}", result)
    return not record.data["errors"]


def _preset_run(sizes: Sizes) -> tuple[dict[str, Any], str]:
    """The prototype preset's first run (SupCon, n_w = 0, R = 10), planned as the
    pipeline plans it, on synthetic data of CIFAR-10's size; and who planned it."""
    import yaml

    path = ROOT / "configs" / "prototypes.yaml"
    try:
        from protolib.pipeline import plan, read_config_file

        planned = plan(
            read_config_file(path), ROOT / "workflow/schemas/config.schema.yaml", check_data=False
        )
        run, by = next(iter(planned.runs["step_imbalance"].values())), "protolib.pipeline.plan"
    except ImportError as error:  # jsonschema missing: the base and the first grid point
        spec = yaml.safe_load(path.read_text())["experiments"]["step_imbalance"]
        grid = {k: v[0] for k, v in spec["grid"].items()}
        run = {**spec["base"], **spec["losses"]["supcon"], **grid}
        by = f"the YAML ({error})"
    run = dict(run)
    run["dataset"] = "synthetic"
    run["dataset_options"] = {
        "num_classes": 10,
        "channels": 3,
        "image_size": sizes.epoch_image_size,
        "train_size": sizes.epoch_train_size,
        "test_size": sizes.epoch_test_size,
    }
    if sizes.epoch_batch is not None:  # the dry run
        run["batch_size"] = sizes.epoch_batch
        run["eval_batch_size"] = 4 * sizes.epoch_batch
        run["threads"] = 1
    return run, by


def _kept(run: dict[str, Any], class_sizes: list[int]) -> int:
    """Training images a run keeps after its imbalance (MATH.md §6)."""
    from protolib.data import kept_counts

    return sum(
        kept_counts(
            class_sizes,
            run.get("imbalance_ratio", 1),
            kind=run.get("imbalance", "step"),
            minority_fraction=run.get("minority_fraction", 0.5),
        )
    )


def run_steps(run: dict[str, Any], class_sizes: list[int]) -> tuple[int, int]:
    """``(training steps, members per step)`` of a run: iterations, or epochs × ⌊n/B⌋
    (the training loader drops the short tail); members = (B + binding·K) × views."""
    batch = int(run.get("batch_size", 256))
    epochs = run.get("epochs")
    if epochs is None:
        steps = int(run.get("iterations", 1000))
    else:
        steps = int(epochs) * (_kept(run, class_sizes) // batch)
    members = (batch + int(run.get("binding", 0)) * len(class_sizes)) * int(run.get("views", 1))
    return steps, members


def preset_hours(costs: dict[str, float]) -> dict[str, Any]:
    """Implied GPU-hours of each preset: Σ over its planned runs (the pipeline's own
    :func:`~protolib.pipeline.plan`) of steps × members per step × the measured seconds
    per member of its model (``costs``; an evaluation about once per epoch included, as
    the prototype preset evaluates; start-up and the final probe left out); beside it
    the estimate of ``protolib.resources`` from which the SLURM time limits come today."""
    from protolib import resources
    from protolib.pipeline import plan, read_config_file

    schema = ROOT / "workflow/schemas/config.schema.yaml"
    found: dict[str, Any] = {}
    for name in PRESETS:
        planned = plan(
            read_config_file(ROOT / "configs" / f"{name}.yaml"), schema, check_data=False
        )
        runs = [r for experiment in planned.runs.values() for r in experiment.values()]
        seconds, steps_total, unmeasured = 0.0, 0, set()
        for run in runs:
            steps, members = run_steps(run, CIFAR_CLASS_SIZES[run["dataset"]])
            steps_total += steps
            if run["model"] in costs:
                seconds += steps * members * costs[run["model"]]
            else:
                unmeasured.add(run["model"])
        found[name] = {
            "runs": len(runs),
            "steps": steps_total,
            "gpu_hours": None if unmeasured else seconds / 3600,
            "hours_per_run": None if unmeasured else seconds / 3600 / len(runs),
            "unmeasured_models": sorted(unmeasured),
            "resources_estimate_gpu_hours": sum(resources.training_seconds(r) for r in runs) / 3600,
        }
    return found


def _protolib_train(config: dict[str, Any], out: Path, timeout: float) -> tuple[int, str]:
    """``python -m protolib train`` on ``config`` into ``out``: exit status, standard error."""
    path = out.with_suffix(".json")
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "protolib", "train", "--config", str(path), "--out", str(out)]
    env = _with_checkout(os.environ)
    done = subprocess.run(
        [*command, "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    sys.stderr.write(done.stderr)
    return done.returncode, done.stderr


RATE = re.compile(r"\] step (\d+)/(\d+) .*\(([0-9.]+) it/s\)$")


def _resnet32_cost(device: Any, sizes: Sizes) -> float:
    """Seconds per image of ResNet-32 (CIFAR) training, eager (a bound from above: the
    long-tail preset's runs compile), on device-resident random batches."""
    import torch

    from protolib.models import Network, build_backbone

    torch.manual_seed(0)
    network = Network(
        build_backbone("resnet32_cifar", in_shape=(3, sizes.image_size, sizes.image_size)),
        num_classes=10,
        head="linear",
    )
    trainer = Trainer(network, device, compiled=False)
    x = torch.randn(sizes.resnet32_batch, 3, sizes.image_size, sizes.image_size, device=device)
    y = torch.randint(0, 10, (sizes.resnet32_batch,), device=device)
    batches = iter(lambda: (x, y), None)
    short = dataclasses.replace(sizes, steps=sizes.resnet32_steps)
    return 1 / training_rate(trainer, batches, short, sizes.resnet32_batch)


def step_prototype_epoch(mode: str, sizes: Sizes, record: Record, out: Path) -> bool:
    """Three epochs of the prototype preset's run through ``protolib train``, evaluated
    once per epoch (the preset evaluates every 25 steps, about an epoch at R = 10): the
    first epoch (compilation included) and the second (steady; the third holds the final
    evaluation's expensive metrics); the cost per member; the presets' GPU-hours."""
    device = _device(mode)
    run, by = _preset_run(sizes)
    record.set("planned_by", by)
    steps_per_epoch, members = run_steps({**run, "epochs": 1}, [sizes.epoch_train_size // 10] * 10)
    config = {**run, "epochs": 3, "eval_every": steps_per_epoch, "probe_iterations": 0}
    config.update(checkpoint_every=10**6, bound_batches=0, device=device.type)
    record.set("config", config)
    record.set("steps_per_epoch", steps_per_epoch)
    record.set("members_per_step", members)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        code, stderr = _protolib_train(config, Path(scratch) / "run", timeout=10**4)
        record.set("command_seconds", time.perf_counter() - start)
        record.set("exit_status", code)
        summary_path = Path(scratch) / "run" / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            keys = ("status", "wall_seconds", "train_seconds", "train_seconds_device", "device")
            record.set("summary", {k: summary.get(k) for k in keys})
    # the run's log: one line per evaluation, with the rate of the steps since the last
    # one, their evaluation included ("(12.3 it/s)")
    rates = [float(m[3]) for m in map(RATE.search, stderr.splitlines()) if m]
    costs: dict[str, float] = {}
    if len(rates) == 3:
        record.set("first_epoch_seconds", steps_per_epoch / rates[0])
        epoch = record.set("epoch_seconds", steps_per_epoch / rates[1])
        costs["resnet18_cifar"] = epoch / (steps_per_epoch * members)
    else:
        why = f"{len(rates)} evaluation lines in the run's log, not 3 (exit {code})"
        record.data["errors"]["epoch_seconds"] = why
    r32 = record.attempt("resnet32_seconds_per_image_eager", lambda: _resnet32_cost(device, sizes))
    if r32:
        costs["resnet32_cifar"] = r32
    record.set("seconds_per_member", costs)
    record.attempt("presets", lambda: preset_hours(costs))
    return code == 0 and not record.data["errors"]


STEP_FUNCTIONS: dict[str, Callable[[str, Sizes, Record, Path], bool]] = {
    "cuda_tests": step_cuda_tests,
    "resnet18_throughput": step_resnet18_throughput,
    "supcon_blockwise": step_supcon_blockwise,
    "prototype_epoch": step_prototype_epoch,
}


# -- the parent: every step in its own process group, under its time box ----------------


def _run_step(name: str, mode: str, out: Path, box: float, log: Any) -> dict[str, Any]:
    """Run step ``name`` in a child process (its own session, so that a time box ends
    everything it started); its figures, status and seconds."""
    result = out / f".{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--step", name, "--out", str(out), "--result", str(result)]
    if mode == "cpu":
        command.append("--cpu")
    print(f"== {name}: started, time box {box:.0f} s", file=log, flush=True)
    start = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = child.wait(timeout=box)
        status = "ok" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        code, status = None, "timeout"
    except (Stopped, KeyboardInterrupt):
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        code, status = None, "stopped"
    finally:
        # whatever the step left behind (DataLoader workers, a protolib train)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    seconds = time.perf_counter() - start
    figures = json.loads(result.read_text()) if result.exists() else {"errors": {}}
    result.unlink(missing_ok=True)
    print(f"== {name}: {status} after {seconds:.1f} s", file=log, flush=True)
    return {"status": status, "exit_status": code, "seconds": seconds, "time_box": box, **figures}


class Stopped(Exception):
    """SIGTERM reached the check (e.g. an outer ``timeout``): the running step is ended
    and the JSON written."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def orchestrate(mode: str, out: Path, budget: float, boxes: Mapping[str, float]) -> int:
    """Every step in order, each under its time box (``boxes``, seconds), all within
    ``budget`` seconds; the JSON after each. 0 when every step is ``ok``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, log_path = out / "gpu_check.json", out / "gpu_check.log"
    started = time.perf_counter()
    report: dict[str, Any] = {
        "check": "benchmarks/gpu_check.py",
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "budget_seconds": budget,
        "time_boxes": dict(boxes),
        "sizes": asdict(SIZES[mode]),
        "machine": machine(mode),
        "steps": {name: {"status": "pending"} for name in STEPS},
    }
    write_json(json_path, report)
    signal.signal(signal.SIGTERM, _stop)
    stopped = False
    with open(log_path, "a", buffering=1) as log:
        print(f"== gpu_check ({mode}) on {report['machine']}", file=log, flush=True)
        for name in STEPS:
            left = budget - (time.perf_counter() - started)
            box = min(boxes[name], left)
            if stopped:
                report["steps"][name] = {"status": "skipped", "reason": "the check was stopped"}
            elif left < MIN_BOX:
                report["steps"][name] = {
                    "status": "skipped",
                    "reason": f"{left:.0f} s left of the budget",
                }
            else:
                report["steps"][name] = _run_step(name, mode, out, box, log)
                stopped = report["steps"][name]["status"] == "stopped"
            print(f"{name}: {report['steps'][name]['status']}", flush=True)
            write_json(json_path, _finite(report))
    report["seconds"] = time.perf_counter() - started
    report["ok"] = all(s["status"] == "ok" for s in report["steps"].values())
    write_json(json_path, _finite(report))
    print(f"gpu_check: {'ok' if report['ok'] else 'NOT ok'}; {json_path}, {log_path}", flush=True)
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny sizes on the CPU")
    parser.add_argument("--out", required=True, help="folder of gpu_check.json and gpu_check.log")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all steps")
    parser.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help=f"another time box for a step ({', '.join(STEPS)})",
    )
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "cpu" if args.cpu else "cuda"
    out = Path(args.out).resolve()
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        print(
            f"gpu_check: error: --budget must be a number of seconds > 0, got {args.budget}",
            file=sys.stderr,
        )
        return 2
    boxes = dict(BOXES[mode])
    for given in args.box:
        name, _, seconds = given.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = math.nan
        if name not in STEPS or not (math.isfinite(value) and value > 0):
            print(
                f"gpu_check: error: --box {given!r} is not allowed; allowed: STEP=SECONDS "
                f"with SECONDS > 0 and STEP one of {', '.join(STEPS)}",
                file=sys.stderr,
            )
            return 2
        boxes[name] = value
    if args.step:
        if mode == "cpu":  # the dry run shares a small machine: one thread per process
            import torch

            torch.set_num_threads(1)
        record = Record(Path(args.result))
        ok = STEP_FUNCTIONS[args.step](mode, SIZES[mode], record, out)
        return 0 if ok else 1
    if mode == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: error: no CUDA device; run with --cpu for the dry run", file=sys.stderr
            )
            return 2
    budget = args.budget if args.budget is not None else BUDGET[mode]
    return orchestrate(mode, out, budget, boxes)


if __name__ == "__main__":
    sys.exit(main())
