"""Run configs as JSON: parsing that refuses what JSON would silently accept (a repeated
key, a non-object, bytes that are not UTF-8), and the check that no number anywhere is
NaN, infinite or beyond what a tensor or seed can hold. Every refusal is a
:class:`ConfigError` of one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_JSON_INT = 2**63 - 1  # no integer in a run config (options included) may exceed this


class ConfigError(ValueError):
    """An invalid run config (the message names the key and what is allowed)."""


def check_finite(value: Any, path: str = "") -> None:
    """Raise :class:`ConfigError` naming the key path (``loss_options.tau``,
    ``model_options.widths[0]``) of the first NaN or infinite number in ``value``, or of an
    integer beyond ±(2**63 − 1), which no tensor or seed can hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_finite(item, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"{path or 'value'} must be a finite number, got {value!r} (NaN and infinities "
            "are not allowed)"
        )
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_JSON_INT:
        raise ConfigError(
            f"{path or 'value'} is out of range: integers must lie within ±{MAX_JSON_INT}, "
            f"got {value}"
        )


def parse_config_json(raw: bytes, source: str, *, what: str = "run config") -> dict[str, Any]:
    """The JSON object in ``raw`` (the bytes of a ``what`` from ``source``, both named in
    errors). Refuses text that is not UTF-8, not JSON, not an object, or that repeats a key
    (JSON keeps only the last of a repeated key; a run config honours every key or none)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{what} {source} is not UTF-8 text (byte {error.start}); give a JSON object"
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as error:
        raise ConfigError(
            f"{what} {source} gives key {error.key!r} twice; give each key once"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {source} is not valid JSON: {error}") from None
    except RecursionError:
        raise ConfigError(f"{what} {source} is nested too deeply to be a {what}") from None
    except ValueError as error:  # e.g. an integer literal longer than Python converts
        raise ConfigError(f"{what} {source} is not a valid {what}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {source} must hold a JSON object ({{...}}), got {json_kind(data)}"
        )
    return data


def read_config_file(path: str | Path, *, what: str = "run config") -> dict[str, Any]:
    """Read and parse a ``what`` JSON file (see :func:`parse_config_json`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {str(path)!r} is a directory, not a JSON file") from None
    except OSError as error:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {error.strerror}") from None
    return parse_config_json(raw, repr(str(path)), what=what)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def json_kind(value: Any) -> str:
    """How JSON names the type of ``value`` (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
