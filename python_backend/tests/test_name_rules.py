"""Names that would clash or misbehave on macOS and Windows file systems are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dakr.data import SiteValidationError, discover_site, validate_name, validate_site
from dakr.service import create_app
from dakr.store import Store, StoreError
from test_service_support import local_client, upload_files, write_site

API = "/api/v1"


@pytest.mark.parametrize("name", ["CON", "con", "Prn", "aux", "NUL", "nul.nii.gz", "COM1", "com9.txt", "LPT1", "lpt9.seg"])
def test_windows_device_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"invalid case name {name!r}: .* is a device name reserved by Windows"):
        validate_name(name, "case")


@pytest.mark.parametrize("name", ["ok.", "ok..", "a.b.", "ok ", "ok. "])
def test_trailing_dots_and_spaces_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"invalid site name {name!r}"):
        validate_name(name, "site")


@pytest.mark.parametrize("name", ["CONSOLE", "COM10", "LPT0", "nullable", "aux_1", "con1", "a.b"])
def test_names_that_only_look_like_device_names_are_accepted(name: str) -> None:
    assert validate_name(name, "site") == name


def test_site_names_differing_only_by_case_collide(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    folder = write_site(tmp_path / "site", n_cases=2)
    store.add_site("Clinic", discover_site(folder))
    for twin in ("clinic", "CLINIC"):
        with pytest.raises(StoreError, match=f"site '{twin}' differs from the registered site 'Clinic' only by upper/lower case"):
            store.add_site(twin, discover_site(folder))
    with pytest.raises(StoreError, match="already registered"):
        store.add_site("Clinic", discover_site(folder))
    assert [site.name for site in store.sites()] == ["Clinic"]
    assert sorted(path.name for path in (store.path / "sites").iterdir()) == ["Clinic"]


def test_case_ids_differing_only_by_case_collide(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", n_cases=2)
    shutil.copy(folder / "imagesTr" / "case00_0000.nii.gz", folder / "imagesTr" / "CASE00_0000.nii.gz")
    shutil.copy(folder / "labelsTr" / "case00.nii.gz", folder / "labelsTr" / "CASE00.nii.gz")
    with pytest.raises(SiteValidationError, match=r"case ids 'CASE00', 'case00' differ only by upper/lower case") as refused:
        validate_site(discover_site(folder), None)
    assert len(refused.value.problems) == 1


def test_a_reserved_case_id_is_refused(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", n_cases=2)
    (folder / "imagesTr" / "case00_0000.nii.gz").rename(folder / "imagesTr" / "aux_0000.nii.gz")
    (folder / "labelsTr" / "case00.nii.gz").rename(folder / "labelsTr" / "aux.nii.gz")
    with pytest.raises(SiteValidationError, match="AUX is a device name reserved by Windows"):
        validate_site(discover_site(folder), None)


def test_service_refuses_case_twins_and_reserved_names(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    folder = write_site(tmp_path / "site", n_cases=2)
    with local_client(create_app(store.path)) as client:
        assert client.post(f"{API}/sites", data={"name": "Clinic"}, files=upload_files(folder)).status_code == 201
        twin = client.post(f"{API}/sites", data={"name": "CLINIC"}, files=upload_files(folder))
        assert twin.status_code == 409
        assert "differs from the registered site 'Clinic' only by upper/lower case" in twin.json()["detail"]
        reserved = client.post(f"{API}/sites", data={"name": "LPT1"}, files=upload_files(folder))
        assert reserved.status_code == 400
        assert "LPT1 is a device name reserved by Windows" in reserved.json()["detail"]
        files = upload_files(folder)
        files += [("images", ("CASE00_0000.nii.gz", files[0][1][1], "application/octet-stream"))]
        files += [("labels", ("CASE00.nii.gz", files[2][1][1], "application/octet-stream"))]
        cases = client.post(f"{API}/sites", data={"name": "Other"}, files=files)
        assert cases.status_code == 422
        assert "differ only by upper/lower case" in cases.json()["detail"]
    assert [site.name for site in store.sites()] == ["Clinic"]
