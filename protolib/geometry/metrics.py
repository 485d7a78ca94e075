"""Geometry metrics of learned embeddings (``spec/MATH.md`` §3).

Every function is a vectorised pure function of tensors: no loops over samples or classes,
so it runs on full training sets (50 000 × 512, K = 100) in seconds on a CPU and on
whatever device its inputs live on. Inputs are cast to float64 internally; returned
tensors are float64 and returned scalars are Python floats.

Shapes: ``features`` (n, d), ``labels`` (n,) integer in ``[0, K)``, class means and
classifier rows (K, d), Gram matrices (K, K).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from protolib.geometry.simplex import simplex_gamma

__all__ = [
    "angular_similarity",
    "class_mean_gram",
    "class_means",
    "delta_g",
    "delta_g_from_gram",
    "gamma_distributions",
    "neural_collapse",
    "pairwise_angular_similarity",
    "simplex_gamma",
]

_MAX_NAMED = 10  # missing classes named in an error message before it is abbreviated


def _check_features_labels(features: Tensor, labels: Tensor) -> Tensor:
    """Validate (n, d) features and (n,) integer labels; return the labels as int64."""
    if features.ndim != 2:
        raise ValueError(f"features must have shape (n, d); got {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must have shape (n,) = ({features.shape[0]},) to match features; "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError("features and labels are empty; metrics need at least one sample")
    return labels.long()


def _resolve_num_classes(labels: Tensor, num_classes: int | None) -> int:
    """``num_classes`` if given (checked against the labels), else ``labels.max() + 1``."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"labels must be non-negative class indices; found {lo}")
    if num_classes is None:
        return hi + 1
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes}")
    if hi >= num_classes:
        raise ValueError(
            f"label {hi} is out of range for num_classes={num_classes}; "
            f"labels must lie in [0, {num_classes - 1}]"
        )
    return num_classes


def class_means(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    allow_missing: bool = False,
) -> Tensor:
    """Un-centred class means ``μ_c = mean_{i: y_i = c} h_i`` (MATH.md §3).

    features (n, d), labels (n,) integer → (K, d) float64, row c = μ_c. ``num_classes``
    defaults to ``labels.max() + 1``; every class needs at least one sample, unless
    ``allow_missing``, which gives a row of NaN for a class without samples.
    """
    labels = _check_features_labels(features, labels)
    K = _resolve_num_classes(labels, num_classes)
    counts = torch.bincount(labels, minlength=K)
    missing = [] if allow_missing else (counts == 0).nonzero().flatten().tolist()
    if missing:
        named = ", ".join(str(c) for c in missing[:_MAX_NAMED])
        if len(missing) > _MAX_NAMED:
            named += f", … ({len(missing)} in all)"
        subject = f"class {named} has" if len(missing) == 1 else f"classes {named} have"
        raise ValueError(f"{subject} no samples; class means need at least one sample per class")
    h = features.double()
    sums = torch.zeros(K, h.shape[1], dtype=torch.float64, device=h.device)
    sums.index_add_(0, labels.to(h.device), h)
    return sums / counts.to(sums)[:, None]  # 0/0 = NaN for an absent class


