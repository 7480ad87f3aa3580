"""Small synthetic labelled cases for the module's self-test (in Slicer and under pytest).

A case is a brain-like phantom: an outer shell (label 1) around an inner core (label 2) in a noisy
background; each site has its own intensity scale, offset and noise so that sites differ.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .mrmlio import labelmap_to_segmentation

#: Label set of the synthetic cases.
SYNTHETIC_LABELS = {"background": 0, "shell": 1, "core": 2}
#: Backend config overrides that make an adapt job on phantoms take seconds on a CPU.
TINY_TRAINING = {
    "train.steps_per_epoch": 3,
    "train.batch_size": 4,
    "net.filters": [8, 16, 32],
    "net.patch_size": [16, 16],
    "preprocess.target_spacing": None,
    "continual.buffer_batch_size": 4,
    "continual.mapping_hidden": 16,
    "continual.mapping_dim": 8,
}


def phantom_arrays(seed: int, shape_kji: tuple[int, int, int] = (12, 32, 32), contrast: float = 1.0,
                   offset: float = 0.0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """An image (float32) and label map (uint8), both (k, j, i), of one random phantom."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    centre = np.array(shape_kji, dtype=np.float32) / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = np.array(shape_kji, dtype=np.float32) * rng.uniform(0.28, 0.36, 3)
    distance = np.sqrt(((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2)
    labels = np.zeros(shape_kji, dtype=np.uint8)
    labels[distance < 1.0] = 1
    labels[distance < 0.55] = 2
    image = offset + contrast * np.choose(labels, [0.1, 0.6, 1.0]).astype(np.float32)
    image += rng.normal(0.0, noise, shape_kji).astype(np.float32)
    return image.astype(np.float32), labels


def add_phantom_case(scene: "slicer.vtkMRMLScene", name: str, seed: int, contrast: float = 1.0, offset: float = 0.0,
                     spacing: tuple[float, float, float] = (1.2, 1.1, 2.5),
                     origin: tuple[float, float, float] = (-20.0, -18.0, -15.0),
                     ) -> tuple["slicer.vtkMRMLScalarVolumeNode", "slicer.vtkMRMLSegmentationNode"]:
    """Add a phantom image volume and its segmentation (segments ``shell`` and ``core``) to the scene."""
    image, labels = phantom_arrays(seed, contrast=contrast, offset=offset)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume.SetSpacing(*spacing)
    volume.SetOrigin(*origin)
    slicer.util.updateVolumeFromArray(volume, image)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"__{name}_labels__")
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labelmap, labels)
    try:
        segmentation = labelmap_to_segmentation(labelmap, f"{name} segmentation", SYNTHETIC_LABELS, volume)
    finally:
        scene.RemoveNode(labelmap)
    return volume, segmentation
