"""The module panel's change-control wiring: held marker, Approve with a reason, the gate verdict view."""

from __future__ import annotations

import json
import sys
import types

from test_gate import OUTCOME
from test_module_widget import MODELS_V2, Backend, backend, connect_remote, finish, gui  # noqa: F401  (fixtures)

HELD_V2 = [{**MODELS_V2[0], "active": True, "status": "accepted"}, {**MODELS_V2[1], "active": False, "status": "held"}]


def test_held_version_is_marked_and_approved_with_a_reason(gui, backend, monkeypatch) -> None:
    backend.models = list(HELD_V2)
    backend.server.routes[("POST", "/api/v1/models/2/approve")] = (200, {**HELD_V2[1], "status": "approved"})
    connect_remote(gui, backend)
    table = gui.ui.versionsTableWidget
    assert [table.item(row, 0).text() for row in range(2)] == ["v1 (active)", "v2 (held)"]
    answers = iter(["", "site A retired"])
    dialog = types.SimpleNamespace(getText=lambda *args, **kwargs: next(answers))
    monkeypatch.setattr(sys.modules["qt"], "QInputDialog", dialog, raising=False)
    table.selectRow(1)
    gui.widget.approveButton.click()
    finish(gui)
    assert backend.requests("POST", "/models/2/approve") == [], "no reason, nothing sent"
    gui.widget.approveButton.click()
    finish(gui)
    [request] = backend.requests("POST", "/models/2/approve")
    assert json.loads(request.body) == {"reason": "site A retired", "by": None}
    assert gui.env.dialogs.errors == []


def test_the_gate_verdict_is_shown_with_its_plot(gui, monkeypatch) -> None:
    shown = []
    plots = types.SimpleNamespace(logic=lambda: types.SimpleNamespace(ShowChartInLayout=shown.append))
    monkeypatch.setattr(gui.module.slicer.modules, "plots", plots, raising=False)
    gui.widget.showGate(OUTCOME)
    assert gui.widget.gateLabel.text.startswith("HELD: version 5 failed on A")
    assert gui.widget.gateTableView.visible and gui.widget.gateTableView.mrmlTableNode().GetNumberOfRows() == 3
    gui.widget.showGate(OUTCOME)
    first, again = shown
    assert first is again and again.GetNumberOfPlotSeriesNodes() == 4, "the gate's nodes are reused"
    gui.widget.showGate(None)
    assert not gui.widget.gateTableView.visible and gui.widget.gateLabel.text == ""
