"""Independent references for the contrastive losses: explicit Python loops over a
literal batch (MATH.md §1.3, §1.6), in float64 with the standard library's math."""

from __future__ import annotations

import math

import numpy as np
import torch


def members_of(features: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """Views stacked view-major (all first views, then all second views, ...): a different
    order from the library's, which must not matter."""
    h = features.detach().double().numpy()
    y = labels.tolist()
    if h.ndim == 2:
        return h, y
    views = h.shape[1]
    return np.concatenate([h[:, v] for v in range(views)]), y * views


def replicate(members: np.ndarray, labels: list[int], prototypes: np.ndarray, n_w: int):
    """The literal batch: members followed by ``n_w`` copies of every prototype."""
    copies = [prototypes[c] for c in range(len(prototypes)) for _ in range(n_w)]
    copy_labels = [c for c in range(len(prototypes)) for _ in range(n_w)]
    if not copies:
        return members, labels
    return np.concatenate([members, np.array(copies)]), labels + copy_labels


def loop_supcon(
    members: np.ndarray,
    labels: list[int],
    tau: float,
    *,
    reduction: str = "mean",
    class_average: bool = False,
) -> float:
    """SupCon (or class-averaged BCL) of a literal batch, one anchor at a time."""
    n = len(labels)

    def s(i: int, j: int) -> float:
        return float(sum(a * b for a, b in zip(members[i], members[j], strict=True))) / tau

    total, counted = 0.0, 0
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        if class_average:
            denominator = 0.0
            for c in sorted(set(labels)):
                others = [k for k in range(n) if k != i and labels[k] == c]
                if others:
                    denominator += sum(math.exp(s(i, k)) for k in others) / len(others)
        else:
            denominator = sum(math.exp(s(i, k)) for k in range(n) if k != i)
        total += sum(math.log(denominator) - s(i, j) for j in positives) / len(positives)
        counted += 1
    if reduction == "sum":
        return total
    return total / counted if counted else 0.0


def loop_limit(
    members: np.ndarray, labels: list[int], prototypes: np.ndarray, tau: float, *, exact: bool
) -> float:
    """L∞ of MATH.md §1.5 (summed), one sample and one class at a time."""
    K = len(prototypes)

    def dot(u, v) -> float:
        return float(sum(a * b for a, b in zip(u, v, strict=True)))

    total = 0.0
    for h, y in zip(members, labels, strict=True):
        logits = [dot(h, prototypes[c]) / tau for c in range(K)]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[y]
        total -= logits[y]
        if exact:
            for c in range(K):
                A_c = sum(
                    math.exp(dot(prototypes[c], prototypes[k]) / tau) for k in range(K) if k != c
                )
                total += math.exp(logits[c]) / (A_c + math.exp(1 / tau))
    return total


def loop_supcontrast(
    members: np.ndarray, labels: list[int], tau: float, *, class_average: bool = False
) -> float:
    """SupCon of a literal batch as SupContrast's code computes it with
    ``base_temperature = τ`` (MATH.md §1.9, ``batch``), one anchor row at a time: a
    ``logits_mask`` drops the anchor itself, ``mask`` marks the other members with its
    label, ``log_prob = s − log Σ logits_mask·exp(s)``, the anchor's term is
    ``−Σ mask·log_prob / Σ mask`` (an anchor without a positive divides 0 by 1), and the
    batch loss is the mean of the terms over ALL anchors. ``class_average`` replaces the
    denominator by BCL's class-averaged one (§1.6)."""
    n = len(labels)
    terms = []
    for i in range(n):
        s = [float(np.dot(members[i], members[j])) / tau for j in range(n)]
        logits_mask = [0.0 if j == i else 1.0 for j in range(n)]
        mask = [logits_mask[j] * float(labels[j] == labels[i]) for j in range(n)]
        if class_average:
            denominator = 0.0
            for c in set(labels):
                in_c = [logits_mask[k] * float(labels[k] == c) for k in range(n)]
                if sum(in_c):
                    denominator += sum(w * math.exp(s[k]) for k, w in enumerate(in_c)) / sum(in_c)
        else:
            denominator = sum(logits_mask[k] * math.exp(s[k]) for k in range(n))
        log_prob = [s[j] - math.log(denominator) for j in range(n)]
        pairs = sum(mask) if sum(mask) >= 1e-6 else 1.0
        terms.append(-sum(mask[j] * log_prob[j] for j in range(n)) / pairs)
    return sum(terms) / n
