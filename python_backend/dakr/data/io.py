"""Reading and writing volumes with SimpleITK, keeping their physical geometry.

Supported files: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``), Slicer segmentations with a
single layer (``.seg.nrrd``) and MetaImage (``.mha``). Arrays taken from the returned images
are in (z, y, x) order; spacing, origin and direction stay in SimpleITK (x, y, z) order.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dakr.data.errors import DataError, ImageTooLargeError
from dakr.data.headers import (
    COPY_AGAIN_FIX,
    NIFTI1_HEADER_SIZE,
    NIFTI2_HEADER_SIZE,
    UNREADABLE_FIX,
    itk_reason,
    nifti_layout,
    open_header,
    open_volume_stream,
)
from dakr.data.limits import MAX_HEADER_BYTES, ImageLimits
from dakr.data.names import MAX_LABEL_VALUE
from dakr.output_paths import user_file_mode

#: File endings this package reads and writes, longest first so ``.seg.nrrd`` wins over ``.nrrd``.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")

_SEGMENTATION_SUFFIX = ".seg.nrrd"
_CHUNK_BYTES = 1 << 22
#: One-component vector images (e.g. a one-layer 4D ``.seg.nrrd``) are unwrapped to scalars.
_VECTOR_TYPES = {
    sitk.sitkVectorUInt8,
    sitk.sitkVectorInt8,
    sitk.sitkVectorUInt16,
    sitk.sitkVectorInt16,
    sitk.sitkVectorUInt32,
    sitk.sitkVectorInt32,
    sitk.sitkVectorUInt64,
    sitk.sitkVectorInt64,
    sitk.sitkVectorFloat32,
    sitk.sitkVectorFloat64,
}


def image_suffix(path: str | PathLike[str]) -> str:
    """Return the supported suffix of ``path`` in lower case (e.g. ``".nii.gz"``) or raise ``DataError``."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    found = "".join(Path(path).suffixes) or "no extension"
    raise DataError(
        path,
        f"unsupported file type ({found})",
        f"save the volume as one of {', '.join(SUPPORTED_SUFFIXES)} (in Slicer: Save, choose NIfTI or NRRD)",
    )


def sniff_format(head: bytes) -> str | None:
    """Guess a volume format from the first bytes of a file (at least 348 for NIfTI).

    Returns ``"nifti"`` (also when gzip-compressed), ``"nrrd"``, ``"mha"`` or ``None``.
    """
    if head.startswith(b"\x1f\x8b"):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, NIFTI2_HEADER_SIZE)
        except zlib.error:
            return None
        return "nifti" if _is_nifti(head) else None
    if _is_nifti(head):
        return "nifti"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        return "mha"
    return None


def _is_nifti(head: bytes) -> bool:
    if len(head) >= NIFTI1_HEADER_SIZE and head[344:348] == b"n+1\x00":
        return int.from_bytes(head[:4], "little") == NIFTI1_HEADER_SIZE or int.from_bytes(head[:4], "big") == NIFTI1_HEADER_SIZE
    if len(head) >= 8 and head[4:8] == b"n+2\x00":
        return int.from_bytes(head[:4], "little") == NIFTI2_HEADER_SIZE or int.from_bytes(head[:4], "big") == NIFTI2_HEADER_SIZE
    return False


