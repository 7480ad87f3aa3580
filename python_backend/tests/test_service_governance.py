"""Change control over HTTP: approve, reject, the change record, the gate outcome and the policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dakr.data.site import discover_site
from dakr.governance.decisions import gate_new_version
from dakr.service import create_app
from dakr.store import EvaluationRecord, Store
from test_service_support import add_tiny_version, local_client, write_site

API = "/api/v1"
TOKEN = "a-test-token-of-sufficient-length"


def inject(store: Store, version: int, site: str, dice: list[float]) -> None:
    cases = store.cases(site, "audit")
    store.record_evaluations(
        [EvaluationRecord(version, site, c.case_id, {"A": d, "B": d}, {"A": 1.0, "B": 1.0}) for c, d in zip(cases, dice)]
    )


@pytest.fixture
def held_store(tmp_path: Path) -> Store:
    """Version 1 on A (accepted, active) and version 2 on B, held because it forgets A."""
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, n_cases=6, seed=seed)), audit_fraction=0.5)
    for site, parent, dice in (("A", None, {"A": [0.8, 0.8, 0.8], "B": [0.3] * 3}), ("B", 1, {"A": [0.5] * 3, "B": [0.8] * 3})):
        version = add_tiny_version(store, site, parent, activate=False)
        for evaluated, values in dice.items():
            inject(store, version.id, evaluated, values)
        if gate_new_version(store, version, ["A"] if parent else [], None, {}).activated:
            store.activate(version.id)
    return store


@pytest.fixture
def client(held_store: Store) -> Iterator[TestClient]:
    with local_client(create_app(held_store.path)) as test_client:
        yield test_client


def test_models_show_status_and_held_versions_cannot_be_activated(client: TestClient) -> None:
    models = client.get(f"{API}/models").json()
    assert [(m["id"], m["status"], m["active"]) for m in models] == [(1, "accepted", True), (2, "held", False)]
    refused = client.post(f"{API}/models/2/activate")
    assert refused.status_code == 409 and "approve" in refused.json()["detail"]
    gate = client.get(f"{API}/models/2/gate").json()
    assert gate["verdict"] == "held" and gate["failing_sites"] == ["A"] and gate["summary"].startswith("HELD")


def test_approve_activates_and_the_record_keeps_the_reason(client: TestClient, held_store: Store) -> None:
    assert client.post(f"{API}/models/2/approve", json={"reason": "  "}).status_code == 400
    assert client.post(f"{API}/models/2/approve", json={}).status_code == 422
    approved = client.post(f"{API}/models/2/approve", json={"reason": "A retired", "by": "Dr. Ode"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved" and approved.json()["active"]
    assert held_store.active_version().id == 2
    record = client.get(f"{API}/models/2/record").json()
    assert record["signoffs"][0] | {"created": None} == {
        "version": 2, "action": "approved", "reason": "A retired", "by": "Dr. Ode", "created": None,
    }
    assert record["gate"]["verdict"] == "held" and record["policy"]["id"] == 1
    assert client.get(f"{API}/models/9/record").status_code == 404


def test_reject_keeps_it_inactive(client: TestClient, held_store: Store) -> None:
    rejected = client.post(f"{API}/models/2/reject", json={"reason": "forgets A"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected" and not rejected.json()["active"]
    assert held_store.active_version().id == 1
    assert client.post(f"{API}/models/1/reject", json={"reason": "in use"}).status_code == 409
    assert client.post(f"{API}/models/9/reject", json={"reason": "x"}).status_code == 404
    assert client.get(f"{API}/policy").json()["values"]["margin"] == 2.0


def test_sign_off_needs_the_token(held_store: Store) -> None:
    with local_client(create_app(held_store.path, token=TOKEN)) as client:
        assert client.post(f"{API}/models/2/approve", json={"reason": "x"}).status_code == 401
        assert client.get(f"{API}/models/2/record").status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post(f"{API}/models/2/reject", json={"reason": "x"}, headers=headers).status_code == 200


def test_record_and_gate_are_strict_json_with_missed_structures(client: TestClient, held_store: Store) -> None:
    case = held_store.cases("A", "audit")[0]
    held_store.record_evaluations(
        [EvaluationRecord(2, "A", case.case_id, {"A": 0.0, "B": float("nan")}, {"A": float("inf"), "B": float("nan")})]
    )
    record = client.get(f"{API}/models/2/record")
    assert record.status_code == 200, record.text
    cases = next(site for site in record.json()["evaluation"] if site["site"] == "A")["cases"]
    assert {"case_id": case.case_id, "dice": {"A": 0.0, "B": None}, "hd95": {"A": "inf", "B": None}} in cases
    assert client.get(f"{API}/models/2/gate").status_code == 200
