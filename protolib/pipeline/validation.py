"""The pipeline config's JSON schema: plugins imported, registry names filled in, and
the most relevant violation as one line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from protolib.pipeline.errors import fail as _fail
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, load_plugins


def load_all_plugins(modules: list[str] | tuple[str, ...], key: str = "plugins") -> None:
    """Import each plugin module (and the installed entry points); any failure on import
    becomes one :class:`PipelineConfigError` naming the module."""
    for module in modules:
        try:
            load_plugins([module])
        except ImportError as error:
            raise _fail(f"config: {key}: {error}") from None
        except (Exception, SystemExit) as error:
            raise _fail(
                f"config: {key}: plugin module {module!r} could not be imported: "
                f"{type(error).__name__}: {error}"
            ) from None
    try:
        load_plugins([])
    except (Exception, SystemExit) as error:
        raise _fail(
            f"config: {key}: an installed 'protolib.plugins' entry point failed to load: "
            f"{type(error).__name__}: {error}"
        ) from None


def registry_schema(path: str | Path, plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema at ``path`` with registry names filled into its empty ``enum``s
    (after importing ``plugins``, which may register more names)."""
    load_all_plugins(list(plugins))
    schema = yaml.safe_load(Path(path).read_text())
    variant = schema["$defs"]["loss_variant"]["properties"]
    variant["loss"]["enum"] = LOSSES.names()
    variant["dataset"]["enum"] = DATASETS.names()
    variant["geometry"]["enum"] = GEOMETRIES.names()
    return schema


def describe_validation_error(error: Exception) -> str:
    """One line from a jsonschema ``ValidationError``: the key path and the problem."""
    path = ".".join(str(p) for p in getattr(error, "absolute_path", [])) or "(top level)"
    message = getattr(error, "message", str(error))
    validator = getattr(error, "validator", None)
    if validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))  # type: ignore[attr-defined]
        message = f"{error.instance!r} is not allowed; allowed: {allowed}"  # type: ignore[attr-defined]
    elif validator == "additionalProperties":
        allowed = ", ".join(sorted(getattr(error, "schema", {}).get("properties", {}))) or "none"
        message = f"{message}; allowed keys: {allowed}"
    return " ".join(f"config: {path}: {message}".split())


def validate_schema(config: Any, schema: Mapping[str, Any]) -> None:
    """Raise :class:`PipelineConfigError` for the most relevant schema violation."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise _fail(describe_validation_error(error))
