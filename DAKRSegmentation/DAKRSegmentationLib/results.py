"""Per-site Dice of two model versions, backward transfer, and the MRML table and plot showing them.

The numbers come from the backend (``GET /evaluation/matrix`` and ``GET /models``); this module
only arranges them. BWT follows METHOD.md on the lineage of the "after" version:
mean over the sites it learned before its last stage of (Dice now − Dice right after learning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import slicer
import vtk

from .mrmlio import LABEL_COLORS

SITE_COLUMN = "Site"
BEFORE_COLUMN = "Dice before"
AFTER_COLUMN = "Dice after"
DIFFERENCE_COLUMN = "Difference"
LEARNED_COLUMN = "Dice when learned"
BWT_ROW = "BWT"
VERSION_COLUMN = "Version"


@dataclass
class SiteComparison:
    """Dice of one site's audit cases under the two versions (``None``: not evaluated)."""

    site: str
    before: float | None
    after: float | None
    #: Dice of the version that learned this site, on the lineage of the "after" version.
    when_learned: float | None

    @property
    def difference(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


@dataclass
class VersionComparison:
    before: int
    after: int
    sites: list[SiteComparison]
    #: Backward transfer of the "after" version (``None`` until it has a past site).
    bwt: float | None


def lineage(models: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """The models from the first version to ``version`` following parent links."""
    by_id = {int(model["id"]): model for model in models}
    if version not in by_id:
        raise ValueError(f"version {version} is not among the backend's models {sorted(by_id)}")
    chain = []
    current: int | None = version
    while current is not None:
        model = by_id[current]
        chain.append(model)
        current = model.get("parent")
    return chain[::-1]


def _dice(matrix: dict[str, Any], version: int, site: str) -> float | None:
    try:
        row = matrix["versions"].index(version)
        column = matrix["sites"].index(site)
    except ValueError:
        return None
    value = matrix["dice"][row][column]
    return None if value is None else float(value)


def compare_versions(matrix: dict[str, Any], models: list[dict[str, Any]], before: int, after: int) -> VersionComparison:
    """Per-site Dice of ``before`` and ``after`` and the BWT of ``after``."""
    chain = lineage(models, after)
    learned_by: dict[str, int] = {}
    for model in chain:
        learned_by[model["site"]] = int(model["id"])
    rows = [
        SiteComparison(
            site,
            _dice(matrix, before, site),
            _dice(matrix, after, site),
            _dice(matrix, learned_by[site], site) if site in learned_by else None,
        )
        for site in matrix["sites"]
    ]
    past = [row for row in rows if row.site in learned_by and learned_by[row.site] != after]
    deltas = [row.after - row.when_learned for row in past if row.after is not None and row.when_learned is not None]
    bwt = sum(deltas) / len(deltas) if deltas else None
    return VersionComparison(before, after, rows, bwt)


def _column(table: "vtk.vtkTable", name: str, values: list, numeric: bool) -> None:
    array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
    array.SetName(name)
    for value in values:
        if numeric:
            array.InsertNextValue(math.nan if value is None else float(value))
        else:
            array.InsertNextValue(str(value))
    table.AddColumn(array)


def _points(values: list[float | None]) -> list[float | None]:
    """Dice (0-1) as Dice points (0-100), the unit of every table and plot of the product."""
    return [None if value is None else 100 * value for value in values]


def fill_results_table(table_node: "slicer.vtkMRMLTableNode", comparison: VersionComparison) -> None:
    """Rows: one per site, then ``BWT``; columns: site, Dice before/after, difference, Dice when learned
    (Dice points)."""
    rows = comparison.sites
    table = vtk.vtkTable()
    _column(table, SITE_COLUMN, [row.site for row in rows] + [BWT_ROW], numeric=False)
    _column(table, BEFORE_COLUMN, _points([row.before for row in rows] + [None]), numeric=True)
    _column(table, AFTER_COLUMN, _points([row.after for row in rows] + [None]), numeric=True)
    _column(table, DIFFERENCE_COLUMN, _points([row.difference for row in rows] + [comparison.bwt]), numeric=True)
    _column(table, LEARNED_COLUMN, _points([row.when_learned for row in rows] + [None]), numeric=True)
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    # Short titles so that the five columns fit the module panel without horizontal scrolling; the
    # versions are in the node name (and the panel's Before/After selectors).
    for column, title in ((BEFORE_COLUMN, "Before"), (AFTER_COLUMN, "After"), (DIFFERENCE_COLUMN, "Change"),
                          (LEARNED_COLUMN, "Learned")):
        table_node.SetColumnTitle(column, title)
    table_node.SetName(f"DAKR Dice v{comparison.before} (before) vs v{comparison.after} (after)")
    table_node.SetLocked(True)


def remove_plot_series(scene: "slicer.vtkMRMLScene", chart: "slicer.vtkMRMLPlotChartNode") -> None:
    """Take every series off ``chart`` and out of the scene (before the chart is drawn again)."""
    for index in reversed(range(chart.GetNumberOfPlotSeriesNodes())):
        old = chart.GetNthPlotSeriesNode(index)
        chart.RemoveNthPlotSeriesNodeID(index)
        if old is not None:
            scene.RemoveNode(old)


def fill_dice_plot(scene: "slicer.vtkMRMLScene", chart: "slicer.vtkMRMLPlotChartNode", table_node: "slicer.vtkMRMLTableNode",
                   matrix: dict[str, Any], models: list[dict[str, Any]], version: int) -> None:
    """Plot each site's Dice along the lineage of ``version`` (x: version id, one line per site)."""
    chain = [int(model["id"]) for model in lineage(models, version)]
    table = vtk.vtkTable()
    _column(table, VERSION_COLUMN, chain, numeric=True)
    for site in matrix["sites"]:
        _column(table, site, _points([_dice(matrix, v, site) for v in chain]), numeric=True)
    table_node.SetAndObserveTable(table)
    remove_plot_series(scene, chart)
    for index, site in enumerate(matrix["sites"]):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"Dice {site}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(VERSION_COLUMN)
        series.SetYColumnName(site)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*LABEL_COLORS[index % len(LABEL_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Mean Dice per site across model versions")
    chart.SetXAxisTitle("model version")
    chart.SetYAxisTitle("mean foreground Dice points (audit cases)")
