"""Load on a real server (``dakr serve`` on a loopback port, token on): 20 concurrent clients poll a
training job's status and events and list the models for 30 s while the job trains.

No request may fail; the latency percentiles are printed to the test output.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from dakr.store import Store
from test_service_e2e import server
from test_service_support import TINY_CONFIG, wait_for, write_site

pytestmark = pytest.mark.slow
CLIENTS = 20
DURATION_S = 30.0


def poll(client: httpx.Client, job_id: str, until: float, latencies: list[float], errors: list[str]) -> None:
    """One client: job status, new events and the model list, in a loop until ``until``."""
    since = 0
    while time.monotonic() < until:
        for path, params in ((f"/jobs/{job_id}", None), (f"/jobs/{job_id}/events", {"since": since}), ("/models", None)):
            start = time.perf_counter()
            try:
                response = client.get(path, params=params)
            except httpx.HTTPError as exc:
                errors.append(f"{path}: {exc!r}")
                continue
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                errors.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")
            elif path.endswith("/events"):
                since = response.json()["next"]


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def test_twenty_clients_poll_while_a_job_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store.init(tmp_path / "store")
    with server(store.path, tmp_path / "server.log") as (client, _):
        site = write_site(tmp_path / "A")
        assert client.post("/sites/from-path", json={"name": "A", "path": str(site)}).status_code == 201
        config = {**TINY_CONFIG, "train.epochs": 100_000, "train.checkpoint_every": 50}
        job_id = client.post("/jobs", json={"kind": "adapt", "site": "A", "config": config}).json()["job_id"]
        wait_for(
            lambda: any(event["stage"] == "train" for event in client.get(f"/jobs/{job_id}/events").json()["events"]),
            120,
            "training to start",
        )
        latencies: list[float] = []
        errors: list[str] = []
        until = time.monotonic() + DURATION_S
        clients = [httpx.Client(base_url=client.base_url, headers=client.headers, timeout=30) for _ in range(CLIENTS)]
        threads = [threading.Thread(target=poll, args=(each, job_id, until, latencies, errors)) for each in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for each in clients:
            each.close()
        job = client.get(f"/jobs/{job_id}").json()
        train_steps = [event["step"] for event in client.get(f"/jobs/{job_id}/events").json()["events"] if event["stage"] == "train"]
        client.post(f"/jobs/{job_id}/cancel")
    assert errors == [], errors[:5]
    assert job["state"] == "running", job
    assert len(train_steps) > 1
    with capsys.disabled():
        print(
            f"\nload: {CLIENTS} clients, {DURATION_S:.0f} s, {len(latencies)} requests, {len(errors)} errors, "
            f"{len(train_steps)} training steps meanwhile; latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms "
            f"on {platform.machine()} with {os.cpu_count()} cores (shared with other work: {os.getloadavg()[0]:.1f} load)"
        )
