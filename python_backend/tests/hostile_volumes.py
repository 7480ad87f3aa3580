"""Hand-built hostile volume files for the safe-reading tests: external voxel data and bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

NIFTI_UINT8 = 2


def nifti_header(
    dims: tuple[int, ...], *, datatype: int = NIFTI_UINT8, bits: int = 8, vox_offset: float = 352.0, magic: bytes = b"n+1\x00"
) -> bytes:
    """A NIfTI-1 header (348 bytes + 4-byte extension flag) declaring ``dims`` voxels."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<2h", header, 70, datatype, bits)
    struct.pack_into("<8f", header, 76, 1.0, *([1.0] * 7))
    struct.pack_into("<f", header, 108, vox_offset)
    header[344:348] = magic
    return bytes(header) + b"\0\0\0\0"


def gzip_bomb(path: Path, header: bytes, inflated_mib: int) -> Path:
    """``header`` followed by ``inflated_mib`` MiB of zeros as one gzip stream of about 1 KB per MiB.

    Each MiB is deflated on its own after a full flush, so its compressed bytes are identical
    and are written repeatedly instead of compressing gigabytes. The trailer's CRC is left 0:
    a reader only checks it after inflating everything, which is what must never happen.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)[:-8]
    size = (len(header) + inflated_mib * 2**20) % 2**32
    with open(path, "wb") as handle:
        handle.write(start)
        for _ in range(inflated_mib):
            handle.write(block)
        handle.write(end + struct.pack("<II", 0, size))
    return path


def detached_mha(path: Path, data_file: str, size: tuple[int, int, int] = (4, 4, 4)) -> Path:
    """A MetaImage header whose uint8 voxels (x, y, z ``size``) are said to live in ``data_file``."""
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {' '.join(map(str, size))}\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\nElementDataFile = {data_file}\n"
    )
    return path


def detached_nrrd(path: Path, data_file: str, size: tuple[int, int, int] = (4, 4, 4)) -> Path:
    """An NRRD header whose uint8 voxels (x, y, z ``size``) are said to live in ``data_file``."""
    path.write_text(
        f"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: {' '.join(map(str, size))}\nspacings: 1 1 1\n"
        f"encoding: raw\nendian: little\ndata file: {data_file}\n\n"
    )
    return path
