"""Tiny synthetic multi-site data for tests: blobs whose contrast differs per site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LABEL_NAMES = {"background": 0, "inner": 1, "outer": 2}
SPACING = (1.5, 1.5, 3.0)
ORIGIN = (-20.0, 10.0, 5.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def case_arrays(rng: np.random.Generator, contrast: tuple[float, float, float], shape=(8, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A two-class ellipsoid ("outer" ring around an "inner" core) with site-specific intensities."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    centre = rng.uniform(-0.15, 0.15, size=3)
    radius = ((z - centre[0]) / 0.9) ** 2 + ((y - centre[1]) / 0.6) ** 2 + ((x - centre[2]) / 0.55) ** 2
    label = np.zeros(shape, np.uint8)
    label[radius < 1.0] = 2
    label[radius < 0.35] = 1
    image = np.choose(label, contrast).astype(np.float32) + rng.normal(0, 0.15, shape).astype(np.float32)
    return image, label


def to_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def write_site(root: Path, name: str, contrast: tuple[float, float, float], cases: int = 4, seed: int = 0) -> Path:
    """A site folder in the nnU-Net raw layout with ``cases`` cases."""
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, label = case_arrays(rng, contrast)
        sitk.WriteImage(to_image(image), str(folder / "imagesTr" / f"{name}_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(to_image(label), str(folder / "labelsTr" / f"{name}_{index:03d}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"labels": LABEL_NAMES}))
    return folder


#: Contrasts (background, inner, outer) of three sites; the ordering flips between sites.
SITE_CONTRASTS = {"siteA": (0.0, 1.0, 2.0), "siteB": (0.0, 2.0, 1.0), "siteC": (2.0, 0.0, 1.0)}

#: A configuration small enough that a stage takes about a second on a CPU.
TINY_OVERRIDES = {
    "net.filters": [4, 8, 16],
    "net.patch_size": [32, 32],
    "preprocess.target_spacing": None,
    "train.epochs": 1,
    "train.steps_per_epoch": 4,
    "train.batch_size": 4,
    "train.checkpoint_every": 2,
    "continual.buffer_samples": 8,
    "continual.buffer_batch_size": 4,
}


def write_config(path: Path, overrides: dict) -> Path:
    """Write dotted ``overrides`` as a nested JSON config file (the form ``dakr adapt --config`` reads)."""
    sections: dict = {}
    for key, value in overrides.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    path.write_text(json.dumps(sections))
    return path
