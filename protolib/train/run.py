"""One training run, end to end: ``train_run(config, out_dir)``.

Everything is validated and built before anything is written; the run directory then
receives (each file written atomically)::

    config.json        the resolved run config
    data.parquet       the training points used: split index, original and training label
    metrics.parquet    long format, one row per step × split × metric (results.schema)
    geometry.parquet   final class-mean Gram, target Gram, prototype / classifier Gram
    gamma.parquet      histograms of the final γ distributions (MATH.md §3)
    checkpoint.pt      the final state (model, optimiser, loader; weights_only-loadable)
    summary.json       final figures; written last, so its presence marks a finished run

While training, ``resume.pt`` holds the periodic state; it is removed at the end. It is
deliberately not a declared output of the workflow's train rule, so that a workflow
manager's clean-up of an interrupted job keeps it. Re-running the same command on the
same directory resumes from ``resume.pt`` (the
result is bit-identical on the CPU to an uninterrupted run) or, when ``summary.json``
exists, returns the finished summary without work. SIGTERM or Ctrl-C saves a
checkpoint and raises :class:`RunInterrupted`. One process owns a run directory at a
time (:mod:`protolib.train.lock`); a second one is refused at once.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

import protolib
from protolib.data import (
    Augment,
    DatasetSplits,
    DeviceLoader,
    check_imbalance,
    corrupt_labels,
    load_dataset,
    step_imbalance,
)
from protolib.geometry import GeometryError, gamma_distributions, make_prototypes, target_gram
from protolib.io import write_atomic, write_json
from protolib.losses import Loss, LossNeeds
from protolib.models import Network, build_backbone
from protolib.registry import LOSSES, RegistryError
from protolib.results.manifest import SUMMARY, build_manifest
from protolib.results.schema import GAMMA_SCHEMA, GEOMETRY_SCHEMA, METRICS_SCHEMA, write_table
from protolib.train.config import ConfigError, RunConfig
from protolib.train.evaluate import embed, evaluate_split_pair, final_gram
from protolib.train.lock import RunDirectoryLock
from protolib.train.probe import linear_probe
from protolib.train.schedule import lr_multiplier

CHECKPOINT = "checkpoint.pt"  # the final state, a declared output
RESUME = "resume.pt"  # periodic state while training; removed when the run completes
CHECKPOINT_FORMAT = 1  # the "format" of resume.pt and checkpoint.pt
CHECKPOINT_KEYS = (
    "format",
    "config",
    "step",
    "status",
    "network",
    "optimizer",
    "scheduler",
    "loader",
    "rows",
    "running",
    "running_count",
    "train_seconds",
    "time_to_fit",
)
GAMMA_BINS = 50
DIVERGENCE_CHECK_EVERY = 50


class RunInterrupted(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint; re-run to resume."""

    def __init__(self, signum: int, step: int, out_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved in {out_dir}; re-run to resume")
        self.signum = signum


@dataclass
class Prepared:
    """Everything a run needs, built and validated before any output is written."""

    config: RunConfig
    device: torch.device
    data: DatasetSplits
    kept: Tensor  # indices of the training split used (after imbalance)
    train_labels: Tensor  # training labels used (after corruption), on the device
    original_labels: Tensor  # labels before corruption, CPU
    changed: Tensor  # positions (into kept) whose label was changed
    needs: LossNeeds
    prototypes: Tensor | None
    target: Tensor
    network: Network
    loss: Loss
    loader: DeviceLoader
    total_steps: int
    autocast: bool
    channels_last: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA device is available; use auto or cpu"
        )
    return torch.device(name)


