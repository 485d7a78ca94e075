"""Row chunks: how the panel's pairwise metrics avoid an ``N×N`` matrix (MATH.md §3).

A pairwise metric of ``m`` query rows against ``n`` reference rows works on blocks of
``rows × n`` entries; :data:`CHUNK_ELEMENTS` bounds a block (``2**24`` float32 entries,
64 MiB), so memory stays flat in ``m`` and linear in ``n``.
"""

from __future__ import annotations

from collections.abc import Iterator

#: the most entries one block of a pairwise metric holds (64 MiB of float32)
CHUNK_ELEMENTS = 2**24


def chunk_rows(columns: int, chunk_size: int | None = None) -> int:
    """Rows per block against ``columns`` reference rows: ``chunk_size`` when given
    (a positive integer; tests force tiny ones), else ``CHUNK_ELEMENTS // columns``
    (at least 1)."""
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(columns, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    return chunk_size


def spans(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of ``size`` rows covering ``range(total)``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)
