"""The backend client's requests and its handling of every kind of backend answer and failure,
against a scripted loopback HTTP server."""

from __future__ import annotations

import email.parser
import email.policy
import json
from pathlib import Path

import pytest

from DAKRSegmentationLib import client as client_module
from DAKRSegmentationLib import mrmlio, shift, testing
from DAKRSegmentationLib.client import (
    BackendClient,
    BackendError,
    BackendUnavailableError,
    IncompatibleBackendError,
    JobConflictError,
    UploadCase,
    ValidationFailedError,
)
from DAKRSegmentationLib.jobs import JobMonitor
from DAKRSegmentationLib.session import Session
from fake_http import INFO, SITE_CHECK, FakeBackend, shift_headers


@pytest.fixture
def fake():
    servers = []

    def start(routes):
        server = FakeBackend(routes)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_info_is_checked_for_the_api_major_version(fake) -> None:
    server = fake({("GET", "/api/v1/info"): (200, {**INFO, "api_version": "2.3"})})
    with pytest.raises(IncompatibleBackendError, match=r"API version 2\.3, this module supports 1\.x\. Fix: update"):
        BackendClient(server.url).info()
    server.routes[("GET", "/api/v1/info")] = (200, {**INFO, "api_version": "1.7"})
    assert BackendClient(server.url).info()["api_version"] == "1.7"


def test_unreachable_backend_names_the_address_and_the_fix(fake) -> None:
    server = fake({})
    url = server.url
    server.close()
    with pytest.raises(BackendUnavailableError, match=rf"No DAKR backend answered at {url}.*Fix: start the local backend"):
        BackendClient(url, timeout_s=2).info()


def test_invalid_address_is_refused_before_any_request() -> None:
    with pytest.raises(BackendError, match="not a backend address"):
        BackendClient("localhost:8765")


def test_token_is_sent_and_a_refusal_explains_it(fake) -> None:
    server = fake({("GET", "/api/v1/sites"): (401, {"detail": "missing or wrong token"})})
    with pytest.raises(BackendError, match="refused the token") as raised:
        BackendClient(server.url, token="s3cret").sites()
    assert raised.value.status == 401
    assert server.requests[0].headers["Authorization"] == "Bearer s3cret"


def test_validation_errors_become_one_line_per_problem(fake) -> None:
    detail = ("site 'B' has 2 problems:\n"
              "case2_0000.nii.gz: label values [7] are not in the label set {background, shell, core}. Fix: relabel\n"
              "case3.nii.gz: label map has no foreground. Fix: segment the structures or remove the case")
    server = fake({("POST", "/api/v1/sites/from-path"): (422, {"detail": detail})})
    with pytest.raises(ValidationFailedError) as raised:
        BackendClient(server.url).register_site_from_path("B", "/data/B")
    assert raised.value.problems[1].startswith("case2_0000.nii.gz: label values [7]")
    assert "Fix: segment the structures" in str(raised.value)


def test_request_validation_errors_of_the_framework_are_readable(fake) -> None:
    detail = [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}]
    server = fake({("POST", "/api/v1/sites/from-path"): (422, {"detail": detail})})
    with pytest.raises(ValidationFailedError) as raised:
        BackendClient(server.url).register_site_from_path("", "/x")
    assert raised.value.problems == ["name: Field required"]


def test_conflict_names_the_running_job(fake) -> None:
    server = fake({("POST", "/api/v1/jobs"): (409, {"detail": "a training job is running", "job_id": "j-7"})})
    with pytest.raises(JobConflictError) as raised:
        BackendClient(server.url).start_adapt("B", "dakr", {"train.epochs": 1})
    assert raised.value.job_id == "j-7"
    assert json.loads(server.requests[0].body) == {"kind": "adapt", "site": "B", "strategy": "dakr", "config": {"train.epochs": 1}}


def test_server_error_keeps_status_and_detail(fake) -> None:
    server = fake({("POST", "/api/v1/models/3/activate"): (500, {"detail": "store is read-only"})})
    with pytest.raises(BackendError, match=r"POST /models/3/activate failed \(500\): store is read-only") as raised:
        BackendClient(server.url).activate_model(3)
    assert raised.value.status == 500