def read_image(
    path: str | PathLike[str], *, trusted_root: str | PathLike[str] | None = None, limits: ImageLimits | None = None
) -> sitk.Image:
    """Read a scalar 3D volume or label map with its geometry.

    The header is checked before any voxel is read: voxel data in another file is refused
    unless it lies inside ``trusted_root`` (a local folder the user named; ``None`` for uploads
    and anything else), and a volume declaring more voxels or bytes than ``limits`` (default:
    :meth:`ImageLimits.from_environment`) raises :class:`ImageTooLargeError`. A single-layer
    ``.seg.nrrd`` is returned as a plain 3D label volume (segment metadata dropped). Raises
    ``DataError`` for a missing, unsupported, unreadable, truncated, multi-component or non-3D
    file, or one with NaN/infinite voxels.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if not path.is_file():
        raise DataError(path, "file not found", "check the path; the file may have been moved or deleted")
    limits = limits or ImageLimits.from_environment()
    reader = open_header(path, suffix, limits, None if trusted_root is None else Path(trusted_root))
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_data(path, suffix)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = itk_reason(exc)
        if "bad_alloc" in reason or "allocate" in reason.lower():
            raise MemoryError(f"{path}: not enough memory to read the volume ({reason})") from exc
        raise DataError(
            path,
            f"cannot be read ({reason})",
            UNREADABLE_FIX,
        ) from exc
    image = _scalar_3d(image, path, is_segmentation=suffix == _SEGMENTATION_SUFFIX)
    if suffix not in (".nii", ".nii.gz"):
        _check_finite(path, *_count_non_finite(sitk.GetArrayViewFromImage(image)))
    return image


def _check_nifti_data(path: Path, suffix: str) -> None:
    """Check a NIfTI file's voxel bytes before ITK reads them, which it does not: it zero-fills a
    truncated file and replaces NaN/Inf with 0 without a word.

    At most the header, its extensions and the declared voxel bytes are inflated: with the
    declared size checked against the limits first, a ``.nii.gz`` never inflates past
    ``MAX_HEADER_BYTES`` plus the byte limit.
    """
    try:
        with open_volume_stream(path, suffix) as stream:
            layout = nifti_layout(stream.read(NIFTI2_HEADER_SIZE))
            if layout is None:
                return
            if layout.offset > MAX_HEADER_BYTES:
                raise ImageTooLargeError(
                    path,
                    f"its header puts the voxels {layout.offset} bytes into the file, past the "
                    f"{MAX_HEADER_BYTES // 2**20} MB allowed for the header and its extensions",
                    "remove the NIfTI header extensions and save the volume again",
                )
            stream.seek(layout.offset)
            received = n_nan = n_inf = 0
            while chunk := stream.read(min(_CHUNK_BYTES, layout.data_bytes - received)):
                received += len(chunk)
                if layout.float_dtype is not None:
                    values = np.frombuffer(chunk, layout.float_dtype, count=len(chunk) // layout.float_dtype.itemsize)
                    chunk_nan, chunk_inf = _count_non_finite(values)
                    n_nan, n_inf = n_nan + chunk_nan, n_inf + chunk_inf
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"is corrupt or truncated ({exc})", COPY_AGAIN_FIX) from exc
    if received < layout.data_bytes:
        raise DataError(
            path, f"is truncated: it holds {received} bytes of voxel data but its header declares {layout.data_bytes}", COPY_AGAIN_FIX
        )
    _check_finite(path, n_nan, n_inf)


def _count_non_finite(values: np.ndarray) -> tuple[int, int]:
    if not np.issubdtype(values.dtype, np.floating):
        return 0, 0
    return int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))


def _check_finite(path: Path, n_nan: int, n_inf: int) -> None:
    if n_nan or n_inf:
        raise DataError(path, f"has {n_nan} NaN and {n_inf} infinite intensities", "replace them (e.g. with 0) and save the volume again")


def _scalar_3d(image: sitk.Image, path: Path, is_segmentation: bool) -> sitk.Image:
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1 and is_segmentation:
        raise DataError(
            path,
            f"segmentation has {components} layers (overlapping segments), so it is not a single label map",
            "export it as a labelmap: in Slicer's Segmentations module use 'Export to files' or "
            "'Export visible segments to label map' and save the labelmap volume",
        )
    if components > 1:
        raise DataError(
            path,
            f"has {components} components per voxel (colour or vector data); a single-channel volume is needed",
            "save one grayscale channel (e.g. convert the volume to scalar in Slicer's Vector to Scalar Volume module)",
        )
    if image.GetPixelID() in _VECTOR_TYPES:
        image = sitk.VectorIndexSelectionCast(image, 0)
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise DataError(
            path,
            f"is {image.GetDimension()}D (size {'x'.join(map(str, size))}); a 3D volume is needed",
            "save the whole 3D volume" if image.GetDimension() < 3 else "save a single 3D frame of the series",
        )
    if is_segmentation:
        for key in image.GetMetaDataKeys():
            image.EraseMetaData(key)
    return image


def write_image(image: sitk.Image, path: str | PathLike[str]) -> None:
    """Write ``image`` to ``path`` atomically (temporary file + rename) with compression on.

    The format follows the suffix; a crash never leaves a half-written file at ``path``.
    Raises ``DataError`` for an unsupported suffix or a failed write.
    """
    path = Path(path)
    suffix = image_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, user_file_mode())
        sitk.WriteImage(image, temporary, useCompression=True)
        with open(temporary, "r+b") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except (RuntimeError, OSError) as exc:
        Path(temporary).unlink(missing_ok=True)
        raise DataError(path, f"cannot be written ({exc})", "check that the folder is writable and the disk has free space") from exc


def label_image_like(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap an integer (z, y, x) label array as a uint8 image with ``reference``'s geometry."""
    array = np.asarray(array_zyx)
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(f"label array shape {array.shape} does not match the reference volume shape (z, y, x) {expected}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"label array must hold integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL_VALUE):
        raise ValueError(f"label values must lie in 0..{MAX_LABEL_VALUE}, got {array.min()}..{array.max()}")
    image = sitk.GetImageFromArray(array.astype(np.uint8, copy=False))
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    return image
