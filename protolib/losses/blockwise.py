"""The log-denominator of the multiset contrastive loss without an ``N×N`` tensor
(MATH.md §1.10).

For an anchor copy of member ``a`` (:mod:`protolib.losses.multiset`), the log-denominator
of SupCon (§1.3–1.4) and of BCL (§1.6) is

    LD_a = log Σ_t exp(s_at + log M_at − [BCL] log n_{a,y_t}),   s_at = <z_a, z_t>/τ,

with ``M_at = m_t − [t = a]`` and ``n_{a,c} = S_c − [y_a = c]`` (``S_c`` the class's total
multiplicity). :func:`log_denominator` computes it one block of anchor rows at a time: the
forward pass keeps one number per anchor; the backward pass recomputes each block's
similarities and accumulates ``G_blk Z`` into the anchor rows and ``G_blkᵀ Z_blk`` into
every member, with ``G_at = g_a p_at / τ`` (``g_a`` the incoming gradient of ``LD_a``,
``p_at`` the row softmax). Memory is ``O(N·d + B·N)`` for blocks of ``B`` rows; every
accumulation is in the members' dtype, and autocast is off inside (a float32 input is
computed in float32).

Block size: :func:`block_rows_for` takes as many rows as fit an element budget of
``rows × N`` per block — :data:`CPU_BLOCK_ELEMENTS` on the CPU (a few such blocks are alive
at once: 16 MiB each in float32), and on CUDA 1/256 of the device's memory in elements
(at most :data:`CUDA_BLOCK_ELEMENTS_MAX`), so that the live blocks take about a tenth of it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

#: elements (rows × N) of one block on the CPU: 4 Mi, i.e. 64 rows at N = 65 536; the
#: forward + backward of N = 65 536, d = 128 then peaks well under 1 GiB (benchmarks/README.md)
CPU_BLOCK_ELEMENTS = 1 << 22
#: the largest block on CUDA, in elements (1 GiB of float32)
CUDA_BLOCK_ELEMENTS_MAX = 1 << 28


@functools.cache
def _cuda_block_elements(index: int) -> int:
    total = torch.cuda.get_device_properties(index).total_memory
    return max(CPU_BLOCK_ELEMENTS, min(CUDA_BLOCK_ELEMENTS_MAX, total // 256))


def block_elements(device: torch.device) -> int:
    """The element budget (rows × N) of one block on ``device`` (module docstring)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_block_elements(index)
    return CPU_BLOCK_ELEMENTS