def _parse_multipart(request) -> list:
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    return [(part.get_param("name", header="content-disposition"), part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()]


def test_site_upload_is_multipart_with_case_ids_in_file_names(fake, tmp_path: Path) -> None:
    server = fake({("POST", "/api/v1/sites"): (201, {"name": "B", "n_train": 1, "n_audit": 1})})
    files = {}
    for name in ("a_img.nii.gz", "a_lab.nii.gz", "b_img.nrrd", "b_lab.nrrd"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * 1000)
    cases = [UploadCase("a", files["a_img.nii.gz"], files["a_lab.nii.gz"]),
             UploadCase("b", files["b_img.nrrd"], files["b_lab.nrrd"])]

    answer = BackendClient(server.url).register_site("B", cases, {"background": 0, "x": 1})

    assert answer["name"] == "B"
    parts = _parse_multipart(server.requests[0])
    assert parts[0] == ("name", None, b"B")
    assert json.loads(parts[1][2]) == {"background": 0, "x": 1}
    assert [(p[0], p[1]) for p in parts[2:]] == [
        ("images", "a_0000.nii.gz"), ("labels", "a.nii.gz"), ("images", "b_0000.nrrd"), ("labels", "b.nrrd")]
    assert parts[2][2] == files["a_img.nii.gz"].read_bytes()
    assert parts[5][2] == files["b_lab.nrrd"].read_bytes()


def test_download_writes_the_file_and_leaves_nothing_on_failure(fake, tmp_path: Path) -> None:
    server = fake({
        ("GET", "/api/v1/sites/A/cases/c1/prediction"): lambda r: (200, f"v{r.query['version'][0]}".encode()),
        ("GET", "/api/v1/sites/A/cases/c2/image"): (404, {"detail": "no case c2 in site A"}),
    })
    api = BackendClient(server.url)
    path = api.download_case_file("A", "c1", "prediction", tmp_path / "p.nii.gz", version=4)
    assert path.read_bytes() == b"v4"
    with pytest.raises(BackendError, match="no case c2 in site A"):
        api.download_case_file("A", "c2", "image", tmp_path / "x" / "i.nii.gz")
    assert not list((tmp_path / "x").iterdir())
    with pytest.raises(ValueError, match="needs the model version"):
        api.download_case_file("A", "c1", "prediction", tmp_path / "q.nii.gz")


def test_job_monitor_asks_only_for_new_events_and_reports_progress(fake) -> None:
    events = [
        {"stage": "train", "step": 10, "total": 40, "epoch": 1, "epochs": 4, "losses": {"seg": 0.5, "cna": 0.1},
         "throughput": 3.0, "eta_s": 75.0, "message": "", "time": 1.0},
        {"stage": "train", "step": 30, "total": 40, "epoch": 3, "epochs": 4, "losses": {"seg": 0.25},
         "throughput": 3.0, "eta_s": 3725.0, "message": "", "time": 2.0},
    ]
    state = {"value": "running"}

    def event_route(request):
        since = int(request.query["since"][0])
        return 200, {"events": events[since:], "next": len(events)}

    server = fake({
        ("GET", "/api/v1/jobs/j1/events"): event_route,
        ("GET", "/api/v1/jobs/j1"): lambda r: (200, {"id": "j1", "state": state["value"], "progress": None,
                                                     "error": None, "result": {"version": 2} if state["value"] == "succeeded" else None}),
    })
    monitor = JobMonitor(BackendClient(server.url), "j1")

    first = monitor.poll()
    assert len(first.events) == 2 and not first.finished
    assert first.percent == 75
    assert first.status_text == "train · epoch 3/4 · step 30/40 · seg 0.250 · ETA 1:02:05"
    second = monitor.poll()
    assert second.events == [] and second.latest == events[-1]
    state["value"] = "succeeded"
    final = monitor.wait(timeout_s=5, interval_s=0.01)
    assert final.finished and final.percent == 100 and final.status_text == "Finished: version 2 is active."
    assert [r.query["since"] for r in server.requests if r.path.endswith("/events")] == [["0"], ["2"], ["2"]]


def test_a_version_left_inactive_is_not_called_active() -> None:
    from DAKRSegmentationLib.jobs import JobUpdate

    note = "version 3 was stored but NOT activated: the active version was changed to 1 meanwhile"
    update = JobUpdate("j", "succeeded", result={"version": 3, "active": False, "activation": note})
    assert update.status_text == f"Finished: {note}"


def test_interrupted_job_is_resumable_and_says_so() -> None:
    from DAKRSegmentationLib.jobs import JobUpdate

    update = JobUpdate("j", "interrupted")
    assert update.finished and update.resumable
    assert "Resume" in update.status_text
    assert not JobUpdate("j", "failed", error="out of memory").resumable
    assert JobUpdate("j", "failed", error="out of memory").status_text == "Failed: out of memory"


def test_scene_upload_rejection_names_the_nodes_behind_each_case(fake, scene, tmp_path: Path) -> None:
    detail = "case_b.nii.gz: label map has no foreground. Fix: segment the structures or remove the case"
    server = fake({("GET", "/api/v1/info"): (200, INFO), ("POST", "/api/v1/sites"): (422, {"detail": detail})})
    session = Session(BackendClient(server.url), scene, tmp_path / "work")
    pairs = []
    for index, name in enumerate(("case a", "case b")):
        volume, segmentation = testing.add_phantom_case(scene, name, seed=index)
        pairs.append(mrmlio.ScenePair(mrmlio.case_id_from_name(name), volume, segmentation))

    with pytest.raises(ValidationFailedError) as raised:
        session.register_site_from_scene("B", pairs)

    message = str(raised.value)
    assert "case_b.nii.gz: label map has no foreground. Fix: segment the structures" in message
    assert "case case_b = volume 'case b' + labels 'case b segmentation'" in message
    assert not any(session.work_dir.glob("upload-*")), "temporary upload files left behind"


def test_supported_api_major_matches_the_backend_package() -> None:
    import dakr

    assert int(dakr.API_VERSION.split(".")[0]) == client_module.SUPPORTED_API_MAJOR


def _nnunet_folder(root: Path, with_dataset_json: bool = True) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for case in ("c1", "c2"):
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"image " + case.encode())
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(b"label " + case.encode())
    if with_dataset_json:
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "CSF": 1}}))
    return root