def class_mean_gram(features: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Gram matrix of the un-centred class means ``G_M = M Mᵀ`` (MATH.md §3).

    features (n, d), labels (n,) → (K, K) float64, entry (c, c') = <μ_c, μ_c'>.
    """
    means = class_means(features, labels, num_classes)
    return means @ means.T


def delta_g_from_gram(gram: Tensor, target_gram: Tensor) -> float:
    """Geometry convergence ``Δ_G = ‖G_M/‖G_M‖_F − G*/‖G*‖_F‖_F`` from a given G_M (§3).

    gram (K, K) class-mean Gram, target_gram (K, K) prototype Gram G*. Δ_G lies in [0, 2]
    (in [0, √2] for PSD matrices) and is 0 iff G_M is a positive multiple of G*.
    """
    for name, g in (("gram", gram), ("target_gram", target_gram)):
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"{name} must be a square (K, K) matrix; got {tuple(g.shape)}")
    if gram.shape != target_gram.shape:
        raise ValueError(
            f"gram has shape {tuple(gram.shape)} but target_gram has "
            f"{tuple(target_gram.shape)}; both must be (K, K) for the same K"
        )
    g = gram.double()
    t = target_gram.double().to(g.device)
    g_norm, t_norm = torch.linalg.matrix_norm(g), torch.linalg.matrix_norm(t)
    for name, norm in (("gram", g_norm), ("target_gram", t_norm)):
        if not norm > 0:
            raise ValueError(
                f"{name} has Frobenius norm {float(norm)}; Δ_G needs a non-zero, finite Gram"
            )
    return float(torch.linalg.matrix_norm(g / g_norm - t / t_norm))


def delta_g(
    features: Tensor, labels: Tensor, target_gram: Tensor, num_classes: int | None = None
) -> float:
    """Geometry convergence Δ_G of the class means against a target Gram G* (MATH.md §3).

    features (n, d), labels (n,), target_gram (K, K). ``num_classes`` defaults to K, the
    size of ``target_gram``; see :func:`delta_g_from_gram`.
    """
    if target_gram.ndim != 2 or target_gram.shape[0] != target_gram.shape[1]:
        raise ValueError(
            f"target_gram must be a square (K, K) matrix; got {tuple(target_gram.shape)}"
        )
    K = target_gram.shape[0]
    if num_classes is None:
        num_classes = K
    elif num_classes != K:
        raise ValueError(
            f"num_classes={num_classes} does not match target_gram of shape "
            f"{tuple(target_gram.shape)}; it must equal {K}"
        )
    return delta_g_from_gram(class_mean_gram(features, labels, num_classes), target_gram)


def _unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit norm (zero rows stay zero), float64."""
    x = x.double()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-300)


def _gamma_from_cos(cos: Tensor) -> Tensor:
    return 1.0 - torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def angular_similarity(x: Tensor, y: Tensor) -> Tensor:
    """Angular similarity ``γ(x, y) = 1 − arccos(<x/‖x‖, y/‖y‖>)/π`` along the last axis (§3).

    x, y (..., d), broadcastable → (...) float64 in [0, 1]: 1 for parallel, 0.5 for
    orthogonal, 0 for opposite vectors. The cosine is clamped to [−1, 1]; a zero vector
    has cosine 0 with everything (γ = 0.5).
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"x and y must share their last dimension; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    cos = (_unit_rows(x) * _unit_rows(y).to(x.device)).sum(dim=-1)
    return _gamma_from_cos(cos)


def _upper_pairs(square: Tensor) -> Tensor:
    """Entries (i, j), i < j, of a (K, K) matrix in row-major order → (K(K−1)/2,)."""
    K = square.shape[0]
    i, j = torch.triu_indices(K, K, offset=1, device=square.device)
    return square[i, j]


def _pairwise_cosines(vectors: Tensor) -> Tensor:
    """Cosines of all unordered row pairs i < j of a (K, d) matrix → (K(K−1)/2,)."""
    u = _unit_rows(vectors)
    return _upper_pairs(u @ u.T)


def pairwise_angular_similarity(vectors: Tensor) -> Tensor:
    """γ over all unordered row pairs i < j of ``vectors`` (K, d) (MATH.md §3).

    Returns (K(K−1)/2,) float64 in row-major order of the strict upper triangle:
    (0,1), (0,2), …, (0,K−1), (1,2), ….
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must have shape (K, d); got {tuple(vectors.shape)}")
    return _gamma_from_cos(_pairwise_cosines(vectors))


def _resolve_with_classifier(
    labels: Tensor, classifier: Tensor | None, num_classes: int | None
) -> int | None:
    """``num_classes`` defaults to the classifier's number of rows when one is given."""
    if classifier is None:
        return num_classes
    if classifier.ndim != 2:
        raise ValueError(f"classifier must have shape (K, d); got {tuple(classifier.shape)}")
    if num_classes is None:
        return classifier.shape[0]
    if num_classes != classifier.shape[0]:
        raise ValueError(
            f"classifier has {classifier.shape[0]} rows but num_classes={num_classes}; "
            "it needs one row per class"
        )
    return num_classes


def _check_classifier(classifier: Tensor, means: Tensor) -> None:
    if classifier.shape != means.shape:
        raise ValueError(
            f"classifier must have shape (K, d) = {tuple(means.shape)}; "
            f"got {tuple(classifier.shape)}"
        )


def _means_of(
    features: Tensor, labels: Tensor, num_classes: int | None, means: Tensor | None
) -> Tensor:
    """The class means (K, d) float64: ``means`` when given (checked, not recomputed),
    else :func:`class_means` of ``features`` and ``labels`` (every class present)."""
    if means is None:
        return class_means(features, labels, num_classes)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d); got {tuple(means.shape)}")
    K = _resolve_num_classes(labels, means.shape[0] if num_classes is None else num_classes)
    if tuple(means.shape) != (K, features.shape[1]):
        raise ValueError(
            f"means must have shape (K, d) = ({K}, {features.shape[1]}), one row per class "
            f"of the features; got {tuple(means.shape)}"
        )
    if bool(means.isnan().any()):
        missing = means.isnan().any(dim=1).nonzero().flatten().tolist()[:_MAX_NAMED]
        raise ValueError(
            f"means has NaN rows (classes {', '.join(map(str, missing))}); "
            "every class needs at least one sample"
        )
    return means.double()


