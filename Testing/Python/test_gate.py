"""The gate verdict in the module: sign-off requests, verdict rows, error-bar data, MRML table and plot."""

from __future__ import annotations

import json
import math

import pytest
import slicer

from DAKRSegmentationLib import gate
from DAKRSegmentationLib.client import BackendClient, BackendError
from fake_http import FakeBackend

OUTCOME = {
    "version": 5,
    "parent": 4,
    "verdict": "held",
    "summary": "HELD: version 5 failed on A (mean change -11.0, lower bound -14.0 <= -2 Dice points)",
    "failing_sites": ["A"],
    "sites": [
        {"site": "A", "role": "past", "parent_dice": 80.0, "new_dice": 69.0, "mean_change": -11.0, "lower": -14.0,
         "upper": -8.0, "margin": 2.0, "verdict": "fail", "reasons": ["mean change -11.0, lower bound -14.0 <= -2 Dice points"]},
        {"site": "B", "role": "new", "parent_dice": 30.0, "new_dice": 80.0, "mean_change": 50.0, "lower": 49.0,
         "upper": 51.0, "margin": None, "verdict": "pass", "reasons": []},
        {"site": "C", "role": "other", "parent_dice": 20.0, "new_dice": 21.0, "mean_change": 1.0, "lower": None,
         "upper": None, "margin": None, "verdict": "not gated", "reasons": []},
    ],
}


@pytest.fixture
def server():
    fake = FakeBackend({
        ("GET", "/api/v1/models/5/gate"): (200, OUTCOME),
        ("POST", "/api/v1/models/5/approve"): (200, {"id": 5, "status": "approved", "active": True}),
        ("POST", "/api/v1/models/5/reject"): (409, {"detail": "version 5 is the active version"}),
        ("GET", "/api/v1/models/5/record"): (200, {"version": 5, "signoffs": []}),
    })
    yield fake
    fake.close()


def test_sign_off_requests_carry_the_reason(server) -> None:
    client = BackendClient(server.url)
    assert gate.gate(client, 5)["verdict"] == "held"
    assert gate.approve(client, 5, "  A retired  ", by="Dr. Ode")["status"] == "approved"
    assert json.loads(server.requests[-1].body) == {"reason": "A retired", "by": "Dr. Ode"}
    with pytest.raises(BackendError, match="409"):
        gate.reject(client, 5, "forgets A")
    with pytest.raises(ValueError, match="reason is required"):
        gate.approve(client, 5, "   ")
    assert gate.change_record(client, 5)["version"] == 5


def test_verdict_rows_error_bars_and_labels() -> None:
    rows = gate.verdict_rows(OUTCOME)
    assert [(row.site, row.verdict) for row in rows] == [("A", "fail"), ("B", "pass"), ("C", "not gated")]
    assert rows[0].reasons.startswith("mean change -11.0")
    bars = gate.error_bars(OUTCOME)
    assert bars.sites == ["A", "B"] and bars.mean == [-11.0, 50.0] and bars.lower == [-14.0, 49.0] and bars.margin == 2.0
    assert gate.version_label({"id": 5, "status": "held", "active": False}) == "v5 (held)"
    assert gate.version_label({"id": 4, "status": "accepted", "active": True}) == "v4 (active)"
    assert gate.version_label({"id": 3, "status": "approved", "active": False}) == "v3"


def test_table_and_error_bar_plot_nodes() -> None:
    scene = slicer.vtkMRMLScene()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    gate.fill_verdict_table(table, OUTCOME)
    assert table.GetNumberOfRows() == 3
    assert table.GetTable().GetColumnByName(gate.MARGIN_COLUMN).GetValue(0) == -2.0
    assert math.isnan(table.GetTable().GetColumnByName(gate.MARGIN_COLUMN).GetValue(1))
    assert table.GetTable().GetColumnByName(gate.VERDICT_COLUMN).GetValue(0).startswith("fail: mean change")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    points, bars = scene.AddNewNodeByClass("vtkMRMLTableNode"), scene.AddNewNodeByClass("vtkMRMLTableNode")
    for _ in range(2):  # refilling replaces the series
        gate.fill_error_bar_plot(scene, chart, points, bars, OUTCOME)
    names = [chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert names == ["Mean change", "Interval A", "Interval B", "Margin"]
    assert [bars.GetTable().GetColumnByName("A").GetValue(i) for i in range(2)] == [-14.0, -8.0]
    assert "held" in chart.GetTitle()
