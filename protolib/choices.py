"""The named choices of a run config that several modules check, defined once (no torch:
the run config imports them)."""

from __future__ import annotations

from typing import Literal, get_args

#: how training batches are drawn (``sampling``): epochs of a shuffled permutation, or
#: independent draws with replacement
SAMPLINGS: tuple[str, ...] = ("epoch", "replacement")
#: how a corrupted label is drawn (``corruption_mode``): another class, or any class
CORRUPTION_MODES: tuple[str, ...] = ("other", "uniform")
#: the projector between the backbone and the embedding (``projector``)
ProjectorKind = Literal["none", "mlp"]
PROJECTOR_KINDS: tuple[str, ...] = get_args(ProjectorKind)
