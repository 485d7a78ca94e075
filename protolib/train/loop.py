"""The training loop of one prepared run: steps, evaluation, checkpoints, signals.

:class:`Loop` holds the state that changes while training (step, metric rows, running
loss sums, timing, status); :meth:`Loop.run` trains to the end, writes the outputs
(:mod:`protolib.train.outputs`) and returns the summary. SIGTERM or Ctrl-C saves
``resume.pt`` and raises :class:`RunInterrupted`.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from protolib.geometry import class_means
from protolib.train.bounds import NO_COMPARISON, compare_to_bound
from protolib.train.build import Prepared
from protolib.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    RESUME,
    does_not_fit,
    save_state,
)
from protolib.train.evaluate import Evaluation, embed, error_rate, evaluate_split_pair, predict
from protolib.train.outputs import (
    append_metrics,
    empty_metric_rows,
    final_values,
    grid_columns,
    write_summary,
    write_tables,
)
from protolib.train.probe import linear_probe
from protolib.train.progress import ProgressLog

DIVERGENCE_CHECK_EVERY = 50  # iterations between checks of the running loss
HEADLINE = {  # what an evaluation's log line shows
    "loss": ("train", "loss"),
    "train_err": ("train", "error"),
    "test_acc": ("test", "accuracy"),
    "delta_g": ("train", "delta_g"),
}


class RunInterrupted(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint; re-run to resume."""

    def __init__(self, signum: int, step: int, out_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved in {out_dir}; re-run to resume")
        self.signum = signum


@dataclass
class _Assessment:
    """The embeddings of both splits at ``step`` and what their evaluation found (one
    pass per step: the final evaluation's is reused for the outputs)."""

    step: int
    train_features: Tensor
    test_features: Tensor
    evaluation: Evaluation


class Loop:
    """Train ``prep`` into the run directory ``out``; ``progress`` None shows a progress
    bar when standard error is a terminal."""

    def __init__(self, prep: Prepared, out: Path, progress: bool | None) -> None:
        self.prep = prep
        self.config = prep.config
        self.out = out
        self.interactive = sys.stderr.isatty() if progress is None else progress
        self.grid = grid_columns(prep)
        self.rows = empty_metric_rows()
        self.step = 0
        self.train_seconds = 0.0
        self.running: dict[str, Tensor] = {}
        self.running_count = 0
        self.last_checkpoint = 0
        self.time_to_fit: int | None = None
        self.status = "running"  # then "completed" or "diverged"
        # one entry per process that worked on the run: where it started, and on which
        # host and scheduler job (a SLURM retry or requeue adds one)
        self.attempts: list[dict[str, Any]] = []
        self._assessed: _Assessment | None = None

    # -- state -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue (the keys of ``CHECKPOINT_KEYS``, and attempts)."""
        prep = self.prep
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "status": self.status,
            "network": prep.network.state_dict(),
            "optimizer": prep.optimizer.state_dict(),
            "scheduler": prep.scheduler.state_dict(),
            "loader": prep.loader.state_dict(),
            "rows": self.rows,
            "running": {k: v.detach().cpu() for k, v in self.running.items()},
            "running_count": self.running_count,
            "train_seconds": self.train_seconds,
            "time_to_fit": self.time_to_fit,
            "attempts": self.attempts,
        }

    def save(self, name: str = RESUME) -> None:
        save_state(self.state(), self.out / name)
        self.last_checkpoint = self.step

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (checked by :func:`~protolib.train.checkpoint.load_resume`);
        a state that does not fit this run's model, optimiser or loader raises
        :class:`~protolib.train.config.ConfigError`."""
        prep = self.prep
        try:
            prep.network.load_state_dict(state["network"])
            prep.optimizer.load_state_dict(state["optimizer"])
            prep.scheduler.load_state_dict(state["scheduler"])
            prep.loader.load_state_dict(state["loader"])
            self.rows = state["rows"]
            self.running = {k: v.to(prep.device) for k, v in state["running"].items()}
            self.running_count = state["running_count"]
            self.train_seconds = state["train_seconds"]
            self.time_to_fit = state["time_to_fit"]
            self.step = self.last_checkpoint = int(state["step"])
            # "running", or how a run whose outputs were cut ended
            self.status = state["status"]
            self.attempts = list(state.get("attempts", []))
        except Exception as error:
            raise does_not_fit(self.out / RESUME, error) from None

    # -- loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train from the current step to the end; write the outputs; the summary."""
        attempt = {  # where this process took the run up (a SLURM array task has its id)
            "start_step": self.step,
            "hostname": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        self.attempts.append(attempt)
        log = ProgressLog(self.config.run_id, self.prep.total_steps, attempt, self.interactive)
        started = time.perf_counter()
        try:
            with _StopSignals() as stop:
                self._train(stop, log)
        finally:
            log.close()
        return self._finish(time.perf_counter() - started)

    def _train(self, stop: _StopSignals, log: ProgressLog) -> None:
        """Steps until the end, a non-finite loss ("diverged") or a signal (saved, then
        :class:`RunInterrupted`); evaluates and checkpoints on schedule."""
        total, config = self.prep.total_steps, self.config
        interval_start, interval_steps = time.perf_counter(), 0
        while self.step < total and self.status == "running":
            if stop.signum is not None:
                # how this attempt ended, kept in the checkpoint for the next one
                self.attempts[-1]["stopped_by"] = signal.Signals(stop.signum).name
                self.attempts[-1]["stop_step"] = self.step
                self.save()
                raise RunInterrupted(stop.signum, self.step, self.out)
            tick = time.perf_counter()
            self._train_step()
            self.train_seconds += time.perf_counter() - tick
            self.step += 1
            interval_steps += 1
            log.step()
            evaluating = self.step % config.eval_every == 0 or self.step == total
            checking = evaluating or self.step % DIVERGENCE_CHECK_EVERY == 0
            if checking and not self._finite():
                self.status = "diverged"
                break
            if evaluating:
                values = self._evaluate()
                rate = interval_steps / max(time.perf_counter() - interval_start, 1e-9)
                headline = {k: values.get(key, float("nan")) for k, key in HEADLINE.items()}
                log.eval(self.step, headline, rate)
                interval_start, interval_steps = time.perf_counter(), 0
                due = self.step - self.last_checkpoint >= config.checkpoint_every
                if due and self.step < total:
                    self.save()
        if self.status == "running":
            self.status = "completed"

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
        prep.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        prep.optimizer.step()
        prep.scheduler.step()
        for name, value in losses.items():
            value = value.detach().float()
            self.running[name] = self.running[name] + value if name in self.running else value
        self.running_count += 1

    def _finite(self) -> bool:
        value = self.running.get("loss")
        return value is None or bool(torch.isfinite(value))

    def _evaluate(self) -> dict[tuple[str, str], float]:
        """Record the mean training losses since the last evaluation, the learning rate
        and every evaluation metric at the current step."""
        values: dict[tuple[str, str], float] = {}
        for name, total in self.running.items():
            key = "loss" if name == "loss" else f"loss.{name}"
            values[("train", key)] = float(total) / max(self.running_count, 1)
        values[("train", "lr")] = self.prep.scheduler.get_last_lr()[0]
        self.running, self.running_count = {}, 0
        values.update(self._assess().evaluation.metrics)
        append_metrics(self.rows, self.grid, self.step, self._epoch(), values)
        if self.time_to_fit is None and values[("train", "error")] == 0.0:
            self.time_to_fit = self.step
        return values

    def _assess(self) -> _Assessment:
        """Embed both splits and evaluate them, once per step; the metrics registered as
        expensive only at the final step (:mod:`protolib.geometry.panel`)."""
        if self._assessed is not None and self._assessed.step == self.step:
            return self._assessed
        prep, size = self.prep, self.config.eval_batch_size
        kw = {
            "normalize": prep.needs.normalized,
            "autocast": prep.autocast,
            "channels_last": prep.channels_last,
        }
        train_f, train_l = embed(prep.network, prep.loader.iterate(size), **kw)
        test_f, test_l = embed(prep.network, prep.test_loader.iterate(size), **kw)
        evaluation = evaluate_split_pair(
            train_features=train_f,
            train_logits=train_l,
            train_labels=prep.train_labels,
            test_features=test_f,
            test_logits=test_l,
            test_labels=prep.test_labels,
            num_classes=prep.data.num_classes,
            target_gram=prep.target,
            # a head over the encoder (a composite loss) is not in the embedding's space
            classifier=self._classifier() if prep.network.head_input == "embedding" else None,
            # class sizes after imbalance, before label corruption (MATH.md §3)
            class_counts=torch.bincount(prep.original_labels, minlength=prep.data.num_classes),
            expensive=self.step >= prep.total_steps,
            metric_options=self.config.metric_options,
        )
        if prep.validation_loader is not None:
            evaluation.metrics[("validation", "accuracy")] = self._validation_accuracy(
                train_f, size, kw
            )
        self._assessed = _Assessment(self.step, train_f, test_f, evaluation)
        return self._assessed

    def _validation_accuracy(self, train_f: Tensor, size: int, kw: dict[str, Any]) -> float:
        """Accuracy on the held-out training points, by the run's own classifier (its
        logits, else the class means of the training embeddings), for model selection."""
        prep = self.prep
        assert prep.validation_loader is not None and prep.validation_labels is not None
        features, logits = embed(prep.network, prep.validation_loader.iterate(size), **kw)
        if logits is not None:
            predictions = logits.argmax(1)
        else:
            K = prep.data.num_classes
            means = class_means(train_f, prep.train_labels, K, allow_missing=True)
            predictions = predict(features, means.to(features.dtype))
        return 1.0 - error_rate(predictions, prep.validation_labels)

    def _classifier(self) -> Tensor | None:
        """The classifier rows: the head's weight, else the prototypes, else None."""
        weight = self.prep.network.classifier_weight()
        if weight is None:
            weight = self.prep.prototypes
        return None if weight is None else weight.detach().float()

    def _epoch(self) -> float:
        return self.step / self.prep.loader.steps_per_epoch

    # -- outputs ---------------------------------------------------------------------
    def _finish(self, wall_seconds: float) -> dict[str, Any]:
        """Write the tables, the final checkpoint and the summary; remove ``resume.pt``.
        A completed run adds its class-mean Gram, γ histograms and linear probe."""
        prep, config = self.prep, self.config
        gram, gammas, probe_accuracy = None, {}, None
        comparison: dict[str, Any] = {**NO_COMPARISON, "bounds": None}
        if self.status == "completed":
            assessed = self._assess()
            comparison = compare_to_bound(prep, assessed.train_features)
            gram = assessed.evaluation.gram
            if not gram.isnan().any():
                gammas = assessed.evaluation.gammas
            if prep.needs.head == "none" and config.probe_iterations > 0:
                probe = linear_probe(
                    assessed.train_features,
                    prep.train_labels,
                    assessed.test_features,
                    prep.test_labels,
                    num_classes=prep.data.num_classes,
                    iterations=config.probe_iterations,
                    lr=config.probe_lr,
                    weight_decay=config.weight_decay,
                    seed=config.seed,
                )
                probe_accuracy = probe["probe_accuracy"]
                values = {
                    ("train", "probe_error"): probe["probe_train_error"],
                    ("test", "probe_accuracy"): probe_accuracy,
                }
                append_metrics(self.rows, self.grid, self.step, self._epoch(), values)
        final = final_values(self.rows)
        write_tables(prep, self.out, self.rows, gram, gammas, self._classifier())
        self.save(CHECKPOINT)
        record = {
            "status": self.status,
            "iterations": self.step,
            "time_to_fit": self.time_to_fit,
            "final": final,
            "probe_accuracy": probe_accuracy,
            "wall_seconds": wall_seconds,
            "train_seconds": self.train_seconds,
            "attempts": self.attempts,
            "comparison": comparison,
        }
        summary = write_summary(prep, self.out, record)
        (self.out / RESUME).unlink(missing_ok=True)
        return summary


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
