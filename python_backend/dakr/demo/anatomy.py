"""Demo anatomy: tissue fractions of the MNI ICBM152 2009a template and random subjects.

The template is the copy that nilearn bundles inside its wheel (1 mm, skull-stripped, T1 plus
grey- and white-matter probability maps: ``mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``), so
nothing is downloaded. It is the MNI ICBM 2009a nonlinear symmetric template:

- Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL, Brain Development
  Cooperative Group. Unbiased average age-appropriate atlases for pediatric studies.
  NeuroImage 54(1):313-327, 2011.
- Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average
  age-appropriate brain templates from birth to adulthood. NeuroImage 47(Suppl 1):S102, 2009.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express or
implied warranty.

Arrays in this module are in NIfTI voxel order (i, j, k) = (x, y, z) with a RAS affine; they are
turned into SimpleITK images (LPS, arrays z, y, x) only by :func:`array_to_sitk`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dakr.extras import require_extra

if TYPE_CHECKING:
    import nibabel as nib

LABEL_NAMES: dict[str, int] = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
#: Tissue channels of a fraction array, in label order (label = channel index + 1).
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")

#: Short reference and licence notice of the template, written into each dataset.json.
TEMPLATE_REFERENCE = (
    "MNI ICBM 2009a nonlinear symmetric template (as bundled with nilearn): Fonov et al., "
    "NeuroImage 54(1):313-327, 2011; Fonov et al., NeuroImage 47(Suppl 1):S102, 2009"
)
TEMPLATE_LICENCE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software "
    "and its documentation for any purpose and without fee is hereby granted, provided that the "
    "above copyright notice appear in all copies. The authors and McGill University make no "
    "representations about the suitability of this software for any purpose. It is provided "
    '"as is" without express or implied warranty.'
)
_TEMPLATE_MARGIN_MM = 12.0
_TEXTURE_CLIP = 0.5


@dataclass(frozen=True)
class TissueVolume:
    """Tissue fractions and texture on a voxel grid.

    fractions: (3, X, Y, Z) float32 CSF/GM/WM fractions, zero outside the brain, summing to <= 1
    (the rest is background). texture: (X, Y, Z) float32 relative deviation of the T1 template
    from what its tissue mixture predicts (0 outside the brain). affine: 4x4 RAS voxel-to-mm.
    """

    fractions: np.ndarray
    texture: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(self.fractions.shape[1:])  # type: ignore[return-value]


def array_to_sitk(array_xyz: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """SimpleITK image from a NIfTI-ordered array and its RAS affine (RAS -> LPS: x and y flip)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def nifti_to_sitk(image: nib.Nifti1Image) -> sitk.Image:
    """SimpleITK image with the geometry of a nibabel NIfTI image."""
    return array_to_sitk(np.asanyarray(image.dataobj), image.affine)


def hard_labels(fractions: np.ndarray) -> np.ndarray:
    """uint8 labels by the largest of background (1 - sum) and the CSF/GM/WM fractions."""
    background = 1.0 - fractions.sum(axis=0, keepdims=True)
    return np.argmax(np.concatenate([background, fractions]), axis=0).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def template_fractions() -> tuple[np.ndarray, np.ndarray]:
    """CSF/GM/WM fractions (3, X, Y, Z) and RAS affine of the 1 mm template (nilearn, offline).

    GM and WM are the template probability maps restricted to the hole-filled brain mask;
    CSF = clip(mask - GM - WM, 0, 1).
    """
    datasets = require_extra("nilearn.datasets", "demo", "Building the demo data")  # only a data build needs it

    mask_img = datasets.load_mni152_brain_mask()
    mask = ndimage.binary_fill_holes(np.asanyarray(mask_img.dataobj) > 0).astype(np.float32)
    gm = datasets.load_mni152_gm_template().get_fdata(dtype=np.float32) * mask
    wm = datasets.load_mni152_wm_template().get_fdata(dtype=np.float32) * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    fractions = np.stack([csf, gm, wm])
    fractions.setflags(write=False)
    return fractions, mask_img.affine


