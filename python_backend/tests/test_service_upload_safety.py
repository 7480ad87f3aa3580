"""Hostile uploads through the HTTP API: external voxel data, size bombs, spacing blow-up, limits."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from dakr.store import Store
from hostile_volumes import detached_mha, detached_nrrd, gzip_bomb, nifti_header
from test_service_support import add_tiny_version, case_volumes, encoded, store_with_base, upload_files, write_site

API = "/api/v1"
#: Wall-time bound that only catches a hang (the server resampling or inflating for minutes): these
#: requests start child processes on a shared machine. CPU time and memory of the refusals
#: themselves are measured in test_safe_reading.py.
HANG_S = 60.0
SECRET_SHAPE = (32, 32, 6)
SECRET = (b"patient-list-of-another-department;" * 200)[: 32 * 32 * 6]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Site A and two versions: 1 keeps each volume's spacing, 2 resamples to 2 mm."""
    store = store_with_base(tmp_path)
    add_tiny_version(store, "A", 1, overrides={"preprocess.target_spacing": [2.0, 2.0, 2.0]})
    return store


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.csv"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def _upload(name: str, data: bytes) -> tuple[str, bytes, str]:
    return name, data, "application/octet-stream"


def _predict(client: TestClient, name: str, data: bytes, version: int = 1):
    return client.post(f"{API}/predict", files={"file": _upload(name, data)}, params={"version": version})


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_upload_pointing_at_a_server_file_is_refused(client: TestClient, store: Store, tmp_path: Path, secret: Path, suffix: str) -> None:
    """The header's grid matches its label map, so only the external-data rule stands between the
    server's file and ``GET .../cases/case00/image``."""
    write = detached_mha if suffix == ".mha" else detached_nrrd
    header = write(tmp_path / f"header{suffix}", str(secret), size=SECRET_SHAPE)
    label = np.zeros(SECRET_SHAPE[::-1], np.uint8)
    label[1:3, 2:8, 2:8], label[3:5, 10:20, 10:20] = 1, 2
    files = upload_files(write_site(tmp_path / "B", n_cases=2))
    files[0] = ("images", _upload(f"case00_0000{suffix}", header.read_bytes()))
    files[2] = ("labels", _upload("case00.nii.gz", encoded(sitk.GetImageFromArray(label))))
    response = client.post(f"{API}/sites", data={"name": "B"}, files=files)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"images/case00_0000{suffix}: its header points to voxel data in another file" in detail
    assert [site.name for site in store.sites()] == ["A"]
    predicted = _predict(client, f"scan{suffix}", header.read_bytes())
    assert predicted.status_code == 400
    assert predicted.json()["detail"].startswith(f"scan{suffix}: its header points to voxel data in another file")


def test_declared_size_bomb_is_refused_quickly(client: TestClient, store: Store, tmp_path: Path) -> None:
    bomb = gzip.compress(nifti_header((2048, 2048, 1024)))
    start = time.perf_counter()
    predicted = _predict(client, "scan.nii.gz", bomb)
    assert predicted.status_code == 413, predicted.text
    assert "2048x2048x1024" in predicted.json()["detail"] and "DAKR_MAX_IMAGE_VOXELS" in predicted.json()["detail"]
    files = upload_files(write_site(tmp_path / "B", n_cases=2))
    files[0] = ("images", _upload("case00_0000.nii.gz", bomb))
    registered = client.post(f"{API}/sites", data={"name": "B"}, files=files)
    assert registered.status_code == 422
    assert "images/case00_0000.nii.gz: its header declares 2048x2048x1024" in registered.json()["detail"]
    assert time.perf_counter() - start < HANG_S


def test_gzip_bomb_is_refused_without_inflating(client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAKR_MAX_IMAGE_MB", "256")
    bomb = gzip_bomb(tmp_path / "bomb.nii.gz", nifti_header((1024, 1024, 1024)), inflated_mib=1024).read_bytes()
    start = time.perf_counter()
    response = _predict(client, "scan.nii.gz", bomb)
    assert response.status_code == 413, response.text
    assert "more than the limit of 256 MB" in response.json()["detail"]
    assert time.perf_counter() - start < HANG_S


@pytest.mark.parametrize(
    ("shape", "spacing", "version", "message"),
    [
        (8, 60.0, 1, "voxel spacing 60x60x60 mm exceeds the 20 mm"),
        (64, 1000.0, 2, "voxel spacing 1000x1000x1000 mm exceeds the 20 mm"),
        (64, 19.0, 2, "it would have 608x608x608 = 224755712 voxels, more than the limit of 134217728"),
    ],
)
def test_spacing_blow_up_on_predict_is_refused_with_422(client: TestClient, shape: int, spacing: float, version: int, message: str) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(shape,) * 3).astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    start = time.perf_counter()
    response = _predict(client, "scan.nii.gz", encoded(image), version=version)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("scan.nii.gz: ")
    assert message in response.json()["detail"] and "DAKR_MAX_SPACING_MM" in response.json()["detail"]
    assert time.perf_counter() - start < HANG_S


def test_upload_check_memory_limit_gives_413_and_the_server_lives_on(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAKR_VALIDATION_MEMORY_MB", "100")
    large = encoded(sitk.Image([512, 512, 256], sitk.sitkUInt8))
    response = _predict(client, "scan.nii.gz", large)
    assert response.status_code == 413, response.text
    assert "memory limit of 100 MB (DAKR_VALIDATION_MEMORY_MB)" in response.json()["detail"]
    assert client.get(f"{API}/info").status_code == 200
    small = _predict(client, "scan.nii.gz", encoded(case_volumes(1)[0]))
    assert small.status_code == 200, small.text


def test_upload_check_time_limit_gives_422(client: TestClient, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAKR_VALIDATION_TIMEOUT_S", "0.2")
    files = upload_files(write_site(tmp_path / "B", n_cases=2))
    response = client.post(f"{API}/sites", data={"name": "B"}, files=files)
    assert response.status_code == 422, response.text
    assert "upload: checking the volumes took longer than the limit of 0.2 s (DAKR_VALIDATION_TIMEOUT_S)" in response.json()["detail"]
    assert [site.name for site in store.sites()] == ["A"]
