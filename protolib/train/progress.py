"""What a run says while it trains, on standard error."""

from __future__ import annotations

import math
import sys
from typing import Any

from protolib.train.checkpoint import RESUME


class ProgressLog:
    """A progress bar on an interactive terminal, one line per evaluation otherwise."""

    def __init__(self, run_id: str, total: int, attempt: dict[str, Any], interactive: bool) -> None:
        """Start the log of ``attempt`` (where and from which step this process took the
        run up; said in one line unless a progress bar starts a new run)."""
        self.run_id = run_id
        self.total = total
        start = attempt["start_step"]
        if start or not interactive:
            where = attempt["hostname"]
            if attempt["slurm_job_id"]:
                where += f", SLURM job {attempt['slurm_job_id']}"
            begun = f"resumed from step {start} ({RESUME})" if start else "started"
            print(f"[{run_id}] {begun} on {where}", file=sys.stderr, flush=True)
        self.bar: Any = None
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


class QuietLog:
    """The progress log of a process that says nothing (every process of a run but
    rank 0)."""

    def step(self) -> None:
        pass

    def eval(self, step: int, values: dict[str, float], rate: float) -> None:
        pass

    def close(self) -> None:
        pass
