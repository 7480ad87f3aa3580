"""The job runner and the worker process: real workers running pipeline.adapt/evaluate, cancel,
SIGKILL mid-training and resume from the checkpoint, plus the monitor's handling of dead workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import dakr.service.jobs as jobs_module
from dakr.data.site import discover_site
from dakr.service import create_app
from dakr.service.job_files import WORK_DIR, tail_lines
from dakr.service.processes import SPAWN_OPTIONS
from dakr.store import Store
from test_service_support import TINY_CONFIG, add_tiny_version, local_client, wait_for, write_site

API = "/api/v1"
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Sites A and B (4 cases each, 1 audit case each), no model yet."""
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, seed=seed)), audit_fraction=0.25)
    return store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with local_client(create_app(store.path, cancel_grace_s=30.0)) as test_client:
        yield test_client


def job_state(client: TestClient, job_id: str) -> dict:
    return client.get(f"{API}/jobs/{job_id}").json()


def wait_until_final(client: TestClient, job_id: str, timeout_s: float = 90.0) -> dict:
    return wait_for(
        lambda: (job := job_state(client, job_id))["state"] in FINAL_STATES and job, timeout_s, f"job {job_id} to end", 0.2
    )


def wait_for_train_step(client: TestClient, job_id: str, step: int, timeout_s: float = 60.0) -> None:
    def reached() -> bool:
        job = job_state(client, job_id)
        assert job["state"] not in FINAL_STATES, job
        return bool(job["progress"] and job["progress"]["stage"] == "train" and job["progress"]["step"] >= step)

    wait_for(reached, timeout_s, f"training step {step} of job {job_id}", 0.05)


def train_steps(client: TestClient, job_id: str, since: int = 0) -> list[int]:
    events = client.get(f"{API}/jobs/{job_id}/events", params={"since": since}).json()["events"]
    return [event["step"] for event in events if event["stage"] == "train"]


def start_adapt(client: TestClient, site: str, config: dict, activate: str | None = None) -> str:
    """Start an adapt job; ``activate="always"`` where a test is about the job, not the gate's verdict."""
    job = {"kind": "adapt", "site": site, "strategy": "dakr", "config": config, "activate": activate}
    response = client.post(f"{API}/jobs", json=job)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


# -- real workers --------------------------------------------------------------------------------
@pytest.mark.slow
def test_adapt_job_runs_in_a_worker_and_registers_a_version(client: TestClient, store: Store) -> None:
    job_id = start_adapt(client, "A", TINY_CONFIG)
    second = client.post(f"{API}/jobs", json={"kind": "adapt", "site": "B"})
    assert second.status_code == 409 and second.json()["job_id"] == job_id
    job = wait_until_final(client, job_id)
    assert job["state"] == "succeeded", (job, client.get(f"{API}/jobs/{job_id}/log").json())
    assert job["result"]["version"] == 1 and job["result"]["active"] and "is now active" in job["result"]["activation"]
    assert job["result"]["gate"]["verdict"] == "accepted"
    assert train_steps(client, job_id) == [1, 2, 3]
    stages = {event["stage"] for event in client.get(f"{API}/jobs/{job_id}/events").json()["events"]}
    assert {"train", "buffer", "evaluate"} <= stages
    assert any("succeeded" in line for line in client.get(f"{API}/jobs/{job_id}/log").json()["lines"])
    models = client.get(f"{API}/models").json()
    assert [(m["id"], m["active"]) for m in models] == [(1, True)]
    assert set(models[0]["dice"]) == {"A", "B"}
    info = client.get(f"{API}/info").json()
    assert (info["active_version"], info["running_job"]) == (1, None)


