"""Whole-volume inference: MONAI slice-wise (2D) or sliding-window (3D) prediction.

Input and output are arrays on the preprocessed grid; :func:`predict_volume` adds the
preprocessing and maps the prediction back onto the original image grid, so the label map
overlays the input exactly (same size, spacing, origin and direction).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from torch import nn

from dakr.config import ExperimentConfig
from dakr.data.preprocessing import preprocess_image, restore_geometry


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def _logits(model: nn.Module, image: np.ndarray, config: ExperimentConfig, device: torch.device) -> torch.Tensor:
    """Class logits (1, classes, z, y, x) on ``device`` of a preprocessed image (z, y, x) float32.

    Hooks registered on ``model`` (for example on its bottleneck) see every window of the
    slice-wise (2D) or sliding-window (3D) pass.
    """
    net = config.net
    if net.spatial_dims == 2:
        inferer = SliceInferer(roi_size=tuple(net.patch_size), spatial_dim=0, sw_batch_size=32, overlap=0.25, progress=False)
    else:
        inferer = SlidingWindowInferer(roi_size=tuple(net.patch_size), sw_batch_size=4, overlap=0.25, mode="gaussian")
    was_training = model.training
    model.eval()
    batch = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device)
    amp = device.type == "cuda" and config.train.amp and torch.cuda.is_bf16_supported()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = inferer(batch, model)
    model.train(was_training)
    return logits


def predict_probabilities(model: nn.Module, image: np.ndarray, config: ExperimentConfig, device: torch.device) -> np.ndarray:
    """Softmax class probabilities (classes, z, y, x) float32 for a preprocessed image (z, y, x) float32.

    Hooks registered on ``model`` see every window of the pass (see :func:`_logits`).
    """
    return torch.softmax(_logits(model, image, config, device).float(), dim=1)[0].cpu().numpy()


def predict_array(model: nn.Module, image: np.ndarray, config: ExperimentConfig, device: torch.device) -> np.ndarray:
    """Class-index map (z, y, x) uint8 for a preprocessed image (z, y, x) float32 (argmax on the device)."""
    return _logits(model, image, config, device).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def predict_volume(
    model: nn.Module, image: sitk.Image, config: ExperimentConfig, label_values: list[int], device: torch.device
) -> sitk.Image:
    """Label map of ``image`` with its exact geometry; class indices mapped to ``label_values``."""
    array, reference = preprocess_image(image, config.preprocess)
    indices = predict_array(model, array, config, device)
    values = np.asarray(label_values, dtype=np.uint8)[indices]
    return restore_geometry(values, reference, image)
