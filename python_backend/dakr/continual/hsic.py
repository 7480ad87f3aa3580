"""Hilbert-Schmidt independence criterion (HSIC) between paired samples (METHOD.md, "HSIC").

Pure, device-agnostic tensor functions. Every function takes features ``x`` of shape ``(n, p)``
and ``y`` of shape ``(n, q)`` whose rows are paired samples, and computes in float32 even inside
an autocast region. With fewer than :data:`MIN_SAMPLES` samples the estimators are meaningless
and the functions return ``None`` so that the caller skips the loss term.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Fewest paired samples for which HSIC is computed; below it the functions return ``None``.
MIN_SAMPLES = 4
#: Floor of the Gaussian bandwidth, so identical samples never divide by zero.
SIGMA_FLOOR = 1e-6
#: A centred Gram matrix whose Frobenius norm is at most this fraction of the uncentred one
#: carries no variation beyond float32 rounding; its normalised HSIC is defined as 0.
DEGENERATE_RTOL = 1e-5
KERNELS = ("gaussian", "linear")
#: ``"biased"``: tr(KHLH)/(n-1)²; ``"unbiased"``: HSIC_1 of Song et al. (2012), zero mean under independence.
ESTIMATORS = ("biased", "unbiased")


def centered_gram(k: Tensor) -> Tensor:
    """Return ``H K H`` with ``H = I - 11ᵀ/n`` for a square Gram matrix ``k`` of shape ``(n, n)``."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def linear_kernel(x: Tensor) -> Tensor:
    """Linear Gram matrix ``X Xᵀ`` of shape ``(n, n)`` for features ``x`` of shape ``(n, p)``."""
    return x @ x.T


def squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``(n, n)`` of the rows of ``x`` ``(n, p)``, clamped at 0.

    Uses the expansion ``|a|² + |b|² - 2a·b`` (no square root, so gradients stay finite at zero
    distance); centre ``x`` first for accuracy when the rows share a large offset.
    """
    sq_norms = (x * x).sum(dim=1)
    return (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)


def median_bandwidth(x: Tensor) -> Tensor:
    """Median heuristic: median pairwise distance between distinct rows of ``x`` ``(n, p)``.

    Computed without gradient and floored at :data:`SIGMA_FLOOR`; returns a 0-dim tensor.
    """
    with torch.no_grad():
        n = x.shape[0]
        rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)
        distances = squared_distances(x.detach())[rows, cols].sqrt()
        return distances.median().clamp_min(SIGMA_FLOOR)


def gaussian_kernel(x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
    """Gaussian Gram matrix ``K_ij = exp(-|x_i - x_j|² / (2σ²))`` of shape ``(n, n)``.

    ``x`` has shape ``(n, p)``; ``sigma=None`` uses :func:`median_bandwidth` (no gradient).
    """
    if sigma is None:
        sigma = median_bandwidth(x)
    return torch.exp(-squared_distances(x) / (2.0 * sigma**2))


def hsic(x: Tensor, y: Tensor, kernel: str = "gaussian") -> Tensor | None:
    """Biased HSIC estimator ``tr(K H L H) / (n-1)²`` as a 0-dim float32 tensor.

    ``x``: ``(n, p)``, ``y``: ``(n, q)``, rows paired. For ``kernel="linear"`` this equals
    ``|(HX)ᵀ(HY)|²_F / (n-1)²``. Returns ``None`` when ``n < MIN_SAMPLES``.
    """
    grams = _centred_grams(x, y, kernel)
    if grams is None:
        return None
    (k_centred, _), (l_centred, _) = grams
    n = k_centred.shape[0]
    return (k_centred * l_centred).sum() / (n - 1) ** 2


def unbiased_hsic(x: Tensor, y: Tensor, kernel: str = "gaussian") -> Tensor | None:
    """Unbiased estimator HSIC_1 (Song et al., 2012) as a 0-dim float32 tensor.

    With ``K~``, ``L~`` the Gram matrices whose diagonals are set to zero,

        HSIC_1 = [tr(K~L~) + 1ᵀK~1 · 1ᵀL~1 / ((n-1)(n-2)) − 2/(n-2) · 1ᵀK~L~1] / (n(n-3)).

    Its expectation is the population HSIC, so independent data score 0 on average at any ``n``
    (the value can be negative). Needs ``n >= MIN_SAMPLES`` (4); returns ``None`` below.
    """
    grams = _grams(x, y, kernel)
    return None if grams is None else _unbiased_from_grams(*grams)


def normalized_hsic(x: Tensor, y: Tensor, kernel: str = "gaussian", estimator: str = "biased") -> Tensor | None:
    """Normalised HSIC ``HSIC(X,Y) / sqrt(HSIC(X,X)·HSIC(Y,Y))``, a 0-dim float32 tensor.

    ``estimator="biased"`` (default) lies in [0, 1]; ``"unbiased"`` uses :func:`unbiased_hsic`
    for all three terms and lies in [-1, 1] (clamped there; near 0 for independent data even at
    small ``n``, where the biased form has a large positive floor).
    """
    if estimator == "biased":
        return _normalized_biased(x, y, kernel)
    if estimator != "unbiased":
        raise ValueError(f"unknown HSIC estimator {estimator!r}; use one of {ESTIMATORS} (config key continual.hsic_estimator)")
    grams = _grams(x, y, kernel)
    if grams is None:
        return None
    k, l = grams
    k_self, l_self = _unbiased_from_grams(k, k), _unbiased_from_grams(l, l)
    varies = (k_self > DEGENERATE_RTOL**2 * (k * k).mean()) & (l_self > DEGENERATE_RTOL**2 * (l * l).mean())
    denominator = torch.where(varies, k_self * l_self, torch.ones_like(k_self)).sqrt()
    value = (_unbiased_from_grams(k, l) / denominator).clamp(-1.0, 1.0)
    return torch.where(varies, value, torch.zeros_like(value))


def _unbiased_from_grams(k: Tensor, l: Tensor) -> Tensor:
    n = k.shape[0]
    k_tilde = k - torch.diag_embed(torch.diagonal(k))
    l_tilde = l - torch.diag_embed(torch.diagonal(l))
    trace_term = (k_tilde * l_tilde).sum()
    sum_term = k_tilde.sum() * l_tilde.sum() / ((n - 1) * (n - 2))
    cross_term = 2.0 / (n - 2) * (k_tilde.sum(dim=0) * l_tilde.sum(dim=1)).sum()
    return (trace_term + sum_term - cross_term) / (n * (n - 3))


def _normalized_biased(x: Tensor, y: Tensor, kernel: str) -> Tensor | None:
    """Normalised HSIC ``HSIC(X,Y) / sqrt(HSIC(X,X)·HSIC(Y,Y))`` in [0, 1], a 0-dim float32 tensor.

    ``x``: ``(n, p)``, ``y``: ``(n, q)``, rows paired; the linear kernel gives linear CKA.
    Returns ``None`` when ``n < MIN_SAMPLES``. When either side does not vary across samples
    (constant features: its centred Gram matrix is zero up to float32 rounding, see
    :data:`DEGENERATE_RTOL`) the value is 0 with zero gradient instead of ``0/0``.
    """
    grams = _centred_grams(x, y, kernel)
    if grams is None:
        return None
    (k_centred, k), (l_centred, l) = grams
    k_self, l_self = (k_centred * k_centred).sum(), (l_centred * l_centred).sum()
    varies = (k_self > DEGENERATE_RTOL**2 * (k * k).sum()) & (l_self > DEGENERATE_RTOL**2 * (l * l).sum())
    denominator = torch.where(varies, k_self * l_self, torch.ones_like(k_self)).sqrt()
    return torch.where(varies, (k_centred * l_centred).sum() / denominator, torch.zeros_like(k_self))


def _centred_grams(x: Tensor, y: Tensor, kernel: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """Return ``((HKH, K), (HLH, L))`` in float32, or ``None`` when ``n < MIN_SAMPLES``."""
    grams = _grams(x, y, kernel)
    if grams is None:
        return None
    return (centered_gram(grams[0]), grams[0]), (centered_gram(grams[1]), grams[1])


def _grams(x: Tensor, y: Tensor, kernel: str) -> tuple[Tensor, Tensor] | None:
    """Return the Gram matrices ``(K, L)`` in float32, or ``None`` when ``n < MIN_SAMPLES``."""
    _check_inputs(x, y, kernel)
    if x.shape[0] < MIN_SAMPLES:
        return None
    with torch.autocast(device_type=x.device.type, enabled=False):
        grams = []
        for features in (x, y):
            features = features.float()
            features = features - features.mean(dim=0, keepdim=True)
            grams.append(linear_kernel(features) if kernel == "linear" else gaussian_kernel(features))
        return grams[0], grams[1]


def _check_inputs(x: Tensor, y: Tensor, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown HSIC kernel {kernel!r}; use one of {KERNELS} (config key continual.kernel)")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"HSIC needs paired 2-D features (n, p) and (n, q), got {tuple(x.shape)} and {tuple(y.shape)}; "
            "reduce feature maps to one vector per sample first"
        )