@pytest.mark.slow
def test_evaluate_job_records_dice_on_every_site(client: TestClient, store: Store) -> None:
    add_tiny_version(store, "A", None)
    response = client.post(f"{API}/models/1/evaluate")
    assert response.status_code == 202
    job = wait_until_final(client, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "evaluate" and job["result"]["version"] == 1
    assert set(job["result"]["dice"]) == {"A", "B"}
    assert {(record.site, record.case_id) for record in store.evaluations(1)} == {
        (site, case.case_id) for site in ("A", "B") for case in store.cases(site, "audit")
    }
    matrix = client.get(f"{API}/evaluation/matrix").json()
    assert matrix["dice"][0] == [pytest.approx(job["result"]["dice"]["A"]), pytest.approx(job["result"]["dice"]["B"])]


@pytest.mark.slow
def test_sigkill_mid_training_keeps_the_store_consistent_and_resume_completes(client: TestClient, store: Store) -> None:
    add_tiny_version(store, "A", None)
    job_id = start_adapt(client, "B", {**TINY_CONFIG, "train.steps_per_epoch": 12, "train.checkpoint_every": 1}, activate="always")
    wait_for_train_step(client, job_id, 3)
    os.killpg(store.job(job_id).pid, signal.SIGKILL)
    job = wait_for(lambda: (j := job_state(client, job_id))["state"] == "interrupted" and j, 15, "interrupted")
    assert "SIGKILL" in job["error"] and "resume" in job["error"]

    reopened = Store.open(store.path)
    assert [version.id for version in reopened.versions()] == [1]
    assert reopened.active_version().id == 1
    assert sorted(path.name for path in (store.path / "models").iterdir()) == ["1"]
    assert any((store.job_dir(job_id) / WORK_DIR).iterdir())
    killed_at = max(train_steps(client, job_id))
    events_before = client.get(f"{API}/jobs/{job_id}/events").json()["next"]

    resumed = client.post(f"{API}/jobs/{job_id}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] in ("queued", "running")
    job = wait_until_final(client, job_id)
    assert job["state"] == "succeeded", (job, client.get(f"{API}/jobs/{job_id}/log").json())
    assert job["result"]["version"] == 2 and job["result"]["active"] and job["result"]["gate"]["activated"]
    assert job["error"] is None
    after = train_steps(client, job_id, since=events_before)
    assert after[0] >= killed_at and after[-1] == 12, after
    assert store.version(2).parent == 1
    assert store.active_version().id == 2


@pytest.mark.slow
def test_cancel_checkpoints_and_resume_finishes(client: TestClient, store: Store) -> None:
    add_tiny_version(store, "A", None)
    job_id = start_adapt(client, "B", {**TINY_CONFIG, "train.steps_per_epoch": 12, "train.checkpoint_every": 0}, activate="always")
    wait_for_train_step(client, job_id, 2)
    assert client.post(f"{API}/jobs/{job_id}/cancel").status_code == 200
    job = wait_until_final(client, job_id, timeout_s=30)
    assert job["state"] == "cancelled", job
    assert "stopped at step" in job["error"] and "resume" in job["error"]
    stopped_at = max(train_steps(client, job_id))
    assert stopped_at < 12
    assert [version.id for version in store.versions()] == [1]
    assert store.active_version().id == 1

    events_before = client.get(f"{API}/jobs/{job_id}/events").json()["next"]
    assert client.post(f"{API}/jobs/{job_id}/resume").status_code == 202
    job = wait_until_final(client, job_id)
    assert job["state"] == "succeeded", job
    after = train_steps(client, job_id, since=events_before)
    assert after[0] == stopped_at + 1 and after[-1] == 12, after
    assert store.active_version().id == 2


@pytest.mark.slow
def test_worker_reports_failures_and_unknown_jobs(store: Store) -> None:
    job = store.create_job("adapt", {"site": "B", "strategy": "dakr", "config": {"train.epochz": 1}})
    worker = [sys.executable, "-m", "dakr", "worker", str(store.path)]
    failed = subprocess.run([*worker, job.id], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    record = store.job(job.id)
    assert record.state == "failed"
    assert "unknown config key 'train.epochz'" in record.error
    missing = subprocess.run([*worker, "nope"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "unknown job 'nope'" in missing.stderr


# -- the monitor, with stand-in workers ----------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "state", "message"),
    [
        ("import sys; sys.exit(3)", "failed", "exited with code 3"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "interrupted", "killed by SIGKILL"),
        ("pass", "failed", "without reporting a result"),
    ],
)
def test_monitor_records_workers_that_die_without_reporting(
    store: Store, monkeypatch: pytest.MonkeyPatch, script: str, state: str, message: str
) -> None:
    monkeypatch.setattr(jobs_module, "worker_command", lambda store_path, job_id, threads: [sys.executable, "-c", script, job_id])
    with local_client(create_app(store.path)) as client:
        add_tiny_version(store, "A", None)
        job_id = client.post(f"{API}/models/1/evaluate").json()["job_id"]
        job = wait_until_final(client, job_id, timeout_s=20)
    assert job["state"] == state
    assert message in job["error"]


def test_cancel_kills_a_worker_that_ignores_sigterm_after_the_grace_period(store: Store) -> None:
    job = store.create_job("adapt", {"site": "A", "strategy": "dakr", "config": {}})
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    process = subprocess.Popen([sys.executable, "-c", stubborn, job.id], stdout=subprocess.PIPE, **SPAWN_OPTIONS)
    try:
        assert process.stdout.readline().strip() == b"ready"
        store.update_job(job.id, state="running", pid=process.pid)
        with local_client(create_app(store.path, cancel_grace_s=0.5)) as client:
            assert client.post(f"{API}/jobs/{job.id}/cancel").status_code == 200
            assert process.wait(timeout=15) == -signal.SIGKILL
            final = wait_until_final(client, job.id, timeout_s=10)
    finally:
        process.kill()
        process.wait()
    assert final["state"] == "cancelled"


@pytest.mark.parametrize("count", [1, 5, 300])
def test_tail_lines_reads_the_end_of_a_large_log(tmp_path: Path, count: int) -> None:
    log = tmp_path / "worker.log"
    lines = [f"{index:05d} " + "x" * (index % 2000) for index in range(400)]
    log.write_text("\n".join(lines) + "\n")
    assert tail_lines(log, count) == lines[-count:]
    assert tail_lines(tmp_path / "missing.log", count) == []