def block_rows_for(n_members: int, n_anchors: int, device: torch.device) -> int:
    """Rows per block: as many as :func:`block_elements` allows against ``n_members``
    columns, at least 1 and at most ``n_anchors``."""
    return max(1, min(max(n_anchors, 1), block_elements(device) // max(n_members, 1)))


def class_totals(labels: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """``(classes, totals)``: each member's class index (``0 … C−1`` over the ``C`` labels
    that occur, in label order) and the per-class sums of ``values`` (``(N,)`` or
    ``(N, d)``; ``totals`` has ``N`` rows, those from ``C`` on zero), in ``O(N·d)``.

    Every shape here is fixed by ``N`` (a sort and a running count, not ``torch.unique``,
    whose output size depends on the labels): on CUDA nothing waits for the device.
    """
    order = torch.argsort(labels)
    ordered = labels[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    classes = torch.empty_like(labels)
    classes[order] = torch.cumsum(starts, 0) - 1
    totals = values.new_zeros(values.shape)
    return classes, totals.index_add_(0, classes, values)


def _block_logits(
    members: Tensor,
    rows: Tensor,
    labels: Tensor,
    column: Tensor,
    column_same: Tensor | None,
    self_log: Tensor,
    tau: float,
) -> Tensor:
    """``(B, N)`` logits ``s_at + log M_at − [BCL] log n_{a,y_t}`` of the anchors ``rows``."""
    logits = members[rows] @ members.T
    logits.div_(tau)
    if column_same is None:
        logits.add_(column)
    else:
        same = labels[rows].unsqueeze(1) == labels.unsqueeze(0)
        logits.add_(torch.where(same, column_same, column))
    diagonal = (torch.arange(rows.shape[0], device=rows.device), rows)
    logits[diagonal] += self_log[rows]  # the anchor's own column: log(m_a − 1) in place of log m_a
    return logits


class _LogDenominator(torch.autograd.Function):
    """``LD_a`` for the anchors (module docstring); gradient into ``members`` only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        members: Tensor,
        anchors: Tensor,
        labels: Tensor,
        column: Tensor,
        column_same: Tensor | None,
        self_log: Tensor,
        tau: float,
        block_rows: int,
    ) -> Tensor:
        out = members.new_empty(anchors.shape[0])
        with torch.autocast(members.device.type, enabled=False):
            for start in range(0, anchors.shape[0], block_rows):
                rows = anchors[start : start + block_rows]
                logits = _block_logits(members, rows, labels, column, column_same, self_log, tau)
                shift = logits.amax(dim=1)
                shift = torch.where(torch.isfinite(shift), shift, 0.0)
                total = logits.sub_(shift.unsqueeze(1)).exp_().sum(dim=1)
                out[start : start + rows.shape[0]] = total.log_().add_(shift)
        ctx.save_for_backward(members, anchors, labels, column, column_same, self_log, out)
        ctx.tau = tau
        ctx.block_rows = block_rows
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        members, anchors, labels, column, column_same, self_log, out = ctx.saved_tensors
        tau, block_rows = ctx.tau, ctx.block_rows
        grad = None
        if ctx.needs_input_grad[0]:
            grad = torch.zeros_like(members)
            with torch.autocast(members.device.type, enabled=False):
                for start in range(0, anchors.shape[0], block_rows):
                    rows = anchors[start : start + block_rows]
                    stop = start + rows.shape[0]
                    logits = _block_logits(
                        members, rows, labels, column, column_same, self_log, tau
                    )
                    # G_at = g_a p_at / τ, p_at = exp(logit_at − LD_a), in place
                    weight = (grad_out[start:stop] / tau).to(logits.dtype)
                    g = logits.sub_(out[start:stop].unsqueeze(1)).exp_().mul_(weight.unsqueeze(1))
                    grad.index_add_(0, rows, g @ members)  # G_blk Z into the anchor rows
                    grad.addmm_(g.T, members[rows])  # G_blkᵀ Z_blk into every member
        return grad, None, None, None, None, None, None, None


def log_denominator(
    members: Tensor,
    labels: Tensor,
    multiplicity: Tensor,
    *,
    tau: float,
    class_average: bool = False,
    anchors: Tensor | None = None,
    block_rows: int | None = None,
) -> Tensor:
    """``LD_a`` of MATH.md §1.10 for each anchor, blockwise (module docstring).

    Args:
        members: ``(N, d)`` unit rows; the gradient flows into all of them.
        labels: ``(N,)`` int64.
        multiplicity: ``(N,)`` counts ``m_t ≥ 1``; no gradient.
        tau: temperature.
        class_average: BCL's class-averaged denominator (§1.6).
        anchors: ``(A,)`` int64 indices of the anchor members (default: all ``N``).
        block_rows: anchor rows per block (default :func:`block_rows_for`).

    Returns:
        ``(A,)`` in the members' dtype. With ``N = 1`` the only anchor has an empty
        denominator: ``−inf`` (callers treat such anchors as having no positive).
    """
    n = members.shape[0]
    if anchors is None:
        anchors = torch.arange(n, device=members.device)
    if block_rows is None:
        block_rows = block_rows_for(n, anchors.shape[0], members.device)
    if not (isinstance(block_rows, int) and block_rows >= 1):
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    with torch.no_grad():
        m = multiplicity.to(dtype=members.dtype, device=members.device)
        column = m.log()  # log m_t
        self_log = (m - 1).log() - column  # log(m_a − 1) − log m_a; −inf when m_a = 1
        column_same = None
        if class_average:  # divide each term by its class size among the others
            classes, size = class_totals(labels, m)
            class_size = size[classes]  # S_{y_t}
            column_same = column - (class_size - 1).clamp_min(1).log()
            column = column - class_size.log()
    return _LogDenominator.apply(
        members, anchors, labels, column, column_same, self_log, float(tau), block_rows
    )
