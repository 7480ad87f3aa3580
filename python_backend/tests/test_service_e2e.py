"""End to end against a real server process (``python -m dakr serve``) on a free loopback port:
register sites, adapt, follow progress, read the Dice matrix, roll back, predict; and a server
killed with SIGKILL mid-training, restarted, and the interrupted job resumed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from dakr.store import Store
from test_service_support import TINY_CONFIG, case_volumes, decoded, encoded, upload_files, wait_for, write_site

pytestmark = pytest.mark.slow
TOKEN = "end-to-end-token-0123456789"
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server(store_path: Path, log_path: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen]]:
    """A ``dakr serve`` process with a token; yields an authenticated client and the process."""
    port = free_port()
    token_file = log_path.with_name("token")
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dakr", "serve", str(store_path), "--port", str(port), "--token-file", str(token_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    try:
        wait_for(lambda: _ready(client, process, log_path), 60, "the server to answer")
        yield client, process
    finally:
        client.close()
        process.kill()
        process.wait()


def _ready(client: httpx.Client, process: subprocess.Popen, log_path: Path) -> bool:
    assert process.poll() is None, log_path.read_text()
    try:
        return client.get("/info").status_code == 200
    except httpx.TransportError:
        return False


def wait_until_final(client: httpx.Client, job_id: str, timeout_s: float = 90.0) -> dict:
    return wait_for(
        lambda: (job := client.get(f"/jobs/{job_id}").json())["state"] in FINAL_STATES and job, timeout_s, f"job {job_id}", 0.2
    )


def follow_events(client: httpx.Client, job_id: str, timeout_s: float = 90.0) -> list[dict]:
    """All progress events of a job, read incrementally with ``since`` until the job ends."""
    events: list[dict] = []

    def step() -> bool:
        state = client.get(f"/jobs/{job_id}").json()["state"]
        page = client.get(f"/jobs/{job_id}/events", params={"since": len(events)}).json()
        assert page["next"] == len(events) + len(page["events"])
        events.extend(page["events"])
        return state in FINAL_STATES and not page["events"]

    wait_for(step, timeout_s, f"job {job_id} to end", 0.2)
    return events


def test_register_adapt_follow_matrix_rollback_predict(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    with server(store.path, tmp_path / "server.log") as (client, _):
        assert client.get("/info", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        for name, seed in (("A", 0), ("B", 1)):
            files = upload_files(write_site(tmp_path / name, seed=seed))
            response = client.post("/sites", data={"name": name, "audit_fraction": "0.25"}, files=files)
            assert response.status_code == 201, response.text

        first = client.post("/jobs", json={"kind": "adapt", "site": "A", "strategy": "dakr", "config": TINY_CONFIG})
        assert first.status_code == 202
        events = follow_events(client, first.json()["job_id"])
        steps = [event["step"] for event in events if event["stage"] == "train"]
        assert steps == [1, 2, 3] and "evaluate" in {event["stage"] for event in events}
        result = client.get(f"/jobs/{first.json()['job_id']}").json()["result"]
        assert result["version"] == 1 and result["gate"]["verdict"] == "accepted" and result["gate"]["activated"]

        # One audit case per site cannot show non-inferiority: "always" activates it as a recorded override.
        config = {**TINY_CONFIG, "train.steps_per_epoch": 2}
        second = client.post("/jobs", json={"kind": "adapt", "site": "B", "config": config, "activate": "always"})
        job = wait_until_final(client, second.json()["job_id"])
        assert job["state"] == "succeeded" and job["result"]["version"] == 2 and job["result"]["active"], job
        assert job["result"]["gate"]["verdict"] == "held" and job["result"]["gate"]["override"], job

        matrix = client.get("/evaluation/matrix").json()
        assert (matrix["versions"], matrix["sites"]) == ([1, 2], ["A", "B"])
        assert all(value is not None and 0.0 <= value <= 1.0 for row in matrix["dice"] for value in row)
        assert set(matrix["per_class"]) == {"label_1", "label_2"}

        audit = client.get("/sites/A/cases").json()
        case = next(item["case_id"] for item in audit if item["split"] == "audit")
        dice = client.get(f"/sites/A/cases/{case}/dice", params={"before": 1, "after": 2}).json()
        assert dice["before"] == pytest.approx(matrix["dice"][0][0]) and dice["after"] == pytest.approx(matrix["dice"][1][0])

        assert client.post("/models/1/activate").json()["active"] is True
        assert client.get("/info").json()["active_version"] == 1
        assert [model["active"] for model in client.get("/models").json()] == [True, False]

        image = case_volumes(1, seed=7)[0]
        response = client.post("/predict", files={"file": ("new_0000.nrrd", encoded(image, ".nrrd"))})
        assert response.status_code == 200, response.text
        label = decoded(response.content, ".nrrd")
        assert label.GetSize() == image.GetSize()
        assert np.allclose(label.GetSpacing(), image.GetSpacing()) and np.allclose(label.GetOrigin(), image.GetOrigin())
        assert np.allclose(label.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2}
        audit_prediction = decoded(client.get(f"/sites/A/cases/{case}/prediction").content)
        assert audit_prediction.GetSize() == image.GetSize()


def test_server_killed_mid_training_restarts_with_the_job_interrupted_and_resumes(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    site = write_site(tmp_path / "A")
    with server(store.path, tmp_path / "server.log") as (client, process):
        assert client.post("/sites/from-path", json={"name": "A", "path": str(site)}).status_code == 201
        config = {**TINY_CONFIG, "train.steps_per_epoch": 80}
        job_id = client.post("/jobs", json={"kind": "adapt", "site": "A", "config": config}).json()["job_id"]
        wait_for(
            lambda: (progress := client.get(f"/jobs/{job_id}").json()["progress"]) and progress["step"] >= 2, 60, "training", 0.05
        )
        worker_pid = store.job(job_id).pid
        process.send_signal(signal.SIGKILL)
        process.wait()

    wait_for(lambda: not _alive(worker_pid), 30, "the orphaned worker to checkpoint and stop")
    assert store.job(job_id).state == "interrupted"
    assert store.versions() == []

    with server(store.path, tmp_path / "server.log") as (client, _):
        job = client.get(f"/jobs/{job_id}").json()
        assert job["state"] == "interrupted", job
        assert "resume" in job["error"]
        resumed = client.post(f"/jobs/{job_id}/resume")
        assert resumed.status_code == 202, resumed.text
        job = wait_until_final(client, job_id)
        assert job["state"] == "succeeded", (job, client.get(f"/jobs/{job_id}/log").json())
        assert job["result"]["version"] == 1 and job["result"]["active"]
        assert job["result"]["gate"]["verdict"] == "accepted"
        assert client.get("/info").json()["active_version"] == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))