def test_nnunet_folder_discovery(tmp_path: Path) -> None:
    from DAKRSegmentationLib.session import discover_nnunet_folder

    folder = _nnunet_folder(tmp_path / "site")
    cases, names = discover_nnunet_folder(folder)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("c1", "c1_0000.nii.gz", "c1.nii.gz"), ("c2", "c2_0000.nii.gz", "c2.nii.gz")]
    assert names == {"background": 0, "CSF": 1}
    (folder / "labelsTr" / "c2.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"c2_0000.nii.gz has no label map labelsTr/c2.<ext>. Fix"):
        discover_nnunet_folder(folder)
    with pytest.raises(ValueError, match="not in nnU-Net raw layout. Fix: choose a folder holding imagesTr/"):
        discover_nnunet_folder(tmp_path)


def test_folder_site_is_read_in_place_by_a_local_backend_and_uploaded_to_a_remote_one(fake, scene, tmp_path: Path, monkeypatch) -> None:
    from DAKRSegmentationLib import session as session_module

    folder = _nnunet_folder(tmp_path / "site")
    site = {"name": "B", "n_train": 1, "n_audit": 1}
    server = fake({("GET", "/api/v1/info"): (200, INFO), ("POST", "/api/v1/sites/from-path"): (201, site),
                   ("POST", "/api/v1/sites"): (201, site)})
    session = Session(BackendClient(server.url), scene, tmp_path / "work")

    assert session.register_site_from_folder("B", folder) == site
    assert json.loads(server.requests[-1].body) == {"name": "B", "path": str(folder.resolve())}

    monkeypatch.setattr(session_module, "is_loopback", lambda url: False)
    session.register_site_from_folder("B", folder)
    parts = _parse_multipart(server.requests[-1])
    assert server.requests[-1].path == "/api/v1/sites"
    assert json.loads(parts[1][2]) == {"background": 0, "CSF": 1}
    assert [(p[0], p[1], p[2]) for p in parts[2:4]] == [("images", "c1_0000.nii.gz", b"image c1"), ("labels", "c1.nii.gz", b"label c1")]


def test_loopback_addresses() -> None:
    from DAKRSegmentationLib.session import is_loopback

    assert is_loopback("http://127.0.0.1:8765") and is_loopback("http://localhost:1") and is_loopback("http://[::1]:80")
    assert not is_loopback("https://gpu-box.hospital.org:8765")


def test_site_check_is_parsed_and_no_model_keeps_its_status(fake) -> None:
    server = fake({("GET", "/api/v1/sites/B/check"): (200, SITE_CHECK),
                   ("GET", "/api/v1/sites/C/check"): (409, {"detail": "no model yet. Fix: adapt to a first site"})})
    api = BackendClient(server.url)
    assert api.site_check("B") == SITE_CHECK
    with pytest.raises(BackendError, match="no model yet") as raised:
        api.site_check("C")
    assert raised.value.status == 409


@pytest.mark.parametrize(("score", "flagged", "text"), [
    (2.5, True, "Out of distribution: shift 2.50 > threshold 1.20 — check this result (nearest known site: A)"),
    (0.7, False, "In distribution (shift 0.70 ≤ 1.20; nearest known site: A)"),
])
def test_a_stored_case_uncertainty_is_downloaded_with_its_shift_headers(fake, tmp_path: Path, score: float, flagged: bool,
                                                                       text: str) -> None:
    server = fake({("GET", "/api/v1/sites/A/cases/c1/uncertainty"): (200, b"entropy map", shift_headers(score, 1.2))})
    prediction = BackendClient(server.url).case_uncertainty("A", "c1", tmp_path / "out" / "u.nii.gz", version=2)
    assert prediction.path == tmp_path / "out" / "u.nii.gz" and prediction.path.read_bytes() == b"entropy map"
    assert prediction.shift.out_of_distribution is flagged and prediction.shift.text == text
    assert prediction.shift.color == (shift.OUT_OF_DISTRIBUTION_COLOR if flagged else shift.IN_DISTRIBUTION_COLOR)
    (request,) = server.requests
    assert (request.method, request.query, request.body) == ("GET", {"version": ["2"]}, b"")
    BackendClient(server.url).case_uncertainty("A", "c1", tmp_path / "active.nii.gz")
    assert server.requests[-1].query == {}, "no version: the backend's active one"


def test_an_uncertainty_map_without_shift_headers_is_an_error_that_says_so(fake, tmp_path: Path) -> None:
    server = fake({("GET", "/api/v1/sites/A/cases/c1/uncertainty"): (200, b"map"),
                   ("GET", "/api/v1/sites/A/cases/c2/uncertainty"): (409, {"detail": "there is no model yet"})})
    api = BackendClient(server.url)
    with pytest.raises(BackendError, match="GET /sites/A/cases/c1/uncertainty answered without a usable shift verdict.*"
                                           "X-DAKR-Shift-Score header. Fix: update the backend"):
        api.case_uncertainty("A", "c1", tmp_path / "u.nii.gz")
    with pytest.raises(BackendError, match="no model yet") as raised:
        api.case_uncertainty("A", "c2", tmp_path / "u.nii.gz")
    assert raised.value.status == 409
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_download_leaves_no_partial_file(fake, tmp_path: Path) -> None:
    server = fake({("GET", "/api/v1/sites/A/cases/c1/uncertainty"): (200, b"map", shift_headers(0.7, 1.2))})
    with pytest.raises(BackendError, match="cancelled"):
        BackendClient(server.url).case_uncertainty("A", "c1", tmp_path / "u.nii.gz", cancelled=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_ranking_uploads_every_image_with_progress(fake, tmp_path: Path) -> None:
    ranked = [{"rank": 1, "path": "b.nii.gz", "uncertainty": 0.4, "novelty": 0.9, "score": 0.65, "reason": "most novel"},
              {"rank": 2, "path": "a.nii.gz", "uncertainty": 0.2, "novelty": 0.1, "score": 0.15, "reason": "least novel"}]
    server = fake({("POST", "/api/v1/rank"): (200, ranked)})
    images = []
    for name in ("a", "b"):
        images.append(tmp_path / f"{name}.nii.gz")
        images[-1].write_bytes(name.encode() * 1000)
    progress = []
    assert BackendClient(server.url).rank_images(images, seed=3, on_progress=lambda sent, total: progress.append((sent, total))) == ranked
    (request,) = server.requests
    assert request.query == {"seed": ["3"]}
    assert _parse_multipart(request) == [("images", "a.nii.gz", b"a" * 1000), ("images", "b.nii.gz", b"b" * 1000)]
    assert progress and progress[-1][1] == len(request.body) and all(sent < total for sent, total in progress)
