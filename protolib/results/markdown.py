"""The one Markdown table writer of protolib (GitHub-flavoured pipe tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Align = Literal["left", "right"] | None

_RULES = {None: "---", "left": ":---", "right": "---:"}


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: Sequence[Align] | None = None,
) -> str:
    """A pipe table of already formatted cells, one line per row, ending in a newline.

    ``align`` gives each column ``"left"``, ``"right"`` or None (the renderer's default);
    a ``|`` inside a cell is escaped. Every row must have one cell per header.
    """
    align = [None] * len(headers) if align is None else list(align)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} columns")
    for number, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {number} has {len(row)} cells for {len(headers)} columns")

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    rule = "|" + "|".join(_RULES[a] for a in align) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"