def _texture(t1: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Relative residual of the T1 template after a least-squares fit of per-tissue means."""
    brain = fractions.sum(axis=0) > 0.5
    means, *_ = np.linalg.lstsq(fractions[:, brain].T, t1[brain], rcond=None)
    predicted = np.tensordot(means, fractions, axes=1)
    texture = np.zeros_like(t1)
    texture[brain] = t1[brain] / predicted[brain] - 1.0
    return np.clip(texture, -_TEXTURE_CLIP, _TEXTURE_CLIP).astype(np.float32)


def crop_to_brain(volume: TissueVolume, margin_mm: float) -> TissueVolume:
    """Crop to the bounding box of the labelled brain plus ``margin_mm`` (clipped to the grid)."""
    margin = np.ceil(margin_mm / np.linalg.norm(volume.affine[:3, :3], axis=0)).astype(int)
    nonzero = np.nonzero(hard_labels(volume.fractions))
    lo = np.maximum(np.min(nonzero, axis=1) - margin, 0)
    hi = np.minimum(np.max(nonzero, axis=1) + margin + 1, volume.shape)
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ lo + volume.affine[:3, 3]
    return TissueVolume(volume.fractions[(slice(None), *window)], volume.texture[window], affine)


def _read_only(volume: TissueVolume) -> TissueVolume:
    """Mark a cached volume's arrays read-only, so no caller can alter the cache."""
    for array in (volume.fractions, volume.texture, volume.affine):
        array.setflags(write=False)
    return volume


@functools.lru_cache(maxsize=1)
def load_template() -> TissueVolume:
    """The 1 mm template as a :class:`TissueVolume`, cropped to the brain plus a margin."""
    fractions, affine = template_fractions()
    datasets = require_extra("nilearn.datasets", "demo", "Building the demo data")

    t1 = datasets.load_mni152_template().get_fdata(dtype=np.float32)
    volume = TissueVolume(fractions, _texture(t1, fractions), affine)
    return _read_only(crop_to_brain(volume, _TEMPLATE_MARGIN_MM))


@functools.lru_cache(maxsize=2)
def antialiased_template(resolution_mm: float) -> TissueVolume:
    """The 1 mm template blurred (Gaussian, FWHM sqrt(r^2 - 1) mm) for sampling at ``r`` mm."""
    template = load_template()
    sigma_mm = np.sqrt(max(resolution_mm**2 - 1.0, 0.0)) / np.sqrt(8.0 * np.log(2.0))
    if sigma_mm == 0.0:
        return template
    sigma_vox = sigma_mm / np.linalg.norm(template.affine[:3, :3], axis=0)
    fractions = np.stack([ndimage.gaussian_filter(f, sigma_vox) for f in template.fractions])
    texture = ndimage.gaussian_filter(template.texture, sigma_vox)
    return _read_only(TissueVolume(fractions, texture, template.affine))


def output_grid(
    template: TissueVolume, resolution_mm: float, margin_mm: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of a grid at ``resolution_mm`` over the template's brain plus a margin.

    The grid keeps the template's axes; subjects are sampled on it and cropped afterwards.
    """
    voxel_mm = np.linalg.norm(template.affine[:3, :3], axis=0)
    step = resolution_mm / voxel_mm
    nonzero = np.nonzero(hard_labels(template.fractions))
    lo = np.min(nonzero, axis=1) - margin_mm / voxel_mm
    hi = np.max(nonzero, axis=1) + margin_mm / voxel_mm
    shape = tuple(int(n) for n in np.floor((hi - lo) / step).astype(int) + 1)
    index_to_template = np.eye(4)
    index_to_template[:3, :3] = np.diag(step)
    index_to_template[:3, 3] = lo
    return shape, template.affine @ index_to_template  # type: ignore[return-value]


def _cubic_upsampling_matrix(nodes: int, length: int) -> np.ndarray:
    """(length, nodes) matrix of 1-D cubic-spline upsampling (``ndimage.zoom`` of unit impulses)."""
    return ndimage.zoom(np.eye(nodes), (length / nodes, 1.0), order=3)


def smooth_random_field(rng: np.random.Generator, shape: tuple[int, int, int], nodes: int) -> np.ndarray:
    """Smooth zero-mean, unit-std 3-D random field: cubic upsampling of ``nodes``^3 Gaussian values.

    The spline upsampling is separable, so it is applied as one matrix per axis.
    """
    coarse = rng.standard_normal((nodes, nodes, nodes))
    mx, my, mz = (_cubic_upsampling_matrix(nodes, n) for n in shape)
    field = np.einsum("ia,jb,kc,abc->ijk", mx, my, mz, coarse, optimize=True)
    field -= field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


@dataclass(frozen=True)
class Deformation:
    """Random subject shape: isotropic scale about the grid centre plus a smooth displacement (mm)."""

    scale_range: float = 0.05
    displacement_std_mm: float = 1.5
    displacement_nodes: int = 5


def random_subject(
    template: TissueVolume,
    grid_shape: tuple[int, int, int],
    grid_affine: np.ndarray,
    rng: np.random.Generator,
    deformation: Deformation = Deformation(),
) -> TissueVolume:
    """Warp the (anti-aliased) template onto the output grid with a random smooth deformation.

    For each output point p the source point is c + (p - c) / s + d(p), where c is the grid
    centre (the centre of the template's brain box), s ~ U(1 - scale_range, 1 + scale_range) and
    d a smooth random field in mm. Fractions and texture are interpolated linearly; labels follow
    as :func:`hard_labels` of the warped fractions, so they always agree with the tissue maps the
    image is made from.
    """
    scale = rng.uniform(1.0 - deformation.scale_range, 1.0 + deformation.scale_range)
    displacement = np.stack(
        [smooth_random_field(rng, grid_shape, deformation.displacement_nodes) for _ in range(3)]
    ).reshape(3, -1) * deformation.displacement_std_mm
    centre = grid_affine[:3, :3] @ ((np.array(grid_shape) - 1) / 2.0) + grid_affine[:3, 3]
    index = np.indices(grid_shape, dtype=np.float32).reshape(3, -1)
    points = grid_affine[:3, :3] @ index + grid_affine[:3, 3:]
    source = centre[:, None] + (points - centre[:, None]) / scale + displacement
    to_voxel = np.linalg.inv(template.affine)
    coords = to_voxel[:3, :3] @ source + to_voxel[:3, 3:]

    def warp(volume: np.ndarray) -> np.ndarray:
        sampled = ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)
        return sampled.reshape(grid_shape).astype(np.float32)

    fractions = np.stack([warp(f) for f in template.fractions])
    return TissueVolume(fractions, warp(template.texture), np.asarray(grid_affine, dtype=float))

