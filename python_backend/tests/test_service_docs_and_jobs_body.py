"""Offline API docs from packaged assets; the job body accepts nested or dotted config keys and threads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import dakr.service.jobs as jobs_module
from dakr.service import create_app
from dakr.store import Store
from test_service_support import local_client, store_with_base

API = "/api/v1"
ASSET = re.compile(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_only_local_assets(tmp_path: Path, page: str) -> None:
    with local_client(create_app(Store.init(tmp_path / "store").path)) as client:
        html = client.get(page)
        assert html.status_code == 200
        urls = ASSET.findall(html.text)
        assert "/openapi.json" in urls
        assets = [url for url in urls if url != "/openapi.json"]
        assert assets and all(url.startswith("/docs-assets/") for url in assets), urls
        assert "://" not in html.text.replace("http://www.w3.org", ""), "the page names another host"
        for url in assets:
            response = client.get(url)
            assert response.status_code == 200 and len(response.content) > 1000, url


def test_docs_are_off_with_a_token(tmp_path: Path) -> None:
    token = "a-test-token-of-sufficient-length"
    app = create_app(Store.init(tmp_path / "store").path, token=token)
    with local_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, Store, list[int]]:
    """A store with a base version, whose job workers are stand-ins that record their thread count."""
    store = store_with_base(tmp_path)
    threads: list[int] = []

    def stand_in(store_path: Path, job_id: str, count: int) -> list[str]:
        threads.append(count)
        return [sys.executable, "-c", "pass", job_id]

    monkeypatch.setattr(jobs_module, "worker_command", stand_in)
    with local_client(create_app(store.path)) as client:
        yield client, store, threads


def test_nested_and_dotted_config_keys_are_the_same_request(started) -> None:
    client, store, threads = started
    nested = {"train": {"epochs": 1, "steps_per_epoch": 2}, "continual": {"lambda_cna": 0.5}}
    response = client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A", "config": nested, "threads": 1})
    assert response.status_code == 202, response.text
    job = store.job(response.json()["job_id"])
    assert job.params["config"] == {"train.epochs": 1, "train.steps_per_epoch": 2, "continual.lambda_cna": 0.5}
    assert job.params["threads"] == 1 and threads == [1]


def test_nested_keys_are_checked_like_dotted_ones(started) -> None:
    client, store, _ = started
    for config, message in (({"train": {"epochz": 1}}, "unknown config key 'train.epochz'"), ({"net": {"filters": [8, 16]}}, "cannot change")):
        response = client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A", "config": config})
        assert response.status_code == 400 and message in response.json()["detail"], response.text
    assert client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A", "threads": 0}).status_code == 422
    for literal in ("Infinity", "NaN"):  # Python's JSON reader accepts these literals; the config must not
        body = '{"kind": "adapt", "site": "A", "config": {"train": {"epochs": %s}}}' % literal
        response = client.post(f"{API}/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "must be a finite number" in response.json()["detail"], response.text
    assert store.jobs() == []


def test_dice_fields_document_their_unit(started) -> None:
    client, _, _ = started
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model, field in (("ModelOut", "dice"), ("MatrixOut", "dice"), ("CaseDiceOut", "before"), ("JobOut", "result")):
        assert "fraction from 0 to 1" in schemas[model]["properties"][field]["description"], (model, field)
