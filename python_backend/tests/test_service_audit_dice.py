"""``GET /sites/{site}/audit-dice``: per-case, per-structure Dice of a site's audit cases under two
versions (the Slicer module's regression table)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dakr.data.site import discover_site
from dakr.service import create_app
from dakr.store import EvaluationRecord, Store
from test_service_support import add_tiny_version, local_client, record_dice, write_site

API = "/api/v1"


def test_per_case_structure_dice_of_two_versions(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    store.add_site("A", discover_site(write_site(tmp_path / "A", seed=0)), audit_fraction=0.5)
    add_tiny_version(store, "A", None)
    add_tiny_version(store, "A", 1)
    record_dice(store, 1, "A", 0.8, 0.6)
    audit_ids = sorted(case.case_id for case in store.cases("A") if case.split == "audit")
    assert len(audit_ids) == 2
    store.record_evaluations([EvaluationRecord(2, "A", audit_ids[0], {"A": 0.9, "B": math.nan}, {"A": 1.0, "B": 1.0})])
    with local_client(create_app(store.path)) as client:
        rows = client.get(f"{API}/sites/A/audit-dice", params={"before": 1, "after": 2}).json()
        assert [row["case_id"] for row in rows] == audit_ids
        assert rows[0]["before"] == {"A": pytest.approx(0.8), "B": pytest.approx(0.6)}
        assert rows[0]["after"] == {"A": pytest.approx(0.9), "B": None}
        assert rows[1]["after"] is None
        assert client.get(f"{API}/sites/A/audit-dice", params={"before": 1, "after": 9}).status_code == 404
        assert client.get(f"{API}/sites/Z/audit-dice", params={"before": 1, "after": 2}).status_code == 404
        assert client.get(f"{API}/sites/A/audit-dice", params={"before": 2**63, "after": 2}).status_code == 422
