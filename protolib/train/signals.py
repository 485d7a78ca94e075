"""How a signal stops a training run: SIGTERM or Ctrl-C set a flag that the loop reads
between iterations (it then saves ``resume.pt`` and raises :class:`RunInterrupted`)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class RunInterrupted(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint; re-run to resume."""

    def __init__(self, signum: int, step: int, out_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved in {out_dir}; re-run to resume")
        self.signum = signum


class StopSignals:
    """Turn SIGTERM/SIGINT into a flag the loop checks between iterations."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
