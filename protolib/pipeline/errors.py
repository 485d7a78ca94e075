"""The one error of the pipeline config: :class:`PipelineConfigError`, one line."""

from __future__ import annotations

from protolib.io import one_line


class PipelineConfigError(ValueError):
    """An invalid pipeline config; the one-line message names the key and what is allowed."""


def fail(message: str) -> PipelineConfigError:
    """A :class:`PipelineConfigError` with ``message`` on one line (whitespace collapsed)."""
    return PipelineConfigError(one_line(message))