def gamma_distributions(
    features: Tensor,
    labels: Tensor,
    *,
    classifier: Tensor | None = None,
    num_classes: int | None = None,
    means: Tensor | None = None,
) -> dict[str, Tensor]:
    """The three angular-similarity distributions of MATH.md §3, as float64 tensors.

    - ``"class_means"`` (K(K−1)/2,): γ over pairs of un-centred class means (separation);
    - ``"weights"`` (K(K−1)/2,): γ over pairs of classifier rows; only when ``classifier``
      (K, d) is given;
    - ``"within"`` (n,): γ of every embedding h_i against its own class mean μ_{y_i}.

    features (n, d), labels (n,). ``num_classes`` defaults to the classifier's row count,
    else the rows of ``means``, else ``labels.max() + 1``. ``means`` (K, d), float64: the
    class means of ``features`` when the caller has them already (:func:`class_means`),
    used as given instead of being computed again.
    """
    labels = _check_features_labels(features, labels)
    num_classes = _resolve_with_classifier(labels, classifier, num_classes)
    means = _means_of(features, labels, num_classes, means)
    out = {"class_means": pairwise_angular_similarity(means)}
    if classifier is not None:
        _check_classifier(classifier, means)
        out["weights"] = pairwise_angular_similarity(classifier.to(means.device))
    out["within"] = angular_similarity(features, means[labels.to(means.device)])
    return out


def _std_over_mean(x: Tensor) -> float:
    return float(x.std(unbiased=False) / x.mean())


# Longer than 60 lines only through its docstring (it defines each statistic); the code
# itself is under 60 lines.
def neural_collapse(
    features: Tensor,
    labels: Tensor,
    *,
    classifier: Tensor | None = None,
    num_classes: int | None = None,
    means: Tensor | None = None,
) -> dict[str, float]:
    """Neural-collapse statistics (MATH.md §3) of features (n, d) with labels (n,).

    With un-centred class means μ_c, the global mean μ_G = (1/K) Σ_c μ_c (the mean of the
    class means, so the centred means sum to zero under class imbalance too) and centred
    means μ̃_c = μ_c − μ_G, rows of M̃ (K, d):

    - ``nc1`` = tr(Σ_W Σ_B⁺)/K, Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ,
      Σ_B = (1/K) Σ_c μ̃_c μ̃_cᵀ. No d×d matrix is formed: with the thin SVD
      M̃ = U S Vᵀ, Σ_B⁺ = K V S⁻² Vᵀ over the singular values s_j > s_max·max(K, d)·eps,
      so nc1 = Σ_j ‖R v_j‖² / (n s_j²) with R (n, d) the residuals h_i − μ_{y_i};
    - ``equinorm`` = std_c ‖μ̃_c‖ / mean_c ‖μ̃_c‖ (population std);
    - ``equiangularity`` = population std of cos(μ̃_c, μ̃_c') over unordered pairs c < c';
    - ``max_angle`` = mean over pairs c < c' of |cos(μ̃_c, μ̃_c') + 1/(K−1)|;
    - with ``classifier`` W (K, d): ``self_duality`` = ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F and
      ``w_equinorm`` = std_c ‖w_c‖ / mean_c ‖w_c‖ (population std).

    All are 0 at perfect collapse onto a simplex ETF (with W a multiple of M̃). Statistics
    that are undefined are NaN: all of them when the class means coincide (M̃ = 0, e.g.
    K = 1), the angle statistics when any centred mean is zero.
    ``num_classes`` defaults to the classifier's row count, else the rows of ``means``,
    else ``labels.max() + 1``; ``means`` (K, d), float64, are the class means when the
    caller has them already (used as given, as in :func:`gamma_distributions`).
    """
    labels = _check_features_labels(features, labels)
    num_classes = _resolve_with_classifier(labels, classifier, num_classes)
    means = _means_of(features, labels, num_classes, means)
    K, d = means.shape
    centred = means - means.mean(dim=0)
    labels = labels.to(means.device)
    residuals = features.double().to(means.device) - means[labels]
    n = residuals.shape[0]

    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    nan = float("nan")
    if s.numel() == 0 or not float(s[0]) > 0:
        nc1 = nan
    else:
        keep = s > s[0] * max(K, d) * torch.finfo(torch.float64).eps
        projections = residuals @ vh[keep].T  # (n, r): R v_j
        nc1 = float((projections.square().sum(dim=0) / s[keep].square()).sum() / n)

    norms = torch.linalg.vector_norm(centred, dim=1)
    out = {"nc1": nc1, "equinorm": _std_over_mean(norms)}
    if K >= 2 and float(norms.min()) > 0:
        cos = _pairwise_cosines(centred)
        out["equiangularity"] = float(cos.std(unbiased=False))
        out["max_angle"] = float((cos + 1.0 / (K - 1)).abs().mean())
    else:
        out["equiangularity"] = out["max_angle"] = nan

    if classifier is not None:
        _check_classifier(classifier, means)
        w = classifier.double().to(means.device)
        w_norm, m_norm = torch.linalg.matrix_norm(w), torch.linalg.matrix_norm(centred)
        out["self_duality"] = (
            float(torch.linalg.matrix_norm(w / w_norm - centred / m_norm))
            if float(w_norm) > 0 and float(m_norm) > 0
            else nan
        )
        out["w_equinorm"] = _std_over_mean(torch.linalg.vector_norm(w, dim=1))
    return out
