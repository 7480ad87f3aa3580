"""Dice comparison of two versions, BWT on the lineage, and the MRML table and plot holding them."""

from __future__ import annotations

import math

import pytest
import slicer

from DAKRSegmentationLib import results

# v1 learned A, v2 (parent v1) learned B, v3 (parent v2) learned C; v4 (parent v1) is a rolled-back branch on C.
MODELS = [
    {"id": 1, "parent": None, "site": "A", "active": False},
    {"id": 2, "parent": 1, "site": "B", "active": False},
    {"id": 3, "parent": 2, "site": "C", "active": True},
    {"id": 4, "parent": 1, "site": "C", "active": False},
]
MATRIX = {
    "versions": [1, 2, 3, 4],
    "sites": ["A", "B", "C"],
    "dice": [
        [0.90, 0.40, None],
        [0.80, 0.85, 0.30],
        [0.70, 0.75, 0.88],
        [0.60, None, 0.86],
    ],
    "per_class": {},
}


def test_lineage_follows_parents() -> None:
    assert [m["id"] for m in results.lineage(MODELS, 3)] == [1, 2, 3]
    assert [m["id"] for m in results.lineage(MODELS, 4)] == [1, 4]
    with pytest.raises(ValueError, match="version 9"):
        results.lineage(MODELS, 9)


def test_compare_versions_rows_and_bwt() -> None:
    comparison = results.compare_versions(MATRIX, MODELS, before=2, after=3)
    rows = {row.site: row for row in comparison.sites}
    assert (rows["A"].before, rows["A"].after, rows["A"].when_learned) == (0.80, 0.70, 0.90)
    assert rows["B"].difference == pytest.approx(0.75 - 0.85)
    assert rows["C"].when_learned == 0.88
    # METHOD.md: mean over past sites j of R[T, j] - R[j, j] = ((0.70 - 0.90) + (0.75 - 0.85)) / 2
    assert comparison.bwt == pytest.approx(-0.15)


def test_bwt_of_a_branch_uses_its_own_lineage_and_skips_missing_values() -> None:
    comparison = results.compare_versions(MATRIX, MODELS, before=1, after=4)
    assert comparison.bwt == pytest.approx(0.60 - 0.90)
    rows = {row.site: row for row in comparison.sites}
    assert rows["B"].after is None and rows["B"].difference is None and rows["B"].when_learned is None


def test_first_version_has_no_bwt() -> None:
    assert results.compare_versions(MATRIX, MODELS, before=1, after=1).bwt is None


def _column_values(table_node, name: str) -> list:
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"column {name!r} missing"
    return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]


def test_results_table_holds_the_comparison_in_dice_points(scene) -> None:
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "results")
    comparison = results.compare_versions(MATRIX, MODELS, before=2, after=3)

    results.fill_results_table(table_node, comparison)

    assert _column_values(table_node, results.SITE_COLUMN) == ["A", "B", "C", results.BWT_ROW]
    assert _column_values(table_node, results.BEFORE_COLUMN)[:3] == pytest.approx([80.0, 85.0, 30.0])
    assert _column_values(table_node, results.AFTER_COLUMN)[:3] == pytest.approx([70.0, 75.0, 88.0])
    differences = _column_values(table_node, results.DIFFERENCE_COLUMN)
    assert differences == pytest.approx([-10.0, -10.0, 58.0, -15.0])
    assert math.isnan(_column_values(table_node, results.BEFORE_COLUMN)[3])
    assert [table_node.GetColumnTitle(c) for c in (results.BEFORE_COLUMN, results.AFTER_COLUMN, results.DIFFERENCE_COLUMN,
                                                  results.LEARNED_COLUMN)] == ["Before", "After", "Change", "Learned"]
    assert table_node.GetName().endswith("vs v3 (after)")


def test_dice_plot_has_one_series_per_site_along_the_lineage(scene) -> None:
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "chart")
    plot_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "plot table")

    results.fill_dice_plot(scene, chart, plot_table, MATRIX, MODELS, version=3)
    results.fill_dice_plot(scene, chart, plot_table, MATRIX, MODELS, version=3)  # refresh replaces, never piles up

    assert chart.GetNumberOfPlotSeriesNodes() == 3
    assert scene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 3
    assert _column_values(plot_table, results.VERSION_COLUMN) == [1, 2, 3]
    values_a = _column_values(plot_table, "A")
    assert values_a == pytest.approx([90.0, 80.0, 70.0])
    assert math.isnan(_column_values(plot_table, "C")[0])
    series = chart.GetNthPlotSeriesNode(0)
    assert isinstance(series, slicer.vtkMRMLPlotSeriesNode)
    assert (series.GetXColumnName(), series.GetYColumnName()) == (results.VERSION_COLUMN, "A")
    assert series.GetTableNode() is plot_table