def prepare(config: RunConfig) -> Prepared:
    """Load data, build model, prototypes and loss; raise on any invalid input."""
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    with _options_errors("dataset_options"):
        data = load_dataset(config.dataset, **config.dataset_options)
    K = data.num_classes
    train = data.train
    _, height, width = data.image_shape
    if config.crop_padding > min(height, width):
        raise ConfigError(
            f"crop_padding must be at most the image size {min(height, width)} for "
            f"{config.dataset} ({height}x{width} images), got {config.crop_padding}"
        )
    try:
        check_imbalance(train.labels, config.imbalance_ratio, K)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    kept = step_imbalance(train.labels, config.imbalance_ratio, K, config.seed)
    original = train.labels[kept]
    labels, changed = corrupt_labels(
        original, config.label_corruption, K, config.seed, mode=config.corruption_mode
    )
    needs = LOSSES.get(config.loss).needs
    torch.manual_seed(config.seed)
    with _options_errors("model_options"):
        backbone = build_backbone(config.model, in_shape=data.image_shape, **config.model_options)
    dim = config.projector_dim if config.projector != "none" else backbone.out_dim
    uses_prototypes = needs.prototypes == "yes" or (
        needs.prototypes == "optional" and config.n_w > 0
    )
    prototypes = None
    try:
        if uses_prototypes:
            prototypes = make_prototypes(
                config.geometry, K, dim, seed=config.seed, **config.geometry_options
            )
            target = target_gram(config.geometry, K, **config.geometry_options)
        else:
            target = target_gram("etf", K)
    except (GeometryError, RegistryError) as error:
        raise ConfigError(
            f"{error} (the embedding dimension is set by the model or projector_dim)"
        ) from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ConfigError(f"geometry_options: {_one_line(error)}") from None
    network = Network(
        backbone,
        num_classes=K,
        head=needs.head,
        prototypes=prototypes if needs.head == "fixed_linear" else None,
        projector=config.projector,
        projector_dim=config.projector_dim,
    )
    loss_options = dict(config.loss_options)
    if needs.prototypes != "no":
        loss_options["prototypes"] = prototypes
    if needs.prototypes == "optional":
        loss_options["n_w"] = config.n_w
    with _options_errors("loss_options"):
        loss = LOSSES.create(config.loss, **loss_options)
    on_cuda = device.type == "cuda"
    channels_last = config.channels_last and on_cuda
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    loss = loss.to(device)
    loader = DeviceLoader(
        train.images[kept],
        labels,
        batch_size=config.batch_size,
        mean=data.mean,
        std=data.std,
        device=device,
        sampling=config.sampling,
        views=config.views,
        augment=Augment(crop_padding=config.crop_padding, flip=config.flip),
        seed=config.seed,
    )
    if config.iterations is not None:
        total = config.iterations
    else:
        total = config.epochs * loader.steps_per_epoch
    return Prepared(
        config=config,
        device=device,
        data=data,
        kept=kept,
        train_labels=labels.to(device),
        original_labels=original,
        changed=changed,
        needs=needs,
        prototypes=prototypes,
        target=target,
        network=network,
        loss=loss,
        loader=loader,
        total_steps=total,
        autocast=config.amp and on_cuda,
        channels_last=channels_last,
    )


