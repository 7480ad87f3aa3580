"""Reading a volume's header before its voxels: where the data lives and how large it says it is.

NRRD and MetaImage headers may point to voxel data in another file (``data file:``,
``ElementDataFile = <path>``) and a NIfTI file may be only the header of a ``.hdr/.img`` pair.
Read blindly, such a header makes the reader return any file the process can read as voxels,
so external data is refused unless the caller trusts the file's folder, and even then it must
stay inside that folder. The header also gives the size and pixel type, so a volume that claims
more voxels or bytes than :class:`dakr.data.limits.ImageLimits` allows is refused before any
voxel is read or inflated.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from dakr.data.errors import DataError, ImageTooLargeError
from dakr.data.limits import MAX_HEADER_BYTES, ImageLimits

#: The ITK reader for each file ending, so the parser is the one whose header was checked.
_IMAGE_IOS = {".seg.nrrd": "NrrdImageIO", ".nrrd": "NrrdImageIO", ".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO"}
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
#: NIfTI datatype codes of float32 and float64.
_NIFTI_FLOAT_TYPES = {16: np.float32, 64: np.float64}
_SINGLE_FILE_FIX = (
    "save the volume as one self-contained file (.nii.gz, or .nrrd/.mha with the voxels inside; in Slicer: Save as .nii.gz or .nrrd)"
)
COPY_AGAIN_FIX = "copy or export the file again"
UNREADABLE_FIX = "check the file is complete and really is a NIfTI, NRRD or MHA volume; re-save it from Slicer"
_ITK_PREFIX = re.compile(r"^(?:[\w:]*\s?ERROR:\s*)?(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(?:\[\w+\]\s*)?")
_MHA_DATA_KEY = "elementdatafile"
_NRRD_DATA_KEYS = ("data file", "datafile")


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxels start, how many bytes they take and their float type (if float)."""

    offset: int
    data_bytes: int
    float_dtype: np.dtype | None


