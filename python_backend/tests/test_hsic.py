"""Tests for dakr.continual.hsic against a plain NumPy reference and known identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dakr.continual.hsic import (
    MIN_SAMPLES,
    SIGMA_FLOOR,
    centered_gram,
    gaussian_kernel,
    hsic,
    median_bandwidth,
    normalized_hsic,
)

KERNELS = ("gaussian", "linear")


# ---- NumPy reference (float64, written from the formulas in METHOD.md) -------------------------


def np_gram(x: np.ndarray, kernel: str) -> np.ndarray:
    if kernel == "linear":
        return x @ x.T
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    pair_distances = np.sqrt(d2[np.triu_indices(len(x), k=1)])
    sigma = max(np.sort(pair_distances)[(len(pair_distances) - 1) // 2], SIGMA_FLOOR)  # lower median
    return np.exp(-d2 / (2 * sigma**2))


def np_hsic(x: np.ndarray, y: np.ndarray, kernel: str) -> float:
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(np_gram(x, kernel) @ h @ np_gram(y, kernel) @ h) / (n - 1) ** 2)


def np_nhsic(x: np.ndarray, y: np.ndarray, kernel: str) -> float:
    return np_hsic(x, y, kernel) / np.sqrt(np_hsic(x, x, kernel) * np_hsic(y, y, kernel))


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


# ---- fixtures -----------------------------------------------------------------------------------


def dependent_pair(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.tanh(x[:, :3] @ torch.randn(3, 4, generator=g)) + 0.3 * torch.randn(n, 4, generator=g)
    return x, y


# ---- agreement with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_hsic_and_normalized_hsic_match_numpy_reference(kernel: str) -> None:
    x, y = dependent_pair(20)
    expected = np_hsic(x.double().numpy(), y.double().numpy(), kernel)
    assert hsic(x, y, kernel).item() == pytest.approx(expected, rel=1e-4)
    expected_norm = np_nhsic(x.double().numpy(), y.double().numpy(), kernel)
    assert normalized_hsic(x, y, kernel).item() == pytest.approx(expected_norm, rel=1e-4)


def test_linear_hsic_equals_cross_covariance_form() -> None:
    x, y = dependent_pair(12)
    xc, yc = (x - x.mean(0)).double().numpy(), (y - y.mean(0)).double().numpy()
    expected = np.linalg.norm(xc.T @ yc) ** 2 / (12 - 1) ** 2  # |(HX)ᵀ(HY)|²_F / (n-1)²
    assert hsic(x, y, "linear").item() == pytest.approx(expected, rel=1e-4)


def test_linear_normalized_hsic_is_linear_cka() -> None:
    x, y = dependent_pair(30, seed=3)
    assert normalized_hsic(x, y, "linear").item() == pytest.approx(np_linear_cka(x.double().numpy(), y.double().numpy()), rel=1e-4)


def test_centered_gram_rows_and_columns_sum_to_zero() -> None:
    k = gaussian_kernel(torch.randn(9, 4))
    centred = centered_gram(k)
    assert torch.allclose(centred.sum(0), torch.zeros(9), atol=1e-5)
    assert torch.allclose(centred.sum(1), torch.zeros(9), atol=1e-5)
    assert not torch.allclose(centred, torch.zeros(9, 9))


def test_median_bandwidth_is_lower_median_of_pair_distances_without_gradient() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], requires_grad=True)
    # pair distances: 1, 3, 7, 2, 6, 4 -> sorted 1 2 3 4 6 7 -> lower median 3
    sigma = median_bandwidth(x)
    assert sigma.item() == pytest.approx(3.0)
    assert not sigma.requires_grad


def test_median_bandwidth_is_floored_for_identical_samples() -> None:
    assert median_bandwidth(torch.ones(5, 3)).item() == pytest.approx(SIGMA_FLOOR)


# ---- identities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_normalized_hsic_of_x_with_itself_is_one(kernel: str) -> None:
    x, _ = dependent_pair(16)
    assert normalized_hsic(x, x, kernel).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [1e-3, 7.5, 1e3])
def test_normalized_hsic_is_invariant_to_isotropic_scaling(kernel: str, scale: float) -> None:
    x, y = dependent_pair(16)
    reference = normalized_hsic(x, y, kernel).item()
    assert normalized_hsic(scale * x, y, kernel).item() == pytest.approx(reference, rel=1e-4)
    assert normalized_hsic(x, scale * y, kernel).item() == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_normalized_hsic_is_invariant_to_permuting_feature_columns(kernel: str) -> None:
    x, y = dependent_pair(16)
    reference = normalized_hsic(x, y, kernel).item()
    permuted = normalized_hsic(x[:, torch.randperm(6)], y[:, torch.tensor([2, 0, 3, 1])], kernel).item()
    assert permuted == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_normalized_hsic_is_invariant_to_a_large_common_offset(kernel: str) -> None:
    x, y = dependent_pair(16)
    assert normalized_hsic(x + 500.0, y, kernel).item() == pytest.approx(normalized_hsic(x, y, kernel).item(), rel=1e-3)


@pytest.mark.parametrize("kernel", KERNELS)
def test_independent_samples_give_near_zero_and_dependent_ones_clearly_more(kernel: str) -> None:
    # The biased estimator is far from 0 for small n (about 0.5 at n=16), so use a large n.
    g = torch.Generator().manual_seed(1)
    n = 1000
    x, noise = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    independent = normalized_hsic(x, noise, kernel).item()
    dependent = normalized_hsic(x, x[:, :4] @ torch.randn(4, 3, generator=g) + 0.5 * noise[:, :3], kernel).item()
    assert 0.0 <= independent < 0.03
    assert dependent > 0.3


def test_gaussian_kernel_sees_nonlinear_dependence_the_linear_kernel_misses() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 1, generator=g)
    y = x**2 + 0.1 * torch.randn(1000, 1, generator=g)  # uncorrelated with x, but dependent
    assert normalized_hsic(x, y, "linear").item() < 0.03
    assert normalized_hsic(x, y, "gaussian").item() > 0.2


# ---- robustness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradients_are_finite_and_nonzero(kernel: str) -> None:
    x, y = dependent_pair(16)
    x.requires_grad_(True)
    y.requires_grad_(True)
    (1.0 - normalized_hsic(x, y, kernel)).backward()
    for grad in (x.grad, y.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradients_stay_finite_with_duplicate_rows(kernel: str) -> None:
    x, y = dependent_pair(8)
    x = torch.cat([x, x[:2]]).requires_grad_(True)
    y = torch.cat([y, y[:2]])
    normalized_hsic(x, y, kernel).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_fewer_than_four_samples_return_none(kernel: str, n: int) -> None:
    assert MIN_SAMPLES == 4
    x, y = torch.randn(n, 3), torch.randn(n, 2)
    assert hsic(x, y, kernel) is None
    assert normalized_hsic(x, y, kernel) is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_four_samples_are_enough(kernel: str) -> None:
    x, y = dependent_pair(4)
    value = normalized_hsic(x, y, kernel)
    assert value is not None and torch.isfinite(value)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("constant", [0.0, 1000.3])
def test_constant_features_give_zero_alignment_and_finite_gradients(kernel: str, constant: float) -> None:
    _, y = dependent_pair(8)
    x = torch.full((8, 5), constant, requires_grad=True)
    y.requires_grad_(True)
    forward = normalized_hsic(x, y, kernel)
    backward = normalized_hsic(y, x, kernel)
    assert forward.item() == 0.0 and backward.item() == 0.0
    assert torch.isfinite(hsic(x, y, kernel))
    (forward + backward).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_computes_in_float32_under_autocast_and_from_half_inputs(kernel: str) -> None:
    x, y = dependent_pair(16)
    reference = normalized_hsic(x, y, kernel)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = normalized_hsic(x, y, kernel)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    from_half = normalized_hsic(x.to(torch.bfloat16), y.to(torch.bfloat16), kernel)
    assert from_half.dtype == torch.float32


def test_rejects_unknown_kernel_and_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="continual.kernel"):
        hsic(torch.randn(8, 2), torch.randn(8, 2), "polynomial")
    with pytest.raises(ValueError, match="paired"):
        normalized_hsic(torch.randn(8, 2), torch.randn(7, 2))
    with pytest.raises(ValueError, match="paired"):
        normalized_hsic(torch.randn(8, 2, 2), torch.randn(8, 2))
