"""What one MLflow run should hold (:class:`Content`) and its digest, the tag
``protolib.synced`` that makes a sync idempotent; keys and values made MLflow-valid."""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protolib.results.manifest import file_entry

#: bump when what a synced run holds changes, so that every run is re-synced once
SYNC_FORMAT = 1

PARENT_TAG = "protolib.parent"
RUN_ID_TAG = "protolib.run_id"
SYNCED_TAG = "protolib.synced"
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow's limits (mlflow.utils.validation) on the lengths of values and keys
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
TRUNCATED = "...[truncated]"


@dataclass
class Content:
    """Everything one MLflow run should hold, and its digest."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # key, value, step
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"
    files: list[tuple[Path, str | None]] = field(default_factory=list)  # path, artifact dir

    def digest(self) -> str:
        files = [[file_digest(path), path.name, folder] for path, folder in self.files]
        payload = {
            "format": SYNC_FORMAT,
            "params": self.params,
            "metrics": [[k, v if math.isfinite(v) else repr(v), s] for k, v, s in self.metrics],
            "tags": self.tags,
            "status": self.status,
            "files": files,
        }
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's file names and contents."""
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}\0{file_digest(item)}\0".encode())
        return digest.hexdigest()
    return file_entry(path)["sha256"]


def mlflow_key(key: str) -> str:
    """An MLflow-valid param/metric key: allowed characters, no path tricks, ≤ 250 chars."""
    key = re.sub(r"[^\w\-. /:]", "_", key)
    if key.startswith("/") or posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    if len(key) > MAX_KEY_LENGTH:
        suffix = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[: MAX_KEY_LENGTH - 9]}_{suffix}"
    return key


def mlflow_text(value: Any, limit: int) -> str:
    """Strings as they are, anything else as JSON text; cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        text = text[: limit - len(TRUNCATED)] + TRUNCATED
    return text


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to ``a.b`` keys with MLflow-valid keys and string values.

    An empty mapping stays one param (``"{}"``); lists are JSON text; values longer than
    MLflow's limit of 6000 characters are cut and end in ``...[truncated]``.
    """
    out: dict[str, str] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{key}."))
        else:
            out[mlflow_key(key)] = mlflow_text(value, MAX_PARAM_VALUE_LENGTH)
    return out
