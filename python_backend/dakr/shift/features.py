"""What the network sees in one volume: a feature-space fingerprint and its uncertainty.

One inference pass gives both. A hook on the bottleneck pools each window's feature map to a
2×2 (2D) or 2×2×2 (3D) grid, so the fingerprint keeps coarse spatial layout (the bottleneck
ends in a non-affine instance norm, so plain global averages barely vary between images); the
case embedding is the mean and the standard deviation of these vectors over all windows. The
softmax of the same pass gives the voxel-wise normalised entropy (0 = certain, 1 = uniform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dakr.config import ExperimentConfig
from dakr.inference import predict_probabilities
from dakr.nets.factory import unwrap

#: Side of the pooled grid each window's bottleneck map is reduced to.
POOLED_SIDE = 2


@dataclass
class CaseAnalysis:
    """Embedding (features,), normalised entropy map (z, y, x) and class-index prediction (z, y, x)."""

    embedding: np.ndarray
    entropy: np.ndarray
    prediction: np.ndarray

    @property
    def uncertainty(self) -> float:
        """Mean normalised entropy over the predicted foreground (over the whole volume if none)."""
        foreground = self.prediction > 0
        region = self.entropy[foreground] if foreground.any() else self.entropy
        return float(region.mean())


class _PooledWindows:
    """Collects the pooled bottleneck vector of every window the inferer feeds the network."""

    def __init__(self, model: nn.Module) -> None:
        self.vectors: list[torch.Tensor] = []
        self._handle = unwrap(model).bottleneck.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        pool = F.adaptive_avg_pool2d if output.ndim == 4 else F.adaptive_avg_pool3d
        self.vectors.append(pool(output.float(), POOLED_SIDE).flatten(1).cpu())

    def remove(self) -> None:
        self._handle.remove()


def analyse_array(model: nn.Module, image: np.ndarray, config: ExperimentConfig, device: torch.device) -> CaseAnalysis:
    """Embedding, entropy map and prediction of a preprocessed image (z, y, x) float32."""
    windows = _PooledWindows(model)
    try:
        probabilities = predict_probabilities(model, image, config, device)
    finally:
        windows.remove()
    vectors = torch.cat(windows.vectors).double().numpy()
    embedding = np.concatenate([vectors.mean(axis=0), vectors.std(axis=0)])
    return CaseAnalysis(embedding, normalised_entropy(probabilities), probabilities.argmax(axis=0).astype(np.uint8))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Voxel-wise entropy of class probabilities (classes, *spatial) divided by log(classes), float32."""
    classes = probabilities.shape[0]
    clipped = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(probabilities * np.log(clipped)).sum(axis=0)
    return (entropy / np.log(classes)).astype(np.float32) if classes > 1 else np.zeros_like(entropy, dtype=np.float32)