def nifti_layout(header: bytes) -> NiftiLayout | None:
    """The voxel layout from the first bytes of a NIfTI-1/2 file; ``None`` if unparsable."""
    if len(header) < NIFTI1_HEADER_SIZE:
        return None
    for order in ("<", ">"):
        (header_size,) = struct.unpack_from(f"{order}i", header)
        if header_size == NIFTI1_HEADER_SIZE:
            (datatype, bits) = struct.unpack_from(f"{order}2h", header, 70)
            dims = struct.unpack_from(f"{order}8h", header, 40)
            (offset,) = struct.unpack_from(f"{order}f", header, 108)
            break
        if header_size == NIFTI2_HEADER_SIZE and len(header) >= NIFTI2_HEADER_SIZE:
            (datatype, bits) = struct.unpack_from(f"{order}2h", header, 12)
            dims = struct.unpack_from(f"{order}8q", header, 16)
            (offset,) = struct.unpack_from(f"{order}q", header, 168)
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or not math.isfinite(offset) or any(d < 0 for d in dims[1 : dims[0] + 1]):
        return None
    float_type = _NIFTI_FLOAT_TYPES.get(datatype)
    dtype = np.dtype(float_type).newbyteorder(order) if float_type else None
    return NiftiLayout(int(offset), math.prod(dims[1 : dims[0] + 1]) * max(bits, 0) // 8, dtype)


def open_header(path: Path, suffix: str, limits: ImageLimits, trusted_root: Path | None) -> sitk.ImageFileReader:
    """A reader for ``path`` whose header has been checked; ``reader.Execute()`` reads the voxels.

    Raises ``DataError`` for external voxel data not allowed here (``trusted_root`` is the only
    folder external data may come from; ``None`` allows none), an unreadable header or declared
    data missing from the file, and ``ImageTooLargeError`` for a volume over ``limits``.
    """
    if suffix in (".nrrd", ".seg.nrrd"):
        _check_nrrd(path, trusted_root)
    elif suffix == ".mha":
        _check_mha(path, trusted_root)
    else:
        _check_nifti_magic(path, suffix)
    reader = header_reader(path, suffix)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(path, f"cannot be read ({itk_reason(exc)})", UNREADABLE_FIX) from exc
    _check_declared_size(path, reader, limits)
    return reader


def header_reader(path: Path, suffix: str) -> sitk.ImageFileReader:
    """An ITK reader of ``path`` pinned to the parser of ``suffix`` (nothing read yet)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IOS[suffix])
    reader.SetFileName(str(path))
    return reader


def itk_reason(exc: RuntimeError) -> str:
    """The informative line of an ITK exception (ITK appends a misleading errno as "Reason: ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith("Reason:")]
    return _ITK_PREFIX.sub("", lines[-1]) if lines else "unknown reader error"


def declared_bytes(reader: sitk.ImageFileReader) -> int:
    """Voxel bytes the header of ``reader``'s file declares."""
    component = sitk.Image([1, 1], reader.GetPixelID(), reader.GetNumberOfComponents()).GetSizeOfPixelComponent()
    return math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component


def _check_declared_size(path: Path, reader: sitk.ImageFileReader, limits: ImageLimits) -> None:
    size = reader.GetSize()
    voxels, data_bytes = math.prod(size), declared_bytes(reader)
    shape = "x".join(map(str, size))
    if voxels > limits.max_voxels:
        problem = f"its header declares {shape} = {voxels} voxels, more than the limit of {limits.max_voxels}"
        raise ImageTooLargeError(path, problem, limits.size_fix())
    if data_bytes > limits.max_bytes:
        problem = f"its header declares {shape} voxels of {data_bytes / 2**20:.0f} MB, more than the limit of {limits.max_bytes / 2**20:.0f} MB"
        raise ImageTooLargeError(path, problem, limits.size_fix())
    spacing = reader.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError(
            path, f"its header declares an invalid voxel spacing {spacing}", "correct the spacing (positive millimetres) and save the volume again"
        )


def open_volume_stream(path: Path, suffix: str) -> BinaryIO:
    """The decompressed bytes of a volume file, read lazily (``.nii.gz`` through gzip)."""
    return gzip.open(path, "rb") if suffix == ".nii.gz" else open(path, "rb")


def _check_nifti_magic(path: Path, suffix: str) -> None:
    """A ``.nii``/``.nii.gz`` must hold its voxels (magic ``n+1``/``n+2``), not be a ``.hdr`` of a pair."""
    try:
        with open_volume_stream(path, suffix) as stream:
            head = stream.read(NIFTI2_HEADER_SIZE)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot be read ({exc})", UNREADABLE_FIX) from exc
    if head[344:348] == b"ni1\x00" or head[4:8] == b"ni2\x00":
        raise DataError(path, "is the header of a .hdr/.img pair whose voxels live in another file", _SINGLE_FILE_FIX)


def _read_header_lines(path: Path, separator: str, stop: str | None) -> tuple[dict[str, str], int]:
    """``{key (lower case): value}`` of a text header and its length in bytes.

    Lines are ``key<separator>value`` (``:`` for NRRD, ``=`` for MetaImage); reading ends at an
    empty line or after the key ``stop``. Refuses headers over ``MAX_HEADER_BYTES``.
    """
    fields: dict[str, str] = {}
    length = 0
    with open(path, "rb") as handle:
        while line := handle.readline(MAX_HEADER_BYTES):
            length += len(line)
            if length > MAX_HEADER_BYTES:
                raise DataError(path, f"its header is longer than {MAX_HEADER_BYTES // 2**20} MB", _SINGLE_FILE_FIX)
            text = line.decode("latin-1").strip()
            if not text:
                break
            if text.startswith("#") or ":=" in text:
                continue
            key, found, value = text.partition(separator)
            if found:
                fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == stop:
                    break
    return fields, length


def _check_nrrd(path: Path, trusted_root: Path | None) -> None:
    fields, header_bytes = _read_header_lines(path, ":", None)
    data_file = next((fields[key] for key in _NRRD_DATA_KEYS if key in fields), None)
    data_path = path if data_file is None else _external_data(path, data_file, trusted_root)
    for key in ("byte skip", "line skip"):
        if abs(_integer(path, fields.get(key, "0"), key)) > MAX_HEADER_BYTES:
            raise DataError(path, f"its header asks to skip {fields[key]} ({key}) before the voxels", _SINGLE_FILE_FIX)
    if fields.get("encoding", "raw").lower() == "raw":
        _require_bytes(path, data_path, 0 if data_file else header_bytes, fields)


def _check_mha(path: Path, trusted_root: Path | None) -> None:
    fields, header_bytes = _read_header_lines(path, "=", _MHA_DATA_KEY)
    data_file = fields.get(_MHA_DATA_KEY)
    if data_file is None:
        raise DataError(path, "its header has no ElementDataFile entry, so its voxels cannot be found", _SINGLE_FILE_FIX)
    local = data_file.upper() == "LOCAL"
    data_path = path if local else _external_data(path, data_file, trusted_root)
    available = data_path.stat().st_size - (header_bytes if local else 0)
    compressed_size = fields.get("compresseddatasize")
    if compressed_size is not None and _integer(path, compressed_size, "CompressedDataSize") > available:
        raise DataError(path, f"its header declares {compressed_size} bytes of compressed voxels but the file holds {available}", COPY_AGAIN_FIX)


def _require_bytes(path: Path, data_path: Path, offset: int, fields: dict[str, str]) -> None:
    """Uncompressed NRRD: the file must hold at least the declared voxel bytes (checked again by ITK)."""
    sizes = [_integer(path, part, "sizes") for part in fields.get("sizes", "").split()]
    bits = _NRRD_TYPE_BYTES.get(fields.get("type", "").lower())
    if not sizes or bits is None:
        return
    needed = math.prod(sizes) * bits
    available = data_path.stat().st_size - offset
    if available < needed:
        raise DataError(path, f"is truncated: it holds {max(available, 0)} bytes of voxel data but its header declares {needed}", COPY_AGAIN_FIX)


_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), 8),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"), 8),
}


def _integer(path: Path, text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(path, f"its header field {field!r} holds {text!r}, not a whole number", "re-save the volume from Slicer") from None


def _external_data(path: Path, data_file: str, trusted_root: Path | None) -> Path:
    """The external data file a header names, if ``trusted_root`` allows it."""
    if trusted_root is None:
        raise DataError(
            path,
            f"its header points to voxel data in another file ({data_file!r}); such files are only read from a "
            "local folder given on the command line, never from an upload or a server request",
            _SINGLE_FILE_FIX,
        )
    if len(data_file.split()) != 1 or data_file.upper() == "LIST" or "%" in data_file:
        raise DataError(path, f"its header spreads the voxels over several files ({data_file!r})", _SINGLE_FILE_FIX)
    relative = Path(data_file)
    target = (path.parent / relative).resolve()
    root = trusted_root.resolve()
    if relative.is_absolute() or not target.is_relative_to(root):
        raise DataError(
            path,
            f"its header points to voxel data outside the folder {root} ({data_file!r})",
            "put the data file next to its header, name it without a folder, or " + _SINGLE_FILE_FIX,
        )
    if not target.is_file():
        raise DataError(path, f"the voxel data file it names ({data_file!r}) does not exist", "copy the data file next to its header")
    return target

