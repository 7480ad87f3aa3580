"""Reading hostile volumes: external voxel data, declared-size and gzip bombs, the isolated check."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.data import DataError, ImageLimits, ImageTooLargeError, SiteValidationError, read_image, site_from_pairs
from dakr.isolation import CheckAbortedError, check_image_isolated, register_site_isolated
from dakr.data.limits import LimitConfigError
from dakr.store import Store
from hostile_volumes import detached_mha, detached_nrrd, gzip_bomb, nifti_header

SECRET = b"secret-bytes-of-another-file-on-the-server-"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the volume's folder whose bytes would be 4x4x4 uint8 voxels."""
    path = tmp_path / "outside" / "secret.raw"
    path.parent.mkdir()
    path.write_bytes((SECRET * 2)[:64])
    return path


@pytest.fixture
def never_read_voxels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ITK is asked to read any voxel."""

    def refuse(self: sitk.ImageFileReader) -> sitk.Image:
        raise AssertionError(f"voxels of {self.GetFileName()} were read")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)


@pytest.mark.parametrize("write", [detached_mha, detached_nrrd], ids=["mha", "nrrd"])
def test_external_voxel_data_at_an_absolute_path_is_refused(tmp_path: Path, secret: Path, write, never_read_voxels: None) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    header = write(folder / f"scan.{'mha' if write is detached_mha else 'nrrd'}", str(secret))
    with pytest.raises(DataError, match="points to voxel data in another file") as untrusted:
        read_image(header)
    assert str(header) in str(untrusted.value) and "Fix: save the volume as one self-contained file" in str(untrusted.value)
    with pytest.raises(DataError, match="outside the folder"):
        read_image(header, trusted_root=folder)


@pytest.mark.parametrize("write", [detached_mha, detached_nrrd], ids=["mha", "nrrd"])
def test_external_voxel_data_must_stay_inside_a_trusted_folder(tmp_path: Path, secret: Path, write) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    suffix = "mha" if write is detached_mha else "nrrd"
    (folder / "scan.raw").write_bytes(bytes(range(64)))
    inside = write(folder / f"inside.{suffix}", "scan.raw")
    assert sitk.GetArrayFromImage(read_image(inside, trusted_root=folder)).ravel().tolist() == list(range(64))
    with pytest.raises(DataError, match="points to voxel data in another file"):
        read_image(inside)
    escaping = write(folder / f"escaping.{suffix}", "../outside/secret.raw")
    with pytest.raises(DataError, match="outside the folder"):
        read_image(escaping, trusted_root=folder)
    (folder / "link.raw").symlink_to(secret)
    with pytest.raises(DataError, match="outside the folder"):
        read_image(write(folder / f"link.{suffix}", "link.raw"), trusted_root=folder)
    with pytest.raises(DataError, match="several files"):
        read_image(write(folder / f"list.{suffix}", "LIST"), trusted_root=folder)


def test_a_nifti_header_of_a_hdr_img_pair_is_refused(tmp_path: Path, never_read_voxels: None) -> None:
    path = tmp_path / "pair.nii"
    path.write_bytes(nifti_header((4, 4, 4), magic=b"ni1\x00", vox_offset=0.0))
    (tmp_path / "pair.img").write_bytes(bytes(64))
    with pytest.raises(DataError, match=r"header of a \.hdr/\.img pair"):
        read_image(path)


def test_isolated_registration_refuses_external_data(tmp_path: Path, secret: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    pairs = []
    for index in range(2):
        label = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
        sitk.WriteImage(label, str(folder / f"c{index}_label.nii.gz"))
        pairs.append((detached_mha(folder / f"c{index}.mha", str(secret)), folder / f"c{index}_label.nii.gz"))
    store = Store.init(tmp_path / "store")
    with pytest.raises(SiteValidationError, match="points to voxel data in another file") as refused:
        register_site_isolated(store.path, "B", site_from_pairs(pairs), audit_fraction=0.5, seed=0)
    assert len(refused.value.problems) == 2
    assert store.sites() == []


def _measure(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` (which sets ``outcome``) in a fresh interpreter; its outcome, CPU seconds and peak RSS in MB.

    CPU time rather than wall time, so a busy machine does not fail the test.
    """
    script = (
        "import json, resource, time\nstart = time.process_time()\n"
        f"{code}\n"
        "print(json.dumps({'outcome': outcome, 'seconds': time.process_time() - start, "
        "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    environment = {**os.environ, **(env or {})}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


_READ = """
from dakr.data import read_image, DataError
try:
    read_image({path!r})
    outcome = "read"
except DataError as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="peak memory is measured with the resource module")
def test_declared_size_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    baseline = _measure("outcome = None\nimport dakr.data")["peak_mb"]
    over_limit = tmp_path / "huge.nii.gz"
    over_limit.write_bytes(gzip.compress(nifti_header((2048, 2048, 2048))))
    refused = _measure(_READ.format(path=str(over_limit)))
    assert refused["outcome"].startswith("ImageTooLargeError") and "2048x2048x2048" in refused["outcome"]
    assert "DAKR_MAX_IMAGE_VOXELS" in refused["outcome"]
    # 1024^3 uint8 (1 GiB) is within the default limits; the 80-byte file cannot hold it.
    within_limit = tmp_path / "claims_1gib.nii.gz"
    within_limit.write_bytes(gzip.compress(nifti_header((1024, 1024, 1024))))
    assert within_limit.stat().st_size < 100
    truncated = _measure(_READ.format(path=str(within_limit)))
    assert truncated["outcome"].startswith("DataError") and "is truncated" in truncated["outcome"]
    for result in (refused, truncated):
        assert result["seconds"] < 1.0
        assert result["peak_mb"] < baseline + 50, (result, baseline)


@pytest.mark.skipif(sys.platform == "win32", reason="peak memory is measured with the resource module")
def test_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    baseline = _measure("outcome = None\nimport dakr.data")["peak_mb"]
    # 1 GiB of zeros in about 1 MB: a 1024^3 volume, refused under a 256 MB limit from its header alone.
    bomb = gzip_bomb(tmp_path / "bomb.nii.gz", nifti_header((1024, 1024, 1024)), inflated_mib=1024)
    assert bomb.stat().st_size < 2 * 2**20
    refused = _measure(_READ.format(path=str(bomb)), env={"DAKR_MAX_IMAGE_MB": "256"})
    assert refused["outcome"].startswith("ImageTooLargeError") and "more than the limit of 256 MB" in refused["outcome"]
    # A 4^3 volume whose header puts its voxels 1 GiB into the stream: reaching them would inflate 1 GiB.
    hidden = gzip_bomb(tmp_path / "offset.nii.gz", nifti_header((4, 4, 4), vox_offset=float(2**30)), inflated_mib=1024)
    skipped = _measure(_READ.format(path=str(hidden)))
    assert skipped["outcome"].startswith("ImageTooLargeError") and "header and its extensions" in skipped["outcome"]
    for result in (refused, skipped):
        assert result["seconds"] < 1.0
        assert result["peak_mb"] < baseline + 50, (result, baseline)


def test_compressed_mha_declaring_more_compressed_bytes_than_it_holds_is_refused(tmp_path: Path, never_read_voxels: None) -> None:
    path = tmp_path / "scan.mha"
    path.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nCompressedData = True\n"
        b"CompressedDataSize = 1000000000000\nElementDataFile = LOCAL\n" + gzip.compress(bytes(64))
    )
    with pytest.raises(DataError, match="compressed voxels but the file holds"):
        read_image(path)


def test_truncated_raw_nrrd_is_refused_before_allocating(tmp_path: Path, never_read_voxels: None) -> None:
    path = tmp_path / "scan.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\nendian: little\n\n" + bytes(16))
    with pytest.raises(DataError, match="is truncated: it holds 16 bytes of voxel data but its header declares 4294967296"):
        read_image(path)


def test_limits_come_from_the_environment_and_bad_values_are_named() -> None:
    assert ImageLimits.from_environment({}) == ImageLimits()
    assert ImageLimits().max_voxels == 1024 * 1024 * 2048 and ImageLimits().max_bytes == 4 * 2**30
    limits = ImageLimits.from_environment({"DAKR_MAX_IMAGE_MB": "100", "DAKR_MAX_IMAGE_VOXELS": "1000", "DAKR_VALIDATION_TIMEOUT_S": "5"})
    assert (limits.max_bytes, limits.max_voxels, limits.validation_timeout_s) == (100 * 2**20, 1000, 5.0)
    assert limits.validation_memory_bytes == int((2.5 * 100 + 1024) * 2**20)
    with pytest.raises(LimitConfigError, match="DAKR_MAX_SPACING_MM='-1' must be a positive number"):
        ImageLimits.from_environment({"DAKR_MAX_SPACING_MM": "-1"})


def test_isolated_check_reports_memory_exhaustion_as_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.Image([512, 512, 256], sitk.sitkUInt8), str(path), True)
    small = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkUInt8), str(small), True)
    limits = ImageLimits(validation_memory_bytes=100 * 2**20)
    check_image_isolated(small, limits)
    with pytest.raises(ImageTooLargeError, match="memory limit of 100 MB"):
        check_image_isolated(path, limits)
    read_image(path)  # the same file is fine with the memory of this process


def test_isolated_check_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    path = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkUInt8), str(path), True)
    start = time.perf_counter()
    # 10 ms is less than a Python interpreter needs to start, so the child always overruns it.
    with pytest.raises(CheckAbortedError, match=r"longer than the limit of 0.01 s \(DAKR_VALIDATION_TIMEOUT_S\)"):
        check_image_isolated(path, ImageLimits(validation_timeout_s=0.01))
    assert time.perf_counter() - start < 30.0


def test_isolated_check_passes_data_problems_through(tmp_path: Path, secret: Path) -> None:
    header = detached_mha(tmp_path / "scan.mha", str(secret))
    with pytest.raises(DataError, match="points to voxel data in another file"):
        check_image_isolated(header)
