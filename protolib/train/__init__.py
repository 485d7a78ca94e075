"""One training run: config, loop, evaluation, probe, checkpoints, outputs.

The names below load on first use, so importing ``protolib.train.config`` (the run
config alone, as the workflow's planning does) does not import the training code.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ConfigError": "protolib.train.config",
    "RunConfig": "protolib.train.config",
    "RunInterrupted": "protolib.train.signals",
    "prepare": "protolib.train.build",
    "train_run": "protolib.train.run",
}

__all__ = ["ConfigError", "RunConfig", "RunInterrupted", "prepare", "train_run"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
