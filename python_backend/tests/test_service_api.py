"""HTTP API v1 (dakr.service) through FastAPI's TestClient, on tiny synthetic stores.

Model versions are stored directly from untrained tiny networks and evaluations are recorded
by hand, so these tests never train; jobs are stood in for by a sleeping process.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

import dakr.service.app as app_module
from dakr import API_VERSION
from dakr.data.errors import ImageGridError
from dakr.data.site import discover_site
from dakr.progress import JsonLinesProgress, ProgressEvent
from dakr.service import create_app, serve_main
from dakr.service.job_files import EVENTS_FILE, LOG_FILE
from dakr.service.security import ServiceConfigError, is_loopback
from dakr.store import Store
from test_service_support import (
    LABELS,
    add_tiny_version,
    case_volumes,
    decoded,
    encoded,
    fake_worker,
    local_client,
    record_dice,
    upload_files,
    volume,
    wait_for,
    write_site,
)

API = "/api/v1"
SHIFT_HEADERS = ("X-DAKR-Shift-Score", "X-DAKR-Shift-Threshold", "X-DAKR-Out-Of-Distribution", "X-DAKR-Nearest-Site")
TOKEN = "a-test-token-of-sufficient-length"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store")


@pytest.fixture
def populated(tmp_path: Path, store: Store) -> Store:
    """Sites A and B (4 cases each, 1 audit), version 1 (A) and its child 2 (B, active), with Dice."""
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, seed=seed)), audit_fraction=0.25)
    add_tiny_version(store, "A", None)
    add_tiny_version(store, "B", 1)
    record_dice(store, 1, "A", 0.8, 0.6)
    record_dice(store, 1, "B", 0.6, 0.4)
    record_dice(store, 2, "A", 1.0, 0.8)
    return store


@pytest.fixture
def populated_client(populated: Store) -> Iterator[TestClient]:
    with local_client(create_app(populated.path)) as test_client:
        yield test_client


def audit_case(store: Store, site: str) -> str:
    return store.cases(site, "audit")[0].case_id


def assert_same_geometry(result: sitk.Image, reference: sitk.Image) -> None:
    assert result.GetSize() == reference.GetSize()
    assert np.allclose(result.GetSpacing(), reference.GetSpacing())
    assert np.allclose(result.GetOrigin(), reference.GetOrigin())
    assert np.allclose(result.GetDirection(), reference.GetDirection())


# -- info and schema -----------------------------------------------------------------------------
def test_info_of_an_empty_store(client: TestClient) -> None:
    info = client.get(f"{API}/info").json()
    assert info["product"] == "DAKRSegmentation"
    assert info["api_version"] == API_VERSION
    assert info["device"]["type"] in ("cpu", "cuda")
    assert isinstance(info["device"]["cuda_available_but_unused"], bool)
    assert (info["label_names"], info["active_version"], info["running_job"]) == (None, None, None)


def test_info_reports_label_set_and_active_version(populated_client: TestClient) -> None:
    info = populated_client.get(f"{API}/info").json()
    assert info["label_names"] == LABELS
    assert info["active_version"] == 2


def test_openapi_schema_documents_every_route_with_response_models(store: Store) -> None:
    schema = create_app(store.path).openapi()
    expected = {
        "/info": "get", "/sites": "post", "/sites/from-path": "post", "/sites/{name}/cases": "get",
        "/sites/{name}/purge": "post", "/jobs": "post", "/jobs/{job_id}": "get", "/jobs/{job_id}/events": "get",
        "/jobs/{job_id}/cancel": "post", "/jobs/{job_id}/resume": "post", "/jobs/{job_id}/log": "get",
        "/models": "get", "/models/{version_id}/activate": "post", "/models/{version_id}/download": "get",
        "/models/{version_id}/evaluate": "post", "/evaluation/matrix": "get", "/predict": "post",
        "/sites/{site}/cases/{case_id}/image": "get", "/sites/{site}/cases/{case_id}/label": "get",
        "/sites/{site}/cases/{case_id}/prediction": "get", "/sites/{site}/cases/{case_id}/dice": "get",
        "/sites/{site}/cases/{case_id}/uncertainty": "get",
    }
    for path, method in expected.items():
        assert method in schema["paths"][API + path], path
    job = schema["paths"][f"{API}/jobs/{{job_id}}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert job["$ref"].endswith("/JobOut")
    conflict = schema["paths"][f"{API}/jobs"]["post"]["responses"]["409"]["content"]["application/json"]["schema"]
    assert conflict["$ref"].endswith("/ConflictOut")
    assert {"InfoOut", "SiteOut", "ModelOut", "MatrixOut", "EventsOut", "ProgressEvent"} <= set(schema["components"]["schemas"])
    assert {"stage", "step", "total", "losses", "eta_s"} <= set(schema["components"]["schemas"]["ProgressEvent"]["properties"])
    for path, method in (("/predict", "post"), ("/sites/{site}/cases/{case_id}/uncertainty", "get")):
        assert set(schema["paths"][API + path][method]["responses"]["200"]["headers"]) == set(SHIFT_HEADERS), path


# -- security ------------------------------------------------------------------------------------
def test_token_is_required_on_every_route(store: Store) -> None:
    with local_client(create_app(store.path, token=TOKEN)) as client:
        missing = client.get(f"{API}/info")
        assert missing.status_code == 401
        assert "Authorization: Bearer" in missing.json()["detail"]
        assert client.get(f"{API}/info", headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
        assert client.get(f"{API}/info", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.get(f"{API}/sites", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
        assert client.post(f"{API}/models/1/activate").status_code == 401
        assert client.get(f"{API}/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        authorised = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/openapi.json", "/docs"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers=authorised).status_code == 404


def test_refuses_a_non_loopback_server_without_token(store: Store) -> None:
    with pytest.raises(ServiceConfigError, match="token"):
        create_app(store.path, loopback=False)
    with pytest.raises(ServiceConfigError, match="at least 16 characters"):
        create_app(store.path, token="short")
    create_app(store.path, loopback=False, token=TOKEN)


def test_serve_refuses_to_start_on_all_interfaces_without_token(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server must not start")

    monkeypatch.setattr(app_module.uvicorn, "run", must_not_start)
    assert serve_main(store.path, host="0.0.0.0", port=1) == 2
    assert "refusing to listen on a non-loopback address without a token" in capsys.readouterr().err
    assert serve_main(store.path.parent / "missing", port=1) == 2
    assert "is not a DAKR store" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.org", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("name", ["%2E%2E", "..", ".hidden", "a%20b", "x" * 65, "a%5Cb"])
def test_invalid_site_names_in_paths_are_rejected(populated_client: TestClient, name: str) -> None:
    response = populated_client.get(f"{API}/sites/{name}/cases")
    assert response.status_code in (400, 404)
    if response.status_code == 404:
        assert name == ".."
    else:
        assert "invalid site name" in response.json()["detail"]


def test_invalid_case_names_are_rejected(populated_client: TestClient) -> None:
    for case in ("%2E%2E", ".profile", "a%20b"):
        response = populated_client.get(f"{API}/sites/A/cases/{case}/image")
        assert response.status_code == 400, case
        assert "invalid case name" in response.json()["detail"]


def test_traversal_in_uploaded_names_is_rejected_and_nothing_written(client: TestClient, store: Store, tmp_path: Path) -> None:
    files = upload_files(write_site(tmp_path / "site"))
    response = client.post(f"{API}/sites", data={"name": "../evil"}, files=files)
    assert response.status_code == 400
    assert "invalid site name" in response.json()["detail"]
    evil = [("images", ("../../evil_0000.nii.gz", files[0][1][1], "application/octet-stream"))] + files[1:]
    response = client.post(f"{API}/sites", data={"name": "good"}, files=evil)
    assert response.status_code == 400
    assert "invalid file name" in response.json()["detail"]
    assert client.get(f"{API}/sites").json() == []
    assert not list(tmp_path.rglob("evil*"))


# -- uploads -------------------------------------------------------------------------------------
def test_register_site_by_upload(client: TestClient, store: Store, tmp_path: Path) -> None:
    files = upload_files(write_site(tmp_path / "site", n_cases=5))
    response = client.post(f"{API}/sites", data={"name": "siteA", "audit_fraction": "0.4", "seed": "3"}, files=files)
    assert response.status_code == 201, response.text
    site = response.json()
    assert (site["name"], site["n_train"], site["n_audit"], site["split_seed"], site["purged"]) == ("siteA", 3, 2, 3, False)
    cases = client.get(f"{API}/sites/siteA/cases").json()
    assert sorted(case["case_id"] for case in cases) == [f"case{index:02d}" for index in range(5)]
    assert sorted(case["split"] for case in cases) == ["audit"] * 2 + ["train"] * 3
    assert client.get(f"{API}/sites").json() == [site]
    assert client.get(f"{API}/info").json()["label_names"] == {"background": 0, "label_1": 1, "label_2": 2}
    again = client.post(f"{API}/sites", data={"name": "siteA"}, files=files)
    assert again.status_code == 409
    assert "already registered" in again.json()["detail"]


def test_uploaded_label_names_are_used(client: TestClient, tmp_path: Path) -> None:
    files = upload_files(write_site(tmp_path / "site"))
    response = client.post(f"{API}/sites", data={"name": "A", "label_names": json.dumps(LABELS)}, files=files)
    assert response.status_code == 201, response.text
    assert client.get(f"{API}/info").json()["label_names"] == LABELS
    bad = client.post(f"{API}/sites", data={"name": "B", "label_names": '{"A": 1}'}, files=files)
    assert bad.status_code == 400
    assert "background" in bad.json()["detail"]


def test_oversized_upload_is_refused_with_413(store: Store, tmp_path: Path) -> None:
    files = upload_files(write_site(tmp_path / "site"))
    with local_client(create_app(store.path, max_upload_mb=0.01)) as client:
        response = client.post(f"{API}/sites", data={"name": "A"}, files=files)
        assert response.status_code == 413
        assert "limit of 0.01 MB" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"x" * 4096

        streamed = client.post(f"{API}/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413
        assert "--max-upload-mb" in streamed.json()["detail"]
    assert store.sites() == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("case00_0000.nii.gz", b"this is a text file, not a volume" * 20, "not a NIfTI, NRRD or MetaImage volume"),
        ("case00_0000.nii.gz", None, "the content is nrrd data"),
        ("case00_0000.txt", None, "unsupported file type"),
    ],
)
def test_wrong_content_is_refused_with_415(
    client: TestClient, tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    files = upload_files(write_site(tmp_path / "site"))
    data = content if content is not None else encoded(case_volumes(0)[0], ".nrrd")
    files[0] = ("images", (name, data, "application/octet-stream"))
    response = client.post(f"{API}/sites", data={"name": "A"}, files=files)
    assert response.status_code == 415
    assert message in response.json()["detail"]
    assert client.get(f"{API}/sites").json() == []


def test_invalid_site_is_rejected_with_every_problem_and_nothing_stored(client: TestClient, store: Store, tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    image, label = case_volumes(1)
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad_label = volume(array)
    (site / "labelsTr" / "case01.nii.gz").write_bytes(encoded(bad_label))
    (site / "labelsTr" / "case02.nii.gz").unlink()
    files = upload_files(site)
    response = client.post(f"{API}/sites", data={"name": "A", "label_names": json.dumps(LABELS)}, files=files)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "2 problem(s)" in detail
    assert "labels/case01.nii.gz" in detail and "7" in detail
    assert "labels/case02.nii.gz" in detail and "missing" in detail
    assert "nothing was stored" in detail
    assert client.get(f"{API}/sites").json() == []
    assert store.label_names is None
    assert [path for path in (store.path / "sites").iterdir()] == []


def test_two_label_maps_for_one_case_are_rejected(client: TestClient, tmp_path: Path) -> None:
    files = upload_files(write_site(tmp_path / "site"))
    files.append(("labels", ("case01.nrrd", encoded(case_volumes(1)[1], ".nrrd"), "application/octet-stream")))
    response = client.post(f"{API}/sites", data={"name": "A"}, files=files)
    assert response.status_code == 422
    assert "labels/case01.nrrd: is one of 2 label maps for case 'case01'" in response.json()["detail"]
    assert client.get(f"{API}/sites").json() == []


def test_register_site_from_server_path(client: TestClient, tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    response = client.post(f"{API}/sites/from-path", json={"name": "A", "path": str(site)})
    assert response.status_code == 201, response.text
    assert response.json()["n_train"] + response.json()["n_audit"] == 4
    relative = client.post(f"{API}/sites/from-path", json={"name": "B", "path": "site"})
    assert relative.status_code == 400
    missing = client.post(f"{API}/sites/from-path", json={"name": "C", "path": str(tmp_path / "nowhere")})
    assert missing.status_code == 400
    assert "is not a folder" in missing.json()["detail"]


def test_server_path_registration_is_refused_off_loopback(store: Store, tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    with local_client(create_app(store.path, token=TOKEN, loopback=False)) as client:
        response = client.post(
            f"{API}/sites/from-path", json={"name": "A", "path": str(site)}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 403
    assert "POST /api/v1/sites" in response.json()["detail"]
    assert store.sites() == []


# -- jobs ----------------------------------------------------------------------------------------
def test_second_training_job_gets_409_with_the_running_job(populated_client: TestClient, populated: Store) -> None:
    with fake_worker(populated, {"site": "B", "strategy": "dakr", "config": {}}) as (job, process):
        response = populated_client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A", "config": {"train.epochs": 1}})
        assert response.status_code == 409
        assert response.json()["job_id"] == job.id
        assert f"/jobs/{job.id}/cancel" in response.json()["detail"]
        assert populated_client.get(f"{API}/info").json()["running_job"] == job.id
        assert len(populated.jobs()) == 1


def test_job_requests_are_checked_before_a_worker_starts(populated_client: TestClient, populated: Store) -> None:
    cases = [
        ({"kind": "adapt", "site": "nowhere"}, 400, "unknown site"),
        ({"kind": "adapt", "site": "../A"}, 400, "invalid site name"),
        ({"kind": "adapt", "site": "A", "strategy": "magic"}, 400, "unknown strategy"),
        ({"kind": "adapt", "site": "A", "config": {"train.epochz": 1}}, 400, "unknown config key"),
        ({"kind": "adapt", "site": "A", "config": {"net.filters": [8, 16, 32]}}, 400, "cannot change after the base model"),
        ({"kind": "train", "site": "A"}, 422, "body.kind"),
    ]
    for body, status_code, message in cases:
        response = populated_client.post(f"{API}/jobs", json=body)
        assert response.status_code == status_code, body
        assert message in response.json()["detail"], body
    assert populated.jobs() == []


def test_cancel_stops_the_worker_group(populated_client: TestClient, populated: Store) -> None:
    with fake_worker(populated, {"site": "B", "strategy": "dakr", "config": {}}) as (job, process):
        response = populated_client.post(f"{API}/jobs/{job.id}/cancel")
        assert response.status_code == 200
        process.wait(timeout=10)
        state = wait_for(
            lambda: populated.job(job.id).state if populated.job(job.id).state == "cancelled" else None, 10, "cancelled"
        )
    assert state == "cancelled"
    assert "resume" in populated.job(job.id).error
    again = populated_client.post(f"{API}/jobs/{job.id}/cancel")
    assert again.status_code == 409
    assert "only queued or running jobs" in again.json()["detail"]
    assert populated_client.get(f"{API}/info").json()["running_job"] is None


def test_purging_the_site_a_job_trains_on_is_refused(populated_client: TestClient, populated: Store) -> None:
    with fake_worker(populated, {"site": "B", "strategy": "dakr", "config": {}}) as (job, process):
        response = populated_client.post(f"{API}/sites/B/purge")
        assert response.status_code == 409
        assert job.id in response.json()["detail"]
    assert populated.site("B").purged is False


def test_jobs_left_running_by_a_dead_server_are_marked_interrupted(store: Store) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running = store.update_job(store.create_job("adapt", {"site": "A"}).id, state="running", pid=dead.pid)
    queued = store.create_job("evaluate", {"version": 1})
    finished = store.update_job(store.create_job("evaluate", {"version": 1}).id, state="succeeded", result={"version": 1})
    with local_client(create_app(store.path)) as client:
        jobs = {job["id"]: job for job in client.get(f"{API}/jobs").json()}
    assert jobs[running.id]["state"] == "interrupted"
    assert jobs[queued.id]["state"] == "interrupted"
    assert f"/jobs/{running.id}/resume" in jobs[running.id]["error"]
    assert jobs[finished.id]["state"] == "succeeded"


def test_job_status_events_and_log(client: TestClient, store: Store) -> None:
    job = store.create_job("adapt", {"site": "A", "strategy": "dakr", "config": {}})
    store.update_job(job.id, state="succeeded", result={"version": 3})
    job_dir = store.job_dir(job.id)
    progress = JsonLinesProgress(job_dir / EVENTS_FILE)
    for step in (1, 2, 3):
        progress(ProgressEvent(stage="train", step=step, total=3, losses={"seg": 1.0 / step}, eta_s=3.0 - step))
    with (job_dir / EVENTS_FILE).open("a") as handle:
        handle.write('{"stage": "tra')
    (job_dir / LOG_FILE).write_text("".join(f"line {index}\n" for index in range(500)))

    status = client.get(f"{API}/jobs/{job.id}").json()
    assert (status["state"], status["kind"], status["result"]) == ("succeeded", "adapt", {"version": 3})
    assert status["progress"]["step"] == 3 and status["progress"]["losses"] == {"seg": pytest.approx(1 / 3)}
    assert [item["id"] for item in client.get(f"{API}/jobs").json()] == [job.id]

    events = client.get(f"{API}/jobs/{job.id}/events", params={"since": 1}).json()
    assert [event["step"] for event in events["events"]] == [2, 3]
    assert events["next"] == 3
    assert client.get(f"{API}/jobs/{job.id}/events", params={"since": 3}).json() == {"events": [], "next": 3}
    assert client.get(f"{API}/jobs/{job.id}/events", params={"since": -1}).status_code == 422

    assert client.get(f"{API}/jobs/{job.id}/log", params={"lines": 2}).json() == {"lines": ["line 498", "line 499"]}
    assert len(client.get(f"{API}/jobs/{job.id}/log").json()["lines"]) == 200
    assert client.get(f"{API}/jobs/{job.id}/log", params={"lines": 0}).status_code == 422


def test_unknown_jobs_and_wrong_states(client: TestClient, store: Store) -> None:
    for path in ("", "/events", "/log"):
        assert client.get(f"{API}/jobs/nope{path}").status_code == 404
    for action in ("cancel", "resume"):
        assert client.post(f"{API}/jobs/nope/{action}").status_code == 404
    job = store.update_job(store.create_job("adapt", {"site": "A"}).id, state="succeeded")
    response = client.post(f"{API}/jobs/{job.id}/resume")
    assert response.status_code == 409
    assert "only interrupted or cancelled jobs" in response.json()["detail"]


# -- models and evaluation -----------------------------------------------------------------------
def test_models_list_lineage_activity_and_dice(populated_client: TestClient) -> None:
    models = populated_client.get(f"{API}/models").json()
    assert [(m["id"], m["parent"], m["site"], m["active"]) for m in models] == [(1, None, "A", False), (2, 1, "B", True)]
    assert models[0]["dice"] == {"A": pytest.approx(0.7), "B": pytest.approx(0.5)}
    assert models[1]["dice"] == {"A": pytest.approx(0.9)}
    assert models[0]["config"]["net"]["filters"] == [4, 8, 16]


def test_activate_rolls_back(populated_client: TestClient, populated: Store) -> None:
    response = populated_client.post(f"{API}/models/1/activate")
    assert response.status_code == 200
    assert response.json()["active"] is True and response.json()["id"] == 1
    assert populated_client.get(f"{API}/info").json()["active_version"] == 1
    assert [m["active"] for m in populated_client.get(f"{API}/models").json()] == [True, False]
    missing = populated_client.post(f"{API}/models/9/activate")
    assert missing.status_code == 404
    assert "unknown model version" in missing.json()["detail"]
    assert populated.active_version().id == 1


def test_evaluation_matrix(populated_client: TestClient) -> None:
    matrix = populated_client.get(f"{API}/evaluation/matrix").json()
    assert matrix["versions"] == [1, 2]
    assert matrix["sites"] == ["A", "B"]
    assert matrix["dice"] == [[pytest.approx(0.7), pytest.approx(0.5)], [pytest.approx(0.9), None]]
    assert matrix["per_class"]["A"] == [[pytest.approx(0.8), pytest.approx(0.6)], [pytest.approx(1.0), None]]
    assert set(matrix["per_class"]) == {"A", "B"}


def test_case_dice_before_and_after(populated_client: TestClient, populated: Store) -> None:
    case = audit_case(populated, "A")
    response = populated_client.get(f"{API}/sites/A/cases/{case}/dice", params={"before": 1, "after": 2})
    assert response.json() == {"before": pytest.approx(0.7), "after": pytest.approx(0.9)}
    case_b = audit_case(populated, "B")
    response = populated_client.get(f"{API}/sites/B/cases/{case_b}/dice", params={"before": 1, "after": 2})
    assert response.json() == {"before": pytest.approx(0.5), "after": None}
    assert populated_client.get(f"{API}/sites/A/cases/{case}/dice", params={"before": 1, "after": 9}).status_code == 404
    assert populated_client.get(f"{API}/sites/A/cases/nocase/dice", params={"before": 1, "after": 2}).status_code == 404


def test_download_holds_weights_and_config_only(populated_client: TestClient) -> None:
    response = populated_client.get(f"{API}/models/1/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        assert sorted(bundle.namelist()) == ["config.json", "weights.safetensors"]
        assert json.loads(bundle.read("config.json"))["net"]["patch_size"] == [16, 16]
    assert populated_client.get(f"{API}/models/7/download").status_code == 404
    assert populated_client.post(f"{API}/models/7/evaluate").status_code == 404


# -- prediction and audit files ------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_predict_keeps_format_and_geometry(populated_client: TestClient, suffix: str) -> None:
    image = case_volumes(2, seed=5)[0]
    files = {"file": (f"scan_0000{suffix}", encoded(image, suffix), "application/octet-stream")}
    response = populated_client.post(f"{API}/predict", files=files, params={"version": 1})
    assert response.status_code == 200, response.text
    assert f'filename="scan{suffix}"' in response.headers["content-disposition"]
    label = decoded(response.content, suffix)
    assert_same_geometry(label, image)
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= set(LABELS.values())


def test_predict_errors(populated_client: TestClient, tmp_path: Path) -> None:
    data = encoded(case_volumes(0)[0])
    with local_client(create_app(Store.init(tmp_path / "empty").path)) as empty_client:
        no_model = empty_client.post(f"{API}/predict", files={"file": ("scan.nii.gz", data)})
    assert no_model.status_code == 409
    assert "no model yet" in no_model.json()["detail"]
    unknown = populated_client.post(f"{API}/predict", files={"file": ("scan.nii.gz", data)}, params={"version": 5})
    assert unknown.status_code == 404
    assert populated_client.post(f"{API}/predict", files={"file": ("scan.nii.gz", b"junk" * 100)}).status_code == 415
    assert populated_client.post(f"{API}/predict", files={"file": ("../scan.nii.gz", data)}).status_code == 400


def test_audit_files_of_a_stored_case(populated_client: TestClient, populated: Store) -> None:
    case = populated.cases("A", "audit")[0]
    image = decoded(populated_client.get(f"{API}/sites/A/cases/{case.case_id}/image").content)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_path))))
    label = decoded(populated_client.get(f"{API}/sites/A/cases/{case.case_id}/label").content)
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_path))))
    response = populated_client.get(f"{API}/sites/A/cases/{case.case_id}/prediction", params={"version": 1})
    assert response.status_code == 200
    assert_same_geometry(decoded(response.content), image)
    assert populated.prediction_path(1, "A", case.case_id).exists()
    active = populated_client.get(f"{API}/sites/A/cases/{case.case_id}/prediction")
    assert active.status_code == 200 and populated.prediction_path(2, "A", case.case_id).exists()
    assert populated_client.get(f"{API}/sites/A/cases/nocase/image").status_code == 404
    assert populated_client.get(f"{API}/sites/Z/cases/{case.case_id}/image").status_code == 404
    assert populated_client.get(f"{API}/sites/A/cases/{case.case_id}/prediction", params={"version": 4}).status_code == 404


def test_uncertainty_of_a_stored_case_is_the_upload_answer_without_the_upload(populated_client: TestClient, populated: Store) -> None:
    case = populated.cases("A", "audit")[0]
    url = f"{API}/sites/A/cases/{case.case_id}/uncertainty"
    response = populated_client.get(url, params={"version": 1})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert f'filename="A_{case.case_id}_v1_uncertainty.nii.gz"' in response.headers["content-disposition"]
    uncertainty = decoded(response.content)
    assert_same_geometry(uncertainty, sitk.ReadImage(str(case.image_path)))
    values = sitk.GetArrayFromImage(uncertainty)
    assert uncertainty.GetPixelID() == sitk.sitkFloat32 and 0.0 <= values.min() <= values.max() <= 1.0
    score, threshold = float(response.headers["X-DAKR-Shift-Score"]), float(response.headers["X-DAKR-Shift-Threshold"])
    assert response.headers["X-DAKR-Out-Of-Distribution"] == ("true" if score > threshold else "false")
    assert response.headers["X-DAKR-Nearest-Site"] == "A"
    uploaded = populated_client.post(f"{API}/predict", files={"file": ("scan.nii.gz", case.image_path.read_bytes())},
                                     params={"version": 1, "output": "uncertainty"})
    assert uploaded.status_code == 200, uploaded.text
    assert {name: response.headers[name] for name in SHIFT_HEADERS} == {name: uploaded.headers[name] for name in SHIFT_HEADERS}
    assert np.array_equal(values, sitk.GetArrayFromImage(decoded(uploaded.content)))
    active = populated_client.get(url)
    assert active.status_code == 200 and active.headers["X-DAKR-Nearest-Site"] in ("A", "B")
    assert 'filename="A_' + case.case_id + '_v2_uncertainty.nii.gz"' in active.headers["content-disposition"]
    assert list(populated.temp_path.iterdir()) == [], "the temporary map is removed after the response"


def test_uncertainty_of_a_stored_case_errors_leave_no_temporary_file(
    populated_client: TestClient, populated: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = audit_case(populated, "A")
    assert populated_client.get(f"{API}/sites/A/cases/nocase/uncertainty").status_code == 404
    assert populated_client.get(f"{API}/sites/Z/cases/{case}/uncertainty").status_code == 404
    assert populated_client.get(f"{API}/sites/A/cases/{case}/uncertainty", params={"version": 4}).status_code == 404
    no_model = Store.init(tmp_path / "no-model")
    no_model.add_site("A", discover_site(write_site(tmp_path / "site")), audit_fraction=0.25)
    with local_client(create_app(no_model.path)) as client:
        refused = client.get(f"{API}/sites/A/cases/{audit_case(no_model, 'A')}/uncertainty")
    assert refused.status_code == 409 and "no model yet" in refused.json()["detail"]

    def over_the_grid_limit(*args: object, source: str, **kwargs: object) -> None:
        raise ImageGridError(source, "resampled grid over the limit", "raise DAKR_MAX_VOXELS")

    monkeypatch.setattr("dakr.service.routes_audit.predict_with_shift", over_the_grid_limit)
    failed = populated_client.get(f"{API}/sites/A/cases/{case}/uncertainty")
    assert failed.status_code == 422 and f"case {case} of site A" in failed.json()["detail"]
    assert list(populated.temp_path.iterdir()) == [], "the temporary folder is removed when the prediction fails"
    populated_client.post(f"{API}/sites/A/purge")
    assert populated_client.get(f"{API}/sites/A/cases/{case}/uncertainty").status_code == 410


def test_purge_keeps_metrics_and_removes_volumes(populated_client: TestClient, populated: Store) -> None:
    case = audit_case(populated, "A")
    response = populated_client.post(f"{API}/sites/A/purge")
    assert response.status_code == 200
    assert response.json()["purged"] is True
    gone = populated_client.get(f"{API}/sites/A/cases/{case}/image")
    assert gone.status_code == 410
    assert "purged" in gone.json()["detail"]
    dice = populated_client.get(f"{API}/sites/A/cases/{case}/dice", params={"before": 1, "after": 2})
    assert dice.json() == {"before": pytest.approx(0.7), "after": pytest.approx(0.9)}
    refused = populated_client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A"})
    assert refused.status_code == 400
    assert "purged" in refused.json()["detail"]
    assert populated_client.post(f"{API}/sites/nowhere/purge").status_code == 404
