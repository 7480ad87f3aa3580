"""Change control in the module: the backend's gate verdict per site, its plot, and sign-off calls.

After an adapt job the backend has gated the new version (``GET /models/{id}/gate``): per site the
mean paired Dice change (new - parent, Dice points) with its bootstrap interval and the margin.
This module turns that answer into table rows and error-bar plot data (plain Python), fills the
MRML table and plot, and sends approvals and rejections with their reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import slicer
import vtk

from .client import BackendClient
from .results import _column, remove_plot_series

SITE_COLUMN = "Site"
ROLE_COLUMN = "Role"
PARENT_COLUMN = "Parent Dice"
NEW_COLUMN = "New Dice"
CHANGE_COLUMN = "Mean change"
LOWER_COLUMN = "Lower"
UPPER_COLUMN = "Upper"
MARGIN_COLUMN = "Margin"
VERDICT_COLUMN = "Verdict"
INDEX_COLUMN = "Site index"
#: Statuses that the backend will not activate without an approval.
NEEDS_APPROVAL = ("held", "rejected")


@dataclass(frozen=True)
class VerdictRow:
    """One site of the gate's table (Dice in points; ``None`` where not available)."""

    site: str
    role: str
    parent: float | None
    new: float | None
    change: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    verdict: str
    reasons: str


@dataclass(frozen=True)
class ErrorBars:
    """Gated sites with a change: x positions 1..n, mean change and interval ends; the margin line at ``-margin``."""

    sites: list[str]
    mean: list[float]
    lower: list[float | None]
    upper: list[float | None]
    margin: float | None


def gate(client: BackendClient, version: int) -> dict[str, Any] | None:
    """``GET /models/{version}/gate``: the gate outcome (``None`` for versions made before change control)."""
    return client._json("GET", f"/models/{int(version)}/gate")


def approve(client: BackendClient, version: int, reason: str, by: str | None = None) -> dict[str, Any]:
    """``POST /models/{version}/approve``: record the approval with its reason and activate the version."""
    return client._json("POST", f"/models/{int(version)}/approve", payload=_signoff(reason, by))


def reject(client: BackendClient, version: int, reason: str, by: str | None = None) -> dict[str, Any]:
    """``POST /models/{version}/reject``: record the rejection with its reason; the version stays inactive."""
    return client._json("POST", f"/models/{int(version)}/reject", payload=_signoff(reason, by))


def change_record(client: BackendClient, version: int) -> dict[str, Any]:
    """``GET /models/{version}/record``: the version's full change record."""
    return client._json("GET", f"/models/{int(version)}/record")


def _signoff(reason: str, by: str | None) -> dict[str, Any]:
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a reason is required to approve or reject a version. Fix: type why in the dialog")
    return {"reason": reason, "by": (by or "").strip() or None}


def verdict_rows(outcome: dict[str, Any]) -> list[VerdictRow]:
    """One row per site of a gate outcome, in the backend's order."""
    return [
        VerdictRow(
            site=check["site"],
            role=check["role"],
            parent=check.get("parent_dice"),
            new=check.get("new_dice"),
            change=check.get("mean_change"),
            lower=check.get("lower"),
            upper=check.get("upper"),
            margin=check.get("margin"),
            verdict=check["verdict"],
            reasons="; ".join(check.get("reasons", [])),
        )
        for check in outcome["sites"]
    ]


def error_bars(outcome: dict[str, Any]) -> ErrorBars:
    """Error-bar data of the gated (past and new) sites that have a paired change."""
    rows = [row for row in verdict_rows(outcome) if row.role != "other" and row.change is not None]
    margins = [row.margin for row in rows if row.margin is not None]
    return ErrorBars(
        sites=[row.site for row in rows],
        mean=[row.change for row in rows],
        lower=[row.lower for row in rows],
        upper=[row.upper for row in rows],
        margin=margins[0] if margins else None,
    )


def version_label(model: dict[str, Any]) -> str:
    """``v3``, marked ``(active)`` and with its status when it needs attention, e.g. ``v4 (held)``."""
    marks = [status for status in (model.get("status"),) if status in (*NEEDS_APPROVAL, "overridden")]
    if model.get("active"):
        marks.insert(0, "active")
    return f"v{model['id']}" + (f" ({', '.join(marks)})" if marks else "")


def fill_verdict_table(table_node: Any, outcome: dict[str, Any]) -> None:
    """The gate's table (one row per site) into an MRML table node."""
    rows = verdict_rows(outcome)
    table = vtk.vtkTable()
    for name, values, numeric in (
        (SITE_COLUMN, [row.site for row in rows], False),
        (ROLE_COLUMN, [row.role for row in rows], False),
        (PARENT_COLUMN, [row.parent for row in rows], True),
        (NEW_COLUMN, [row.new for row in rows], True),
        (CHANGE_COLUMN, [row.change for row in rows], True),
        (LOWER_COLUMN, [row.lower for row in rows], True),
        (UPPER_COLUMN, [row.upper for row in rows], True),
        (MARGIN_COLUMN, [None if row.margin is None else -row.margin for row in rows], True),
        (VERDICT_COLUMN, [row.verdict + (f": {row.reasons}" if row.reasons else "") for row in rows], False),
    ):
        _column(table, name, values, numeric)
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)


def fill_error_bar_plot(scene: Any, chart: Any, table_node: Any, bars_node: Any, outcome: dict[str, Any]) -> None:
    """Mean change per site (markers), its interval (one vertical bar per site) and the margin line."""
    data = error_bars(outcome)
    positions = list(range(1, len(data.sites) + 1))
    table = vtk.vtkTable()
    _column(table, INDEX_COLUMN, positions, numeric=True)
    _column(table, CHANGE_COLUMN, data.mean, numeric=True)
    _column(table, MARGIN_COLUMN, [None if data.margin is None else -data.margin] * len(positions), numeric=True)
    table_node.SetAndObserveTable(table)
    bars = vtk.vtkTable()
    for position, site, lower, upper in zip(positions, data.sites, data.lower, data.upper):
        _column(bars, f"x {site}", [position, position], numeric=True)
        _column(bars, site, [lower, upper], numeric=True)
    bars_node.SetAndObserveTable(bars)
    remove_plot_series(scene, chart)

    def series(name: str, node: Any, x: str, y: str, line: bool, color: tuple[float, float, float]) -> None:
        plot = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        plot.SetAndObserveTableNodeID(node.GetID())
        plot.SetXColumnName(x)
        plot.SetYColumnName(y)
        plot.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        plot.SetMarkerStyle(
            slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone if line else slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle
        )
        plot.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if line else slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        plot.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(plot.GetID())

    series("Mean change", table_node, INDEX_COLUMN, CHANGE_COLUMN, False, (0.1, 0.3, 0.8))
    for site in data.sites:
        series(f"Interval {site}", bars_node, f"x {site}", site, True, (0.1, 0.3, 0.8))
    if data.margin is not None:
        series("Margin", table_node, INDEX_COLUMN, MARGIN_COLUMN, True, (0.85, 0.1, 0.1))
    chart.SetTitle(f"Gate of v{outcome['version']}: {outcome['verdict']} (sites: {', '.join(data.sites)})")
    chart.SetXAxisTitle("site (" + ", ".join(f"{p} = {s}" for p, s in zip(positions, data.sites)) + ")")
    chart.SetYAxisTitle("Dice change new - parent (points)")
