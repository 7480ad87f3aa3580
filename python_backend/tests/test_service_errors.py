"""Bad input gets a 4xx with a message, storage failures a 507/503 with their cause, never a 500;
error bodies match the OpenAPI schema and name the store without its absolute path."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import dakr.service.jobs as jobs_module
from dakr.data.site import discover_site
from dakr.service import worker
from dakr.service.context import clean_temp_area
from dakr.service.failures import EXIT_STORAGE_FAILED
from dakr.service.jobs import JobRunner
from dakr.store import Store, StoreError
from test_service_support import case_volumes, encoded, store_with_base, upload_files, wait_for, write_site

API = "/api/v1"
HUGE = [2**63, 2**64, 10**30]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return store_with_base(tmp_path)


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- bounded integers, seeds, folders ------------------------------------------------------------
@pytest.mark.parametrize("number", HUGE)
def test_overflowing_integers_get_422(client: TestClient, store: Store, number: int) -> None:
    case = store.cases("A", "audit")[0].case_id
    requests = [
        ("post", f"/models/{number}/activate", {}),
        ("get", f"/models/{number}/download", {}),
        ("post", f"/models/{number}/evaluate", {}),
        ("get", f"/sites/A/cases/{case}/prediction", {"params": {"version": number}}),
        ("get", f"/sites/A/cases/{case}/uncertainty", {"params": {"version": number}}),
        ("get", f"/sites/A/cases/{case}/dice", {"params": {"before": number, "after": 1}}),
        ("get", "/jobs/x/events", {"params": {"since": number}}),
    ]
    for method, path, options in requests:
        response = getattr(client, method)(API + path, **options)
        assert response.status_code == 422, path
        assert isinstance(response.json()["detail"], str) and "less than or equal" in response.json()["detail"], path
    assert client.post(f"{API}/models/0/activate").status_code == 422
    assert store.jobs() == []


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70])
def test_bad_seeds_get_422(client: TestClient, store: Store, tmp_path: Path, seed: int) -> None:
    site = write_site(tmp_path / f"site{seed}")
    from_path = client.post(f"{API}/sites/from-path", json={"name": "B", "path": str(site), "seed": seed})
    uploaded = client.post(f"{API}/sites", data={"name": "C", "seed": str(seed)}, files=upload_files(site))
    for response in (from_path, uploaded):
        assert response.status_code == 422
        assert "seed" in response.json()["detail"]
    assert [info.name for info in store.sites()] == ["A"]
    with pytest.raises(StoreError, match="seed"):
        store.add_site("D", discover_site(site), seed=seed)


@pytest.mark.parametrize(
    ("path", "message"),
    [("~nosuchuser-dakr/x", "cannot be expanded"), ("/tmp/a\0b", "NUL character"), ("relative/x", "not an absolute path")],
)
def test_unusable_folders_get_400(client: TestClient, path: str, message: str) -> None:
    response = client.post(f"{API}/sites/from-path", json={"name": "B", "path": path})
    assert response.status_code == 400
    assert message in response.json()["detail"]


# -- storage failures ----------------------------------------------------------------------------
def test_disk_full_gets_507_with_its_cause(client: TestClient, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The site is registered by a child process: the full disk is injected there, at its start.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import errno, os\n"
        "import dakr.store\n"
        "def no_space(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "dakr.store.Store.add_site = no_space\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    response = client.post(f"{API}/sites/from-path", json={"name": "B", "path": str(write_site(tmp_path / "B"))})
    assert response.status_code == 507
    detail = response.json()["detail"]
    assert "No space left on device" in detail and f"store {store.name!r} is full" in detail
    assert str(store.path) not in detail


def test_disk_full_while_writing_a_prediction_gets_507(client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dakr.store.store.os.replace", no_space)
    case = store.cases("A", "audit")[0].case_id
    response = client.get(f"{API}/sites/A/cases/{case}/prediction")
    assert response.status_code == 507
    assert "No space left on device" in response.json()["detail"]


def test_database_io_error_gets_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "versions", broken)
    response = client.get(f"{API}/models")
    assert response.status_code == 503
    assert "disk I/O error" in response.json()["detail"]


def test_disk_full_in_a_job_keeps_the_cause_in_its_record(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    job = store.create_job("evaluate", {"version": 1})
    monkeypatch.setattr(worker, "_run", no_space)
    assert worker.worker_main(store.path, job.id) == 0
    record = store.job(job.id)
    assert record.state == "interrupted"
    assert "No space left on device" in record.error and f"/jobs/{job.id}/resume" in record.error
    assert str(store.path) not in record.error


def test_a_worker_that_cannot_record_its_failure_is_reported_by_the_server(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    exit_code = f"import sys; sys.exit({EXIT_STORAGE_FAILED})"
    monkeypatch.setattr(jobs_module, "worker_command", lambda path, job_id, threads: [sys.executable, "-c", exit_code, job_id])
    runner = JobRunner(store, store.path, poll_interval_s=0.1)
    runner.start()
    try:
        job = runner.submit("evaluate", {"version": 1})
        record = wait_for(lambda: store.job(job.id) if store.job(job.id).state == "interrupted" else None, 30, "the job to stop")
    finally:
        runner.stop()
    assert "a full disk or an I/O error" in record.error and f"/jobs/{job.id}/resume" in record.error


# -- schema ------------------------------------------------------------------------------------
def test_error_bodies_match_the_schema(client: TestClient, store: Store) -> None:
    schema = client.get("/openapi.json").json()
    invalid = schema["paths"][f"{API}/models/{{version_id}}/activate"]["post"]["responses"]["422"]
    assert invalid["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    for route in ("resume", "cancel"):
        conflict = schema["paths"][f"{API}/jobs/{{job_id}}/{route}"]["post"]["responses"]["409"]
        assert conflict["content"]["application/json"]["schema"]["$ref"].endswith("/ConflictOut")
    job = store.update_job(store.create_job("evaluate", {"version": 1}).id, state="succeeded")
    for route in ("resume", "cancel"):
        response = client.post(f"{API}/jobs/{job.id}/{route}")
        assert response.status_code == 409
        assert response.json()["job_id"] == job.id


# -- temporary files -----------------------------------------------------------------------------
def test_prediction_uploads_stay_in_the_store_and_leftovers_are_cleaned(client: TestClient, store: Store) -> None:
    image, _ = case_volumes(0)
    response = client.post(f"{API}/predict", files={"file": ("scan.nii.gz", encoded(image), "application/octet-stream")})
    assert response.status_code == 200
    assert list(store.temp_path.iterdir()) == []
    dead = store.temp_path / ".tmp-999999999-left"
    dead.mkdir()
    alive = store.temp_name()
    alive.mkdir()
    clean_temp_area(store)
    assert not dead.exists() and alive.exists()


def test_job_errors_name_the_store_without_its_path(client: TestClient, store: Store) -> None:
    job = store.update_job(store.create_job("evaluate", {"version": 1}).id, state="failed", error=f"cannot read {store.path}/models/1")
    assert client.get(f"{API}/jobs/{job.id}").json()["error"] == f"cannot read {store.name}/models/1"
