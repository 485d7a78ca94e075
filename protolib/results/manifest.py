"""The manifest of a run directory: size and SHA-256 of every declared output.

A finished run's ``summary.json`` (written last) holds ``"manifest": {file name:
{"size": bytes, "sha256": hex}}`` for every other declared output (:data:`RUN_FILES`; the
names are defined in :mod:`protolib.results.contract` and importable from here).
It lets the pipeline notice damaged run directories cheaply at plan time
(:func:`run_damage`: one ``stat`` per file, sizes only) and lets ``aggregate`` verify
the bytes of the tables it reads (:func:`check_entry`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from protolib.results.contract import MANIFEST_KEY, RUN_FILES, SUMMARY

#: where damaged outputs are moved, inside the run directory: ``.corrupt/<timestamp>/``
QUARANTINE = ".corrupt"


class ManifestError(ValueError):
    """A run directory whose files do not match its manifest (the message names the file)."""


def file_entry(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY)  # os.read: cheaper than open() for many small files
    try:
        while block := os.read(fd, 1 << 20):
            digest.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return {"size": size, "sha256": digest.hexdigest()}


def build_manifest(run_dir: str | Path, names: Sequence[str] = RUN_FILES) -> dict[str, dict]:
    """The manifest of ``run_dir``: :func:`file_entry` of each of ``names``."""
    return {name: file_entry(Path(run_dir) / name) for name in names}


def manifest_of(summary: Any, path: str | Path) -> dict[str, dict]:
    """The manifest in a parsed ``summary.json``; raises :class:`ManifestError` when absent."""
    manifest = summary.get(MANIFEST_KEY) if isinstance(summary, dict) else None
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path} has no manifest of the run's files (written by an older protolib?); "
            "retrain the run"
        )
    for name in RUN_FILES:
        entry = manifest.get(name)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ManifestError(f"{path}: the manifest has no size and sha256 for {name}")
    return manifest


def check_entry(path: str, entry: Mapping[str, Any], *, size: int, sha256: str | None) -> None:
    """Raise :class:`ManifestError` when ``size`` (and ``sha256``) differ from ``entry``."""
    if size != entry["size"]:
        raise ManifestError(
            f"{path} is {size} bytes, but the run's manifest says {entry['size']}: "
            "the file was truncated or replaced; retrain the run"
        )
    if sha256 is not None and sha256 != entry["sha256"]:
        raise ManifestError(
            f"{path} has sha256 {sha256[:12]}…, but the run's manifest says "
            f"{entry['sha256'][:12]}…: the file was changed or replaced; retrain the run"
        )


def run_damage(run_dir: str | Path) -> str | None:
    """Why the finished run in ``run_dir`` is damaged, or ``None`` (sizes only: cheap).

    A run without ``summary.json`` is unfinished, not damaged (``None``). Otherwise it is
    damaged when ``summary.json`` is not a JSON object with a complete manifest, or a file
    of the manifest is missing or has another size.
    """
    path = os.path.join(run_dir, SUMMARY)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    try:
        manifest = manifest_of(json.loads(data), path)
        for name in RUN_FILES:
            file = os.path.join(run_dir, name)
            try:
                size = os.stat(file).st_size
            except FileNotFoundError:
                return f"{file} is missing"
            check_entry(file, manifest[name], size=size, sha256=None)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{path} is not valid JSON ({error})"
    except ManifestError as error:
        return str(error).removesuffix("; retrain the run")
    return None


def quarantine(run_dir: str | Path, names: Iterable[str] = (SUMMARY, *RUN_FILES)) -> Path | None:
    """Move the existing ``names`` of ``run_dir`` into ``run_dir/.corrupt/<timestamp>/``.

    Nothing is deleted: the damaged outputs stay there for inspection, and the run can
    be trained again into a clean directory. Returns the folder, or ``None`` when none of
    the files exists.
    """
    run_dir = Path(run_dir)
    present = [name for name in names if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = run_dir / QUARANTINE / stamp
    suffix = 0
    while target.exists():
        suffix += 1
        target = run_dir / QUARANTINE / f"{stamp}.{suffix}"
    target.mkdir(parents=True)
    for name in present:
        os.replace(run_dir / name, target / name)
    return target


__all__ = [
    "MANIFEST_KEY",
    "QUARANTINE",
    "RUN_FILES",
    "SUMMARY",
    "ManifestError",
    "build_manifest",
    "check_entry",
    "file_entry",
    "manifest_of",
    "quarantine",
    "run_damage",
]
