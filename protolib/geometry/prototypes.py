"""Fixed prototype geometries (MATH.md §2).

A geometry is a target Gram matrix ``G*`` (K×K, symmetric PSD, unit diagonal). Each named
geometry registered in :data:`GEOMETRIES` is a function ``(num_classes, **options) -> G*``
(float64); :func:`make_prototypes` factors ``G*`` into ``K×d`` unit rows ``W`` with
``W Wᵀ = G*``, rotated into ``R^d`` by a random orthonormal map drawn from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from protolib.registry import GEOMETRIES

_TOL = 1e-6  # symmetry, unit diagonal, PSD (relative to K) of a target Gram


class GeometryError(ValueError):
    """An invalid geometry request (bad Gram, too small a dimension, bad options)."""


def _check_num_classes(name: str, num_classes: int, smallest: int = 2) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < smallest:
        raise GeometryError(
            f"geometry {name!r} needs an integer num_classes >= {smallest}, got {num_classes!r}"
        )


def default_minority(num_classes: int) -> list[int]:
    """The minority classes of STEP imbalance (MATH.md §6): the last ``⌊K/2⌋`` classes."""
    return list(range(math.ceil(num_classes / 2), num_classes))


def _split_minority(
    name: str, num_classes: int, minority: Sequence[int] | None
) -> tuple[Tensor, Tensor]:
    chosen = default_minority(num_classes) if minority is None else [int(c) for c in minority]
    if len(set(chosen)) != len(chosen) or any(c < 0 or c >= num_classes for c in chosen):
        raise GeometryError(
            f"geometry {name!r}: minority must be distinct classes in 0..{num_classes - 1}, "
            f"got {chosen}"
        )
    if not 0 < len(chosen) < num_classes:
        raise GeometryError(
            f"geometry {name!r}: minority must be a non-empty proper subset of the {num_classes} "
            f"classes, got {chosen}"
        )
    is_minority = torch.zeros(num_classes, dtype=torch.bool)
    is_minority[chosen] = True
    return is_minority, ~is_minority


def etf_gram(num_classes: int) -> Tensor:
    """Simplex ETF: ``(K/(K−1)) I − 1/(K−1)``; rank ``K−1``."""
    _check_num_classes("etf", num_classes)
    K = num_classes
    return (K / (K - 1)) * torch.eye(K, dtype=torch.float64) - 1.0 / (K - 1)


@GEOMETRIES.register("etf")
def etf(num_classes: int) -> Tensor:
    """Simplex equiangular tight frame: every pair at cosine ``−1/(K−1)``; needs ``d ≥ K−1``."""
    return etf_gram(num_classes)


@GEOMETRIES.register("orthonormal")
def orthonormal(num_classes: int) -> Tensor:
    """Orthonormal prototypes: ``G* = I``; needs ``d ≥ K``."""
    _check_num_classes("orthonormal", num_classes, smallest=1)
    return torch.eye(num_classes, dtype=torch.float64)


@GEOMETRIES.register("minority_angles")
def minority_angles(
    num_classes: int, *, minority: Sequence[int] | None = None, strength: float = 0.5
) -> Tensor:
    """Wider minority–minority and narrower majority–majority angles than the ETF.

    Block-structured Gram with off-diagonal cosines ``a`` (majority pairs), ``b``
    (minority pairs) and ``c`` (mixed pairs). With ``b0 = −1/(K−1)`` (the ETF) and
    ``s = strength ∈ [0, 1]``: ``b = b0 + s(−1/(k−1) − b0)`` moves towards the simplex of
    the ``k`` minority classes alone, ``a = b0 + s(1 − b0)/2`` towards smaller angles, and
    ``c = −sqrt((1 + (K−k−1)a)(1 + (k−1)b) / ((K−k)k))`` is the most negative value that
    keeps ``G*`` PSD (the group means stay balanced, so the rank stays ``K−1``). ``s = 0``
    is the ETF. ``minority`` defaults to the last ``⌊K/2⌋`` classes.
    """
    _check_num_classes("minority_angles", num_classes, smallest=3)
    if not 0.0 <= float(strength) <= 1.0:
        raise GeometryError(
            f"geometry 'minority_angles': strength must be in [0, 1], got {strength!r}"
        )
    is_min, is_maj = _split_minority("minority_angles", num_classes, minority)
    K, k_min = num_classes, int(is_min.sum())
    k_maj = K - k_min
    s = float(strength)
    b0 = -1.0 / (K - 1)
    b_floor = -1.0 / (k_min - 1) if k_min > 1 else b0
    b = b0 + s * (b_floor - b0)
    a = b0 + s * (1.0 - b0) / 2.0
    c = -math.sqrt(max((1 + (k_maj - 1) * a) * (1 + (k_min - 1) * b), 0.0) / (k_maj * k_min))
    gram = torch.full((K, K), c, dtype=torch.float64)
    gram[is_maj.unsqueeze(1) & is_maj.unsqueeze(0)] = a
    gram[is_min.unsqueeze(1) & is_min.unsqueeze(0)] = b
    gram.fill_diagonal_(1.0)
    return gram


@GEOMETRIES.register("majority_collapse")
def majority_collapse(num_classes: int, *, minority: Sequence[int] | None = None) -> Tensor:
    """All majority classes share one prototype; it and the ``k`` minority prototypes form
    a simplex ETF of ``k+1`` points. Needs ``d ≥ k``. ``minority`` defaults to the last
    ``⌊K/2⌋`` classes."""
    _check_num_classes("majority_collapse", num_classes)
    is_min, _ = _split_minority("majority_collapse", num_classes, minority)
    k_min = int(is_min.sum())
    small = etf_gram(k_min + 1)
    # slot 0 of the small simplex is the shared majority prototype, 1..k the minorities
    slot = torch.zeros(num_classes, dtype=torch.long)
    slot[is_min] = torch.arange(1, k_min + 1)
    return small[slot][:, slot].clone()


@GEOMETRIES.register("from_gram")
def from_gram(num_classes: int, *, gram: Tensor | np.ndarray | Sequence | str | Path) -> Tensor:
    """Any symmetric PSD matrix with unit diagonal: a tensor, array, nested list, or the
    path of a ``.npy``, ``.pt`` or text (``.csv``/``.txt``, comma or whitespace separated)
    file."""
    matrix = _load_gram(gram)
    if matrix.shape != (num_classes, num_classes):
        raise GeometryError(
            f"geometry 'from_gram': the Gram must be {num_classes}x{num_classes} "
            f"(num_classes), got shape {tuple(matrix.shape)}"
        )
    return matrix


def _load_gram(gram: Tensor | np.ndarray | Sequence | str | Path) -> Tensor:
    if isinstance(gram, str | Path):
        path = Path(gram)
        if not path.is_file():
            raise GeometryError(f"geometry 'from_gram': no Gram file at {str(path)!r}")
        if path.suffix == ".npy":
            gram = np.load(path)
        elif path.suffix == ".pt":
            gram = torch.load(path, weights_only=True)
        elif path.suffix in {".csv", ".txt", ".tsv"}:
            text = path.read_text().replace(",", " ")
            gram = np.array(
                [[float(x) for x in row.split()] for row in text.splitlines() if row.strip()]
            )
        else:
            raise GeometryError(
                f"geometry 'from_gram': unsupported file type {path.suffix!r}; "
                "use .npy, .pt, .csv, .tsv or .txt"
            )
    try:
        matrix = torch.as_tensor(
            np.asarray(gram, dtype=np.float64) if not isinstance(gram, Tensor) else gram
        )
    except (TypeError, ValueError) as error:
        raise GeometryError(
            f"geometry 'from_gram': the Gram is not a numeric matrix ({error})"
        ) from None
    matrix = matrix.detach().to("cpu", torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise GeometryError(
            f"geometry 'from_gram': the Gram must be square, got shape {tuple(matrix.shape)}"
        )
    return matrix


def validate_gram(gram: Tensor, *, name: str = "from_gram") -> Tensor:
    """Check that ``gram`` is a valid target Gram (finite, symmetric, unit diagonal, PSD)
    and return it as float64; raise :class:`GeometryError` naming the first violation."""
    gram = gram.detach().to("cpu", torch.float64)
    K = gram.shape[0]
    if not torch.isfinite(gram).all():
        raise GeometryError(f"geometry {name!r}: the Gram has non-finite entries")
    asym = (gram - gram.T).abs().max().item()
    if asym > _TOL:
        raise GeometryError(
            f"geometry {name!r}: the Gram is not symmetric (max |G - Gᵀ| = {asym:.3g})"
        )
    diag = (gram.diagonal() - 1).abs().max().item()
    if diag > _TOL:
        raise GeometryError(
            f"geometry {name!r}: the Gram needs a unit diagonal (max |G_cc - 1| = {diag:.3g}); "
            "prototypes are unit vectors"
        )
    smallest = torch.linalg.eigvalsh(0.5 * (gram + gram.T)).min().item()
    if smallest < -_TOL * K:
        raise GeometryError(
            f"geometry {name!r}: the Gram is not positive semi-definite "
            f"(smallest eigenvalue {smallest:.3g}); no set of vectors has this Gram"
        )
    return gram


def gram_rank(gram: Tensor) -> int:
    """Numerical rank of a PSD Gram: the smallest embedding dimension that realises it."""
    eigenvalues = torch.linalg.eigvalsh(gram.to(torch.float64))
    return int((eigenvalues > _TOL * gram.shape[0]).sum())


def factor_gram(gram: Tensor, dim: int, *, seed: int = 0, name: str = "from_gram") -> Tensor:
    """Unit rows ``W`` (K×dim, float64) with ``W Wᵀ = gram``, randomly rotated into ``R^dim``.

    The rank-``r`` factor ``V_r sqrt(Λ_r)`` of the eigendecomposition is mapped into
    ``R^dim`` by the first ``r`` rows of a seeded random orthogonal matrix. Raises
    :class:`GeometryError` naming the smallest valid ``dim`` when ``dim < r``.
    """
    gram = validate_gram(gram, name=name)
    rank = gram_rank(gram)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < max(rank, 1):
        raise GeometryError(
            f"geometry {name!r} with K={gram.shape[0]} classes needs dim >= {max(rank, 1)}, "
            f"got {dim!r}"
        )
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    top = torch.argsort(eigenvalues, descending=True)[:rank]
    factor = eigenvectors[:, top] * eigenvalues[top].clamp_min(0).sqrt()  # (K, r)
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: (dim, r), orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
    prototypes = factor @ q.T  # (K, dim)
    return prototypes / prototypes.norm(dim=1, keepdim=True)


def target_gram(name: str, num_classes: int, **options: object) -> Tensor:
    """The target Gram ``G*`` (K×K, float64) of a registered geometry."""
    return GEOMETRIES.create(name, num_classes=num_classes, **options)


def make_prototypes(
    name: str,
    num_classes: int,
    dim: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **options: object,
) -> Tensor:
    """Unit prototypes ``(num_classes, dim)`` of the geometry ``name`` (MATH.md §2).

    Deterministic in ``(name, num_classes, dim, seed, options)``. Raises
    :class:`protolib.registry.RegistryError` for an unknown name and
    :class:`GeometryError` for invalid options or too small a ``dim``.
    """
    gram = target_gram(name, num_classes, **options)
    return factor_gram(gram, dim, seed=seed, name=name).to(dtype)
