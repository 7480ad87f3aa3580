"""One writer per store across processes, and purges that no later write can undo."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import SimpleITK as sitk

import dakr.pipeline as pipeline
from dakr.data.site import discover_site
from dakr.service import create_app
from dakr.store import SitePurgedError, Store
from dakr.store.lock import StoreBusy
from test_service_support import add_tiny_version, fake_worker, local_client, wait_for, write_site

API = "/api/v1"
HOLDER_COMMAND = "dakr adapt STORE --site B"
_HOLD = """
import sys, time
from dakr.store import Store
with Store.open(sys.argv[1]).writer_lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Sites A and B (4 cases, 1 audit case each) and one untrained tiny version."""
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, seed=seed)), audit_fraction=0.25)
    add_tiny_version(store, "A", None)
    return store


@contextmanager
def lock_held_elsewhere(store: Store) -> Iterator[subprocess.Popen]:
    """Another process holding the store's writer lock, as a running `dakr adapt` would."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(store.path), HOLDER_COMMAND], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait()


def site_predictions(store: Store, site: str) -> list[Path]:
    return [path for path in (store.path / "predictions").glob(f"*/{site}/**/*") if path.is_file()]


# -- one writer per store ------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [["adapt", "--site", "A"], ["evaluate"]])
def test_second_process_on_a_store_gets_an_error_naming_the_holder(store: Store, verb: list[str]) -> None:
    with lock_held_elsewhere(store) as holder:
        result = subprocess.run(
            [sys.executable, "-m", "dakr", verb[0], str(store.path), *verb[1:]], capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 1
    error = result.stderr
    assert f"store {store.name!r} is busy" in error
    assert f"pid {holder.pid} on host {socket.gethostname()} ({HOLDER_COMMAND}) since " in error
    assert "wait for it to finish or stop it" in error
    assert [version.id for version in store.versions()] == [1]


def test_the_lock_is_free_again_when_its_holder_dies(store: Store) -> None:
    with lock_held_elsewhere(store) as holder:
        with pytest.raises(StoreBusy) as busy:
            with store.writer_lock("second"):
                pass
        assert busy.value.holder.pid == holder.pid
        holder.kill()
        holder.wait()
        with store.writer_lock("second", wait_s=10):
            pass


def test_a_waiting_process_gives_up_when_asked(store: Store) -> None:
    waits: list[StoreBusy] = []
    with lock_held_elsewhere(store):
        with pytest.raises(StoreBusy):
            with store.writer_lock("waiting", wait_s=float("inf"), on_wait=waits.append, should_stop=lambda: bool(waits)):
                pass
    assert len(waits) == 1


# -- purge ---------------------------------------------------------------------------------------
def test_purge_is_refused_while_another_process_writes(store: Store) -> None:
    with lock_held_elsewhere(store) as holder:
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"):
            store.purge_site("A")
    assert not store.site("A").purged


def test_purge_racing_an_evaluation_leaves_no_prediction_behind(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation holds the writer lock; the purge waits for it, then deletes what it wrote."""
    first_case_done, go_on = threading.Event(), threading.Event()
    predict_volume = pipeline.predict_volume

    def slow_predict(*args, **kwargs) -> sitk.Image:
        if first_case_done.is_set():
            go_on.wait(30)
        first_case_done.set()
        return predict_volume(*args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_volume", slow_predict)

    def evaluate() -> None:
        with store.writer_lock("evaluation"):
            pipeline.evaluate_version(store, 1)

    evaluation = threading.Thread(target=evaluate)
    evaluation.start()
    first_case_done.wait(30)
    purge = threading.Thread(target=store.purge_site, args=("A",), kwargs={"wait_s": 60})
    purge.start()
    purge.join(1.0)
    assert purge.is_alive() and not store.site("A").purged
    go_on.set()
    evaluation.join(60)
    purge.join(60)
    assert store.site("A").purged
    assert site_predictions(store, "A") == []
    assert site_predictions(store, "B") != []
    assert not (store.path / "sites" / "A").exists()


def test_a_prediction_finished_after_the_purge_is_not_written(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit view predicts without the writer lock; the write itself checks the site."""
    case = store.cases("A", "audit")[0].case_id
    predict_image = pipeline.predict_image

    def purge_meanwhile(*args, **kwargs) -> sitk.Image:
        prediction = predict_image(*args, **kwargs)
        store.purge_site("A")
        return prediction

    monkeypatch.setattr(pipeline, "predict_image", purge_meanwhile)
    with local_client(create_app(store.path)) as client:
        response = client.get(f"{API}/sites/A/cases/{case}/prediction")
    assert response.status_code == 410
    assert "purged" in response.json()["detail"]
    assert site_predictions(store, "A") == []
    with pytest.raises(SitePurgedError):
        store.write_prediction(1, "A", case, sitk.Image(4, 4, 4, sitk.sitkUInt8))
    assert site_predictions(store, "A") == [] and list(store.temp_path.iterdir()) == []


def test_purge_cancels_running_evaluations_and_refuses_during_training(store: Store) -> None:
    with local_client(create_app(store.path, cancel_grace_s=5.0)) as client:
        with fake_worker(store, {"version": 1}, kind="evaluate") as (evaluation, process):
            response = client.post(f"{API}/sites/A/purge")
            assert response.status_code == 200, response.text
            assert response.json()["purged"] is True
            process.wait(timeout=10)
            wait_for(lambda: store.job(evaluation.id).state == "cancelled", 10, "the evaluation to be cancelled")
        with fake_worker(store, {"site": "A", "strategy": "dakr", "config": {}}) as (training, _):
            refused = client.post(f"{API}/sites/B/purge")
            assert refused.status_code == 409
            assert refused.json()["job_id"] == training.id
    assert not store.site("B").purged


@pytest.mark.slow
def test_jobs_wait_for_the_store_and_evaluations_run_one_at_a_time(store: Store) -> None:
    with local_client(create_app(store.path)) as client:
        with lock_held_elsewhere(store) as holder:
            first, second = (client.post(f"{API}/models/1/evaluate").json()["job_id"] for _ in range(2))
            waiting = wait_for(
                lambda: [e for e in client.get(f"{API}/jobs/{first}/events").json()["events"] if e["stage"] == "queued"],
                120,
                "the first evaluation to wait for the store",
            )
            assert f"pid {holder.pid}" in waiting[0]["message"]
            assert client.get(f"{API}/jobs/{first}").json()["state"] == "queued"
            assert store.job(second).state == "queued" and store.job(second).pid is None
        for job_id in (first, second):
            wait_for(lambda: client.get(f"{API}/jobs/{job_id}").json()["state"] == "succeeded", 180, f"job {job_id} to succeed")
    assert site_predictions(store, "A") != []
