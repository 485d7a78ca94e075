"""The training loop of one prepared run: steps, evaluation, checkpoints, signals.

:class:`Loop` holds the state that changes while training (step, metric rows, running
loss sums, timing, status); :meth:`Loop.run` trains to the end, writes the outputs
(:mod:`protolib.train.outputs`) and returns the summary. SIGTERM or Ctrl-C saves
``resume.pt`` and raises :class:`RunInterrupted`.

With several processes (a :class:`~protolib.train.distributed.ProcessGroup`; MATH.md
§1.10) each process trains the DDP-wrapped network on its shard of the global batch,
gathers every member's features and logits with gradient and computes its share of the
loss (``Loss.forward_shard``); the running loss sums stay per process and are summed over
the processes when a decision needs them. Rank 0 alone evaluates and writes; the others
wait for it. A signal on any process stops every process at the same step.

Between evaluations nothing is read back from the device (:mod:`protolib.train.watch`):
the running loss sums stay there, the divergence check reaches the host asynchronously
(on CUDA a non-finite loss is noticed up to ``DIVERGENCE_CHECK_EVERY`` steps late, never
after the next evaluation; on the CPU at the check that sees it), and the device's time
for the steps is taken with CUDA events. With ``compile`` the network trains compiled
(:mod:`protolib.train.compilation`); evaluation runs it eagerly.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from protolib.losses import Shard
from protolib.train.assess import Assessment, assess, classifier_rows
from protolib.train.bounds import NO_COMPARISON, compare_to_bound
from protolib.train.build import Prepared
from protolib.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    RESUME,
    does_not_fit,
    save_state,
)
from protolib.train.compilation import compiled
from protolib.train.distributed import ProcessGroup
from protolib.train.outputs import (
    append_metrics,
    empty_metric_rows,
    final_values,
    grid_columns,
    write_summary,
    write_tables,
)
from protolib.train.probe import linear_probe
from protolib.train.progress import ProgressLog, QuietLog
from protolib.train.signals import RunInterrupted, StopSignals
from protolib.train.watch import DeviceTimer, FiniteWatch

DIVERGENCE_CHECK_EVERY = 50  # iterations between checks of the running loss
HEADLINE = {  # what an evaluation's log line shows
    "loss": ("train", "loss"),
    "train_err": ("train", "error"),
    "test_acc": ("test", "accuracy"),
    "delta_g": ("train", "delta_g"),
}


class Loop:
    """Train ``prep`` into the run directory ``out``; ``progress`` None shows a progress
    bar when standard error is a terminal; ``group``: the processes that train the run
    together (None: this process alone)."""

    def __init__(
        self, prep: Prepared, out: Path, progress: bool | None, group: ProcessGroup | None = None
    ) -> None:
        self.prep = prep
        self.group = group
        self.main = group is None or group.main  # evaluates and writes
        # what trains: the network itself, or its DDP wrapper (the state stays the
        # network's), compiled when the run asks for it
        model = prep.network if group is None else group.wrap(prep.network)
        self.model = compiled(model) if prep.compile else model
        self.config = prep.config
        self.out = out
        self.interactive = sys.stderr.isatty() if progress is None else progress
        self.grid = grid_columns(prep)
        self.rows = empty_metric_rows()
        self.step = 0
        self.train_seconds = 0.0
        self.timer = DeviceTimer(prep.device)  # the steps' seconds on CUDA (None on the CPU)
        self.watch = FiniteWatch(prep.device)
        self.running: dict[str, Tensor] = {}
        self.running_count = 0
        self.last_checkpoint = 0
        self.time_to_fit: int | None = None
        self.status = "running"  # then "completed" or "diverged"
        # one entry per process that worked on the run: where it started, and on which
        # host and scheduler job (a SLURM retry or requeue adds one)
        self.attempts: list[dict[str, Any]] = []
        self._assessed: Assessment | None = None

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
            "train_seconds_device": self.timer.seconds,
            "time_to_fit": self.time_to_fit,
            "attempts": self.attempts,
        }

    def save(self, name: str = RESUME) -> None:
        """Write the state (rank 0 only; the running sums must be global: see
        :meth:`_merge_running`)."""
        if self.main:
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
            # global sums: rank 0 continues them, the others start from zero
            self.running = {
                k: v.to(prep.device) if self.main else torch.zeros_like(v, device=prep.device)
                for k, v in state["running"].items()
            }
            self.running_count = state["running_count"]
            self.train_seconds = state["train_seconds"]
            self.timer.resume(state.get("train_seconds_device"), int(state["step"]))
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
            "processes": 1 if self.group is None else self.group.size,
            # the speed options as resolved on this process's device
            "compile": "model" if self.prep.compile else "eager",
            "sgd_impl": self.prep.sgd_impl,
        }
        self.attempts.append(attempt)
        log: ProgressLog | QuietLog = QuietLog()
        if self.main:
            log = ProgressLog(self.config.run_id, self.prep.total_steps, attempt, self.interactive)
        started = time.perf_counter()
        try:
            with StopSignals() as stop:
                self._train(stop, log)
        finally:
            log.close()
        return self._finish(time.perf_counter() - started)

    def _train(self, stop: StopSignals, log: ProgressLog | QuietLog) -> None:
        """Steps until the end, a non-finite loss ("diverged") or a signal (saved, then
        :class:`RunInterrupted`); evaluates and checkpoints on schedule."""
        total, config = self.prep.total_steps, self.config
        interval_start, interval_steps = time.perf_counter(), 0
        while self.step < total and self.status == "running":
            signum = stop.signum if self.group is None else self.group.agreed_signal(stop.signum)
            if signum is not None:
                # how this attempt ended, kept in the checkpoint for the next one
                self.attempts[-1]["stopped_by"] = signal.Signals(signum).name
                self.attempts[-1]["stop_step"] = self.step
                self.timer.end()
                self._merge_running()
                self.save()
                raise RunInterrupted(signum, self.step, self.out)
            evaluating = self._advance()
            interval_steps += 1
            log.step()
            if self.status == "diverged":
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
        self.timer.end()
        if self.status == "running":
            self.status = "completed"

    def _advance(self) -> bool:
        """One training step and the divergence check after it, without waiting for the
        device unless the step is due for evaluation (returned): then the step timing is
        closed and the check made at once. A non-finite running loss sets the status
        "diverged" (see :class:`~protolib.train.watch.FiniteWatch` for when)."""
        self.timer.begin()
        tick = time.perf_counter()
        self._train_step()
        self.train_seconds += time.perf_counter() - tick
        self.step += 1
        total = self.prep.total_steps
        evaluating = self.step % self.config.eval_every == 0 or self.step == total
        if evaluating:
            self.timer.end()
            finite = self.watch.now(self._global_running().get("loss"))
        elif self.step % DIVERGENCE_CHECK_EVERY == 0:
            finite = self.watch.post(self._global_running().get("loss"))
        else:
            finite = True
        if not finite:
            self.status = "diverged"
        return evaluating

    def _train_step(self) -> None:
        prep, group = self.prep, self.group
        rows = None
        if group is not None:  # this process's shard of the global batch
            rows = group.launch.rows(prep.loader.batch_size + _bound(prep))
        x, _, index = prep.loader.next_batch(rows)
        labels = prep.train_labels[index]
        if prep.channels_last:
            x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        context = (
            torch.autocast(prep.device.type, dtype=torch.bfloat16)
            if prep.autocast
            else nullcontext()
        )
        with context:
            out = self.model(x)
            if group is None:
                losses = prep.loss(out.features, labels, logits=out.logits)
            else:  # every member's features and logits; this process's share of the loss
                # gathered in float32: under bfloat16 autocast the summed gradients of
                # the shards would otherwise be added up in bfloat16
                features = group.gather(out.features.float())
                logits = None if out.logits is None else group.gather(out.logits.float())
                shard = Shard(group.rank, group.size)
                losses = prep.loss.forward_shard(features, labels, logits=logits, shard=shard)
        prep.optimizer.zero_grad(set_to_none=True)
        if group is None:
            losses["loss"].backward()
        else:
            # DDP averages the gradients over the G processes, and each process's share
            # of the gradient reaches its rows through the gather's summed backward: ×G
            # makes the average the sum over shards, the single-process gradient
            (losses["loss"] * group.size).backward()
        prep.optimizer.step()
        prep.scheduler.step()
        for name, value in losses.items():
            value = value.detach().float()
            self.running[name] = self.running[name] + value if name in self.running else value
        self.running_count += 1

    def _global_running(self) -> dict[str, Tensor]:
        """The running loss sums of the whole batch: with several processes the sum of
        every process's shares (the same on every process)."""
        if self.group is None or not self.running:  # the same keys on every process
            return self.running
        names = list(self.running)
        total = self.group.sum(torch.stack([self.running[n] for n in names]))
        return dict(zip(names, total.unbind(), strict=True))

    def _merge_running(self) -> None:
        """Make rank 0's running sums the global ones, the others' zero (before a save:
        the checkpoint holds global state)."""
        if self.group is not None:
            merged = self._global_running()
            self.running = {k: v if self.main else torch.zeros_like(v) for k, v in merged.items()}

    def _evaluate(self) -> dict[tuple[str, str], float]:
        """Record the mean training losses since the last evaluation, the learning rate
        and every evaluation metric at the current step (rank 0 only; every process sums
        the running losses, and learns the time to fit)."""
        values: dict[tuple[str, str], float] = {}
        running = self._global_running()
        # one read-back for every sum; float32 values, divided as Python floats
        totals = torch.stack(list(running.values())).tolist() if running else []
        for name, total in zip(running, totals, strict=True):
            key = "loss" if name == "loss" else f"loss.{name}"
            values[("train", key)] = total / max(self.running_count, 1)
        values[("train", "lr")] = self.prep.scheduler.get_last_lr()[0]
        self.running, self.running_count = {}, 0
        if self.main:
            values.update(self._assess().evaluation.metrics)
            append_metrics(self.rows, self.grid, self.step, self._epoch(), values)
            if self.time_to_fit is None and values[("train", "error")] == 0.0:
                self.time_to_fit = self.step
        if self.group is not None:
            self.time_to_fit = self.group.broadcast_json(self.time_to_fit)
        return values

    def _assess(self) -> Assessment:
        """Both splits embedded and evaluated at the current step, once per step."""
        if self._assessed is None or self._assessed.step != self.step:
            self._assessed = assess(self.prep, self.step)
        return self._assessed

    def _epoch(self) -> float:
        return self.step / self.prep.loader.steps_per_epoch

    # -- outputs ---------------------------------------------------------------------
    def _finish(self, wall_seconds: float) -> dict[str, Any]:
        """Write the tables, the final checkpoint and the summary; remove ``resume.pt``.
        A completed run adds its class-mean Gram, γ histograms and linear probe. With
        several processes rank 0 does all of it and the others receive its summary."""
        self._merge_running()
        if self.group is not None and not self.main:
            return self.group.broadcast_json(None)
        summary = self._write_outputs(wall_seconds)
        if self.group is not None:
            self.group.broadcast_json(summary)
        return summary

    def _write_outputs(self, wall_seconds: float) -> dict[str, Any]:
        """:meth:`_finish`'s work: evaluate, write every output, return the summary."""
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
        write_tables(prep, self.out, self.rows, gram, gammas, classifier_rows(self.prep))
        self.save(CHECKPOINT)
        record = {
            "status": self.status,
            "iterations": self.step,
            "time_to_fit": self.time_to_fit,
            "final": final,
            "probe_accuracy": probe_accuracy,
            "wall_seconds": wall_seconds,
            "train_seconds": self.train_seconds,
            "train_seconds_device": self.timer.seconds,
            "attempts": self.attempts,
            "comparison": comparison,
        }
        summary = write_summary(prep, self.out, record)
        (self.out / RESUME).unlink(missing_ok=True)
        return summary


def _bound(prep: Prepared) -> int:
    """The bound points appended to every batch (batch binding, MATH.md §6)."""
    bound = prep.loader.bound
    return 0 if bound is None else int(bound.numel())
