"""A run's saved state: ``resume.pt`` while training, ``checkpoint.pt`` at the end.

Both hold the same dictionary (:data:`CHECKPOINT_KEYS`, plain data and tensors only), so
they load with ``torch.load(weights_only=True)``: nothing untrusted is unpickled.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from protolib.io import one_line, write_atomic
from protolib.results.contract import CHECKPOINT as CHECKPOINT  # the final state
from protolib.results.contract import RESUME as RESUME  # while training
from protolib.train.config import ConfigError

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


def load_resume(path: Path, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The state in ``resume.pt`` (on the CPU), checked to be a complete checkpoint of
    this run's config; None when absent. Anything else raises :class:`ConfigError`."""
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
    if with_defaults(state["config"]) != config_dict:
        raise ConfigError(
            f"{path.parent} holds an interrupted run with a different config (in {path}); "
            f"use another --out, or delete {path.name} to start this config's run over"
        )
    return state


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run config saved earlier (in a checkpoint or ``config.json``) with every key added
    since at its default: a new key reproduces the old behaviour at its default (the rule
    for every new key), so a missing one counts as that default."""
    from protolib.train.config import RunConfig

    return {**RunConfig().to_dict(), **saved}


def does_not_fit(path: Path, error: BaseException) -> ConfigError:
    """The refusal of a checked ``resume.pt`` whose tensors do not fit the run."""
    return ConfigError(
        f"{path} does not fit this run ({one_line(error, 160)}); delete it to start the run over"
    )


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically; a full disk raises its ``OSError``."""
    write_atomic(path, lambda tmp: _torch_save(state, tmp))


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
    return one_line(error, 160)


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