@contextmanager
def _options_errors(key: str) -> Iterator[None]:
    """Turn an error a component raises on its options into a :class:`ConfigError` that
    names ``key`` (the component's own message says which option and what is allowed)."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ConfigError(f"{key}: {_one_line(error)}") from None


def _one_line(error: BaseException, limit: int = 300) -> str:
    """The message of ``error`` on one line, at most ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(protolib.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _attempt(step: int) -> dict[str, Any]:
    """Where this process took the run up, and where it runs (SLURM job id if any; an
    array task has its own, which SLURM's records list too)."""
    return {
        "start_step": step,
        "hostname": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


class _Logger:
    """A progress bar on an interactive terminal, one line per evaluation otherwise."""

    def __init__(self, run_id: str, total: int, start: int, interactive: bool) -> None:
        self.run_id = run_id
        self.total = total
        self.bar = None
        if interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=run_id, unit="it", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def eval(self, step: int, values: dict[str, float], rate: float) -> None:
        shown = {k: v for k, v in values.items() if not math.isnan(v)}
        text = " ".join(f"{k} {v:.4g}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            print(
                f"[{self.run_id}] step {step}/{self.total} {text} ({rate:.1f} it/s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopSignals:
    """Turn SIGTERM/SIGINT into a flag the loop checks between iterations."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _add_grid(rows: dict[str, list], grid: dict[str, Any], count: int) -> None:
    """Append the run's grid keys ``count`` times (long tables repeat them per row)."""
    for key, grid_value in grid.items():
        rows[key].extend([grid_value] * count)


def _rows_append(
    rows: dict[str, list],
    grid: dict[str, Any],
    step: int,
    epoch: float,
    values: dict[tuple[str, str], float],
) -> None:
    for (split, metric), value in values.items():
        _add_grid(rows, grid, 1)
        rows["step"].append(step)
        rows["epoch"].append(epoch)
        rows["split"].append(split)
        rows["metric"].append(metric)
        rows["value"].append(float(value))


def _empty_rows() -> dict[str, list]:
    return {f.name: [] for f in METRICS_SCHEMA}


def train_run(
    config: RunConfig | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train one run into ``out_dir`` and return its summary (see the module docstring).

    Raises :class:`ConfigError` for any invalid input (config, ``out_dir``, a
    ``resume.pt`` that is not this run's) before writing anything,
    :class:`~protolib.train.lock.RunDirectoryInUse` when another process owns
    ``out_dir``, ``OSError`` when the outputs cannot be written, and
    :class:`RunInterrupted` after SIGTERM or Ctrl-C.
    """
    if isinstance(config, str | Path):
        config = RunConfig.from_file(config)
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    else:
        config.validate()
    out = Path(out_dir)
    _check_out(out)
    prep = None
    if not out.is_dir():
        prep = prepare(config)  # a new run directory: everything is built before it exists
    with RunDirectoryLock(out):
        config_dict = config.to_dict()
        if (out / SUMMARY).exists():
            return _finished_summary(out, config_dict)
        state = _load_resume(out / RESUME, config_dict)
        if prep is None:
            prep = prepare(config)  # raises before anything is written
        trainer = _Trainer(prep, out, progress)
        if state is not None:
            trainer.restore(state)
        write_json(out / "config.json", config_dict)
        return trainer.run()


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is, or lies under, something other than a directory."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == out else f"lies under {path}, which is"
                raise ConfigError(
                    f"--out {out} {what} an existing file, not a directory; give a directory path"
                )
            return


def _finished_summary(out: Path, config_dict: dict[str, Any]) -> dict[str, Any]:
    """The summary of the finished run in ``out``, if it is this config's run."""
    if _read_json(out / "config.json") != config_dict:
        raise ConfigError(f"{out} already holds a different run; use another --out or delete it")
    summary = _read_json(out / SUMMARY)
    if not isinstance(summary, dict):
        raise ConfigError(
            f"{out / SUMMARY} is not a valid summary; delete it to run this run again"
        )
    return summary


def _load_resume(path: Path, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The state in ``resume.pt`` (on the CPU), checked to be this run's; None when absent.

    Loading stays ``weights_only``: nothing untrusted is unpickled.
    """
    if not path.exists():
        return None
    start_over = "delete it to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage, truncated, empty, or a pickle of other objects
        raise ConfigError(
            f"{path} is not a protolib checkpoint ({_why_unloadable(path, error)}); {start_over}"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path} is not a protolib checkpoint (it holds a {type(state).__name__}); {start_over}"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path} is not a protolib checkpoint of format {CHECKPOINT_FORMAT} "
            f"(format {state.get('format')!r}); {start_over}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ConfigError(
            f"{path} is not a complete protolib checkpoint (missing {', '.join(missing)}); "
            f"{start_over}"
        )
    if state["config"] != config_dict:
        raise ConfigError(
            f"{path.parent} holds an interrupted run with a different config (in {path}); "
            f"use another --out, or delete {path.name} to start this config's run over"
        )
    return state


def _why_unloadable(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words."""
    try:
        if path.stat().st_size == 0:
            return "it is empty"
        if not zipfile.is_zipfile(path):
            return "it is not a torch checkpoint file"
    except OSError as os_error:
        return f"it cannot be read: {os_error.strerror}"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain data, which are not unpickled"
    return _one_line(error, 160)


def _torch_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path``; a failed write (a full disk) raises the ``OSError`` it
    was, not torch's opaque ``RuntimeError``."""
    with open(path, "wb") as handle:
        recorder = _WriteRecorder(handle)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _WriteRecorder:
    """A binary file that remembers the ``OSError`` a write raised."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _Trainer:
    def __init__(self, prep: Prepared, out: Path, progress: bool | None) -> None:
        self.prep = prep
        self.out = out
        self.config = prep.config
        self.interactive = sys.stderr.isatty() if progress is None else progress
        self.grid = {
            "run_id": self.config.run_id,
            "experiment": self.config.experiment,
            **self.config.grid_keys,
        }
        self.optimizer = torch.optim.SGD(
            prep.network.parameters(),
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        milestones = list(self.config.milestones)
        if self.config.epochs is not None:
            milestones = [m * prep.loader.steps_per_epoch for m in milestones]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_multiplier(
                self.config.schedule,
                total=prep.total_steps,
                milestones=milestones,
                factor=self.config.lr_factor,
                power=self.config.poly_power,
            ),
        )
        self.rows = _empty_rows()
        self.step = 0
        self.train_seconds = 0.0
        self.running: dict[str, Tensor] = {}
        self.running_count = 0
        self.last_checkpoint = 0
        self.time_to_fit: int | None = None
        self.status = "running"
        # one entry per process that worked on the run: where it started, and on which
        # host and scheduler job (a SLURM retry or requeue adds one)
        self.attempts: list[dict[str, Any]] = []
        data = prep.data
        self.test_loader = DeviceLoader(  # evaluation only: iterate() in order, no sampling
            data.test.images,
            data.test.labels,
            batch_size=1,
            mean=data.mean,
            std=data.std,
            device=prep.device,
            sampling="epoch",
        )
        self.test_labels = data.test.labels.to(prep.device)
        self._embedded: tuple[int, tuple] | None = None

    # -- state -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "status": self.status,
            "network": self.prep.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.prep.loader.state_dict(),
            "rows": self.rows,
            "running": {k: v.detach().cpu() for k, v in self.running.items()},
            "running_count": self.running_count,
            "train_seconds": self.train_seconds,
            "time_to_fit": self.time_to_fit,
            "attempts": self.attempts,
        }

    def _save_checkpoint(self, name: str = RESUME) -> None:
        state = self._state()
        write_atomic(self.out / name, lambda tmp: _torch_save(state, tmp))
        self.last_checkpoint = self.step

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (checked by :func:`_load_resume`); a state that does not
        fit this run's model, optimiser or loader raises :class:`ConfigError`."""
        try:
            self.prep.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.prep.loader.load_state_dict(state["loader"])
            self.rows = state["rows"]
            self.running = {k: v.to(self.prep.device) for k, v in state["running"].items()}
            self.running_count = state["running_count"]
            self.train_seconds = state["train_seconds"]
            self.time_to_fit = state["time_to_fit"]
            self.step = self.last_checkpoint = int(state["step"])
            # "running", or how a run whose outputs were cut ended
            self.status = state["status"]
            self.attempts = list(state.get("attempts", []))
        except Exception as error:
            path = self.out / RESUME
            raise ConfigError(
                f"{path} does not fit this run ({_one_line(error, 160)}); "
                f"delete it to start the run over"
            ) from None

    # -- loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        attempt = _attempt(self.step)
        self.attempts.append(attempt)
        if self.step or not self.interactive:  # where (and from which step) this log begins
            where = attempt["hostname"] + (
                f", SLURM job {attempt['slurm_job_id']}" if attempt["slurm_job_id"] else ""
            )
            begun = f"resumed from step {self.step} ({RESUME})" if self.step else "started"
            print(f"[{self.config.run_id}] {begun} on {where}", file=sys.stderr, flush=True)
        prep, config = self.prep, self.config
        total, eval_every = prep.total_steps, config.eval_every
        logger = _Logger(config.run_id, total, self.step, self.interactive)
        started = time.perf_counter()
        try:
            with _StopSignals() as stop:
                interval_start = time.perf_counter()
                interval_steps = 0
                while self.step < total and self.status == "running":
                    if stop.signum is not None:
                        # how this attempt ended, kept in the checkpoint for the next one
                        self.attempts[-1]["stopped_by"] = signal.Signals(stop.signum).name
                        self.attempts[-1]["stop_step"] = self.step
                        self._save_checkpoint()
                        raise RunInterrupted(stop.signum, self.step, self.out)
                    tick = time.perf_counter()
                    self._train_step()
                    self.train_seconds += time.perf_counter() - tick
                    self.step += 1
                    interval_steps += 1
                    logger.step()
                    if self.step % DIVERGENCE_CHECK_EVERY == 0 and not self._finite():
                        self.status = "diverged"
                        break
                    if self.step % eval_every == 0 or self.step == total:
                        if not self._finite():
                            self.status = "diverged"
                            break
                        values = self._evaluate()
                        rate = interval_steps / max(time.perf_counter() - interval_start, 1e-9)
                        logger.eval(self.step, self._headline(values), rate)
                        interval_start, interval_steps = time.perf_counter(), 0
                        if (
                            self.step - self.last_checkpoint >= config.checkpoint_every
                            and self.step < total
                        ):
                            self._save_checkpoint()
                if self.status == "running":
                    self.status = "completed"
        finally:
            logger.close()
        return self._finish(time.perf_counter() - started)

    def _train_step(self) -> None:
        prep = self.prep
        x, _, index = prep.loader.next_batch()
        labels = prep.train_labels[index]
        if prep.channels_last:
            x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        context = (
            torch.autocast(prep.device.type, dtype=torch.bfloat16)
            if prep.autocast
            else nullcontext()
        )
        with context:
            out = prep.network(x)
            losses = prep.loss(out.features, labels, logits=out.logits)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        for name, value in losses.items():
            value = value.detach().float()
            self.running[name] = self.running[name] + value if name in self.running else value
        self.running_count += 1

    def _finite(self) -> bool:
        value = self.running.get("loss")
        return value is None or bool(torch.isfinite(value))

    def _evaluate(self) -> dict[tuple[str, str], float]:
        prep = self.prep
        values: dict[tuple[str, str], float] = {}
        for name, total in self.running.items():
            key = "loss" if name == "loss" else f"loss.{name}"
            values[("train", key)] = float(total) / max(self.running_count, 1)
        values[("train", "lr")] = self.scheduler.get_last_lr()[0]
        self.running, self.running_count = {}, 0
        values.update(self._geometry_metrics())
        epoch = self.step / prep.loader.steps_per_epoch
        _rows_append(self.rows, self.grid, self.step, epoch, values)
        if self.time_to_fit is None and values[("train", "error")] == 0.0:
            self.time_to_fit = self.step
        return values

    def _embeddings(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Train and test features and logits at the current step (one pass per step: the
        final evaluation's embeddings are reused by :meth:`_finish`)."""
        if self._embedded is not None and self._embedded[0] == self.step:
            return self._embedded[1]
        prep, size = self.prep, self.config.eval_batch_size
        kw = {
            "normalize": prep.needs.normalized,
            "autocast": prep.autocast,
            "channels_last": prep.channels_last,
        }
        train = embed(prep.network, prep.loader.iterate(size), **kw)
        test = embed(prep.network, self.test_loader.iterate(size), **kw)
        result = (train[0], train[1], test[0], test[1])
        self._embedded = (self.step, result)
        return result

    def _classifier(self) -> Tensor | None:
        weight = self.prep.network.classifier_weight()
        if weight is None:
            weight = self.prep.prototypes
        return None if weight is None else weight.detach().float()

    def _geometry_metrics(self) -> dict[tuple[str, str], float]:
        prep = self.prep
        train_f, train_l, test_f, test_l = self._embeddings()
        return evaluate_split_pair(
            train_features=train_f,
            train_logits=train_l,
            train_labels=prep.train_labels,
            test_features=test_f,
            test_logits=test_l,
            test_labels=self.test_labels,
            num_classes=prep.data.num_classes,
            target_gram=prep.target,
            classifier=self._classifier(),
        )

    @staticmethod
    def _headline(values: dict[tuple[str, str], float]) -> dict[str, float]:
        keys = [("train", "loss"), ("train", "error"), ("test", "accuracy"), ("train", "delta_g")]
        names = ["loss", "train_err", "test_acc", "delta_g"]
        return {name: values.get(key, float("nan")) for name, key in zip(names, keys, strict=True)}

    # -- outputs ---------------------------------------------------------------------
    def _finish(self, wall_seconds: float) -> dict[str, Any]:

        prep, config, out = self.prep, self.config, self.out
        K = prep.data.num_classes
        final: dict[str, float] = {}
        probe: dict[str, float] = {}
        gram = None
        gammas: dict[str, Tensor] = {}
        if self.status == "completed":
            train_f, _, test_f, _ = self._embeddings()
            gram = final_gram(train_f, prep.train_labels, K)
            if not gram.isnan().any():
                gammas = gamma_distributions(
                    train_f, prep.train_labels, classifier=self._classifier(), num_classes=K
                )
            if prep.needs.head == "none" and config.probe_iterations > 0:
                probe = linear_probe(
                    train_f,
                    prep.train_labels,
                    test_f,
                    self.test_labels,
                    num_classes=K,
                    iterations=config.probe_iterations,
                    lr=config.probe_lr,
                    weight_decay=config.weight_decay,
                    seed=config.seed,
                )
                epoch = self.step / prep.loader.steps_per_epoch
                _rows_append(
                    self.rows,
                    self.grid,
                    self.step,
                    epoch,
                    {
                        ("train", "probe_error"): probe["probe_train_error"],
                        ("test", "probe_accuracy"): probe["probe_accuracy"],
                    },
                )
        last_step = max(self.rows["step"], default=None)
        for step, split, metric, value in zip(
            self.rows["step"],
            self.rows["split"],
            self.rows["metric"],
            self.rows["value"],
            strict=True,
        ):
            if step == last_step:
                final[f"{split}/{metric}"] = value
        write_table(out / "metrics.parquet", self.rows, METRICS_SCHEMA)
        write_table(out / "geometry.parquet", self._geometry_rows(gram), GEOMETRY_SCHEMA)
        write_table(out / "gamma.parquet", self._gamma_rows(gammas), GAMMA_SCHEMA)
        self._write_data_table()
        self._save_checkpoint(CHECKPOINT)
        images = self.step * config.batch_size * config.views
        summary = {
            "run_id": config.run_id,
            "experiment": config.experiment,
            **config.grid_keys,
            "loss_type": config.loss,
            "dataset": config.dataset,
            "model": config.model,
            "geometry": config.geometry if prep.prototypes is not None else None,
            "status": self.status,
            "iterations": self.step,
            "epochs": self.step / prep.loader.steps_per_epoch,
            "time_to_fit": self.time_to_fit,
            "fitted": self.time_to_fit is not None,
            "train_error": final.get("train/error"),
            "test_accuracy": final.get("test/accuracy"),
            "mean_classifier_accuracy": final.get("test/mean_classifier_accuracy"),
            "probe_accuracy": probe.get("probe_accuracy"),
            "delta_g": final.get("train/delta_g"),
            "final": final,
            "n_train": int(prep.kept.numel()),
            "n_test": int(prep.data.test.labels.numel()),
            "n_corrupted": int(prep.changed.numel()),
            "class_counts": torch.bincount(prep.train_labels.cpu(), minlength=K).tolist(),
            "wall_seconds": wall_seconds,
            "train_seconds": self.train_seconds,
            "images_per_second": images / self.train_seconds if self.train_seconds > 0 else None,
            "device": _device_name(prep.device),
            "device_type": prep.device.type,
            "versions": {
                "protolib": protolib.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "git_revision": _git_revision(),
            "hostname": platform.node(),
            "pid": os.getpid(),
            "attempts": self.attempts,
            # size and sha256 of every other declared output; summary.json is written last
            "manifest": build_manifest(out),
        }
        write_json(out / SUMMARY, summary)
        (out / RESUME).unlink(missing_ok=True)
        return summary

    def _geometry_rows(self, gram: Tensor | None) -> dict[str, list]:
        rows: dict[str, list] = {f.name: [] for f in GEOMETRY_SCHEMA}
        matrices: dict[str, Tensor] = {"target": self.prep.target}
        if gram is not None:
            matrices["class_means"] = gram
        classifier = self._classifier()
        if classifier is not None:
            w = classifier.double()
            matrices[
                "classifier" if self.prep.network.classifier_weight() is not None else "prototypes"
            ] = w @ w.T
        for name, matrix in matrices.items():
            values = matrix.detach().double().cpu()
            K = values.shape[0]
            _add_grid(rows, self.grid, K * K)
            rows["matrix"].extend([name] * (K * K))
            rows["row"].extend(torch.arange(K).repeat_interleave(K).tolist())
            rows["col"].extend(torch.arange(K).repeat(K).tolist())
            rows["value"].extend(values.flatten().tolist())
        return rows

    def _gamma_rows(self, gammas: dict[str, Tensor]) -> dict[str, list]:
        """Histograms of the final γ distributions on ``GAMMA_BINS`` equal bins of [0, 1]."""
        rows: dict[str, list] = {f.name: [] for f in GAMMA_SCHEMA}
        edges = torch.linspace(0, 1, GAMMA_BINS + 1, dtype=torch.float64)
        for name, values in gammas.items():
            counts = torch.histc(values.double().cpu(), bins=GAMMA_BINS, min=0.0, max=1.0)
            _add_grid(rows, self.grid, GAMMA_BINS)
            rows["distribution"].extend([name] * GAMMA_BINS)
            rows["lower"].extend(edges[:-1].tolist())
            rows["upper"].extend(edges[1:].tolist())
            rows["count"].extend(counts.long().tolist())
        return rows

    def _write_data_table(self) -> None:
        prep = self.prep
        changed = torch.zeros(prep.kept.numel(), dtype=torch.bool)
        changed[prep.changed] = True
        table = pa.table(
            {
                "index": prep.kept.cpu().numpy(),
                "label": prep.original_labels.cpu().numpy(),
                "train_label": prep.train_labels.cpu().numpy(),
                "corrupted": changed.numpy(),
            }
        )
        write_atomic(self.out / "data.parquet", lambda tmp: pq.write_table(table, tmp))
