"""What the training loop learns from the device between evaluations without stalling
it (README, "Speed on a GPU"): whether the running loss is still finite, and how long the
training steps took on the device's own clock.

On CUDA the host runs ahead of the device; reading a device value back makes it wait for
every queued kernel. Between evaluations the loop reads nothing back: the finiteness
check travels to pinned host memory asynchronously and is read one check later, and the
step timing is a pair of CUDA events read at the next evaluation, where the host waits
for the device anyway. On the CPU both are immediate.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FiniteWatch:
    """Checks that a running loss sum is finite.

    :meth:`post` (between evaluations): on the CPU, whether this value is finite; on CUDA,
    the flag is copied to pinned host memory (``non_blocking``, an event marks its
    arrival) and the answer is the previous post's, whose copy has long arrived. A
    non-finite loss is therefore noticed at the check where it is seen on the CPU, and on
    CUDA at the next check (``DIVERGENCE_CHECK_EVERY`` steps later) or the next
    evaluation (:meth:`now`), whichever comes first. A running sum that was not finite
    stays so (NaN and infinities absorb every addition), so :meth:`now` on the current
    sum covers every check posted since the sums were last reset.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.waits = 0  # posts whose flag had not arrived when read (the host waited)
        self._pending = False
        if self.cuda:
            self._host = torch.ones((), dtype=torch.bool, pin_memory=True)
            self._event = torch.cuda.Event()

    def post(self, value: Tensor | None) -> bool:
        """False when a non-finite running loss has been seen (``value`` on the CPU,
        the previous post's on CUDA); ``value`` None (no step since a reset) is finite."""
        if not self.cuda:
            return value is None or bool(torch.isfinite(value))
        finite = self._read()
        if value is not None:
            self._host.copy_(torch.isfinite(value), non_blocking=True)
            self._event.record()
            self._pending = True
        return finite

    def now(self, value: Tensor | None) -> bool:
        """Whether ``value`` is finite, waiting for the device (at an evaluation, which
        waits anyway); forgets the posted check, which ``value`` covers."""
        self._pending = False
        return value is None or bool(torch.isfinite(value))

    def _read(self) -> bool:
        """The flag of the pending post (True when none)."""
        if not self._pending:
            return True
        if not self._event.query():
            self.waits += 1
            self._event.synchronize()
        self._pending = False
        return bool(self._host)


class DeviceTimer:
    """Seconds of the training steps on the device's clock: CUDA events around each run
    of consecutive steps (from the first step after an evaluation, a checkpoint or a start
    to the last before the next), read when the run of steps ends. ``seconds`` is None on
    the CPU, and for a run some of whose steps were not timed this way (resumed from a
    CPU run or from a checkpoint that did not record it)."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: float | None = 0.0 if device.type == "cuda" else None
        self._start: torch.cuda.Event | None = None

    def resume(self, saved: float | None, step: int) -> None:
        """Continue from a checkpoint's ``saved`` seconds after ``step`` steps."""
        if self.seconds is not None and step > 0:
            self.seconds = None if saved is None else float(saved)

    def begin(self) -> None:
        """Before a step: open a run of steps unless one is open."""
        if self.seconds is not None and self._start is None:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()

    def end(self) -> None:
        """After the last step of a run of steps: wait for it and add its seconds."""
        if self._start is None:
            return
        stop = torch.cuda.Event(enable_timing=True)
        stop.record()
        stop.synchronize()
        if self.seconds is not None:
            self.seconds += self._start.elapsed_time(stop) / 1000.0
        self._start = None
