"""Reading a pipeline config file strictly: a duplicate key, a syntax error or a missing
file is one :class:`~protolib.pipeline.errors.PipelineConfigError` naming file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from protolib.pipeline.errors import fail as _fail


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (merge keys ``<<`` may be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader refuses it below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _fail(
                        f"config: {key_node.start_mark.name}:{line}: duplicate key {key!r} "
                        f"(first at line {first}); each key may appear once in a mapping"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> Any:
    """The YAML (or JSON) document in ``path``, read strictly: a duplicate key, a syntax
    error or a missing file raises :class:`PipelineConfigError` naming file and line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_StrictLoader)
    except FileNotFoundError:
        raise _fail(f"config: {path}: no such file; allowed: an existing YAML file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "syntax error"
        if error.context and error.problem and error.context_mark:
            start = error.context_mark
            problem += f" ({error.context} at line {start.line + 1}, column {start.column + 1})"
        raise _fail(f"config: {where}: invalid YAML: {problem}") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise _fail(f"config: {path}: cannot be read as YAML: {error}") from None
