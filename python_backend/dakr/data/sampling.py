"""Drawing training batches of 2D axial slices or 3D patches with foreground oversampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dakr.data.preprocessing import PreprocessedCase


class PatchSampler:
    """Random patches from preprocessed, labelled cases.

    ``spatial_dims=2`` draws axial slices (axis 0 of the (z, y, x) arrays) cropped or padded
    in plane to ``patch_size`` (H, W); ``spatial_dims=3`` draws (D, H, W) patches. With
    probability ``foreground_oversample`` a patch is centred on a random foreground voxel
    (label > 0), otherwise its position is uniform. Images are padded with the case's
    minimum intensity, labels with 0. All randomness comes from the ``rng`` given to
    :meth:`sample`, so a seed reproduces a batch exactly.
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        patch_size: tuple[int, ...],
        spatial_dims: int,
        foreground_oversample: float,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(patch_size) != spatial_dims or min(patch_size) < 1:
            raise ValueError(f"patch_size {patch_size} must be {spatial_dims} positive sizes for spatial_dims={spatial_dims}")
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(f"foreground_oversample must lie in [0, 1], got {foreground_oversample}")
        if not cases:
            raise ValueError("no cases to sample from")
        for case in cases:
            if case.label is None:
                raise ValueError(f"case {case.case_id!r} has no label map; training needs labelled cases")
            if case.image.ndim != 3 or case.image.shape != case.label.shape:
                raise ValueError(f"case {case.case_id!r}: image {case.image.shape} and label {case.label.shape} must be equal 3D shapes")
        self.cases = list(cases)
        self.patch_size = tuple(int(size) for size in patch_size)
        self.spatial_dims = spatial_dims
        self.foreground_oversample = foreground_oversample
        #: Sampling window in (z, y, x): one slice deep for 2D.
        self._window = self.patch_size if spatial_dims == 3 else (1, *self.patch_size)
        self._foreground = [np.flatnonzero(case.label) for case in self.cases]
        self._pad_values = [float(case.image.min()) for case in self.cases]

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, labels)`` of shape (B, 1, *patch_size), float32 and int64."""
        images = np.empty((batch_size, 1, *self.patch_size), dtype=np.float32)
        labels = np.zeros((batch_size, 1, *self.patch_size), dtype=np.int64)
        for index in range(batch_size):
            case_index = int(rng.integers(len(self.cases)))
            case = self.cases[case_index]
            start = self._start(case.image.shape, self._foreground[case_index], rng)
            source = tuple(slice(max(s, 0), min(s + w, n)) for s, w, n in zip(start, self._window, case.image.shape))
            target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, start))
            image_slot = images[index, 0].reshape(self._window)
            image_slot.fill(self._pad_values[case_index])
            image_slot[target] = case.image[source]
            labels[index, 0].reshape(self._window)[target] = case.label[source]
        return images, labels

    def _start(self, shape: tuple[int, ...], foreground: np.ndarray, rng: np.random.Generator) -> list[int]:
        """Window start per axis; may be negative or run past the end (that part is padded)."""
        low = [min(0, n - w) for n, w in zip(shape, self._window)]
        high = [max(0, n - w) for n, w in zip(shape, self._window)]
        if foreground.size and rng.random() < self.foreground_oversample:
            centre = np.unravel_index(foreground[rng.integers(foreground.size)], shape)
            return [int(np.clip(c - w // 2, lo, hi)) for c, w, lo, hi in zip(centre, self._window, low, high)]
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]
