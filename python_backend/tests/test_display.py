"""People read Dice in points with full site names; ``evaluate --version V`` shows that version only."""

from __future__ import annotations

import pytest

from dakr.cli import _print_matrix
from dakr.display import dice_table, format_dice_points

LONG = "site3_flair_1p5T_scanner_B"


def test_dice_points() -> None:
    assert [format_dice_points(v) for v in (0.675, 1.0, None, float("nan"))] == ["67.5", "100.0", "–", "–"]


def test_table_keeps_full_site_names_and_shows_points() -> None:
    table = dice_table([1, 2], ["t1", LONG], [[0.5, None], [0.675, 0.9]])
    lines = table.splitlines()
    assert lines[0].split() == ["site", "v1", "v2"]
    assert lines[1].split() == ["t1", "50.0", "67.5"]
    assert lines[2].split() == [LONG, "–", "90.0"]


class _Store:
    def dice_matrix(self):
        return [1, 2, 3], ["A", LONG], [[0.1, 0.2], [0.3, 0.4], [0.5, None]]


def test_one_version_prints_only_its_column(capsys: pytest.CaptureFixture[str]) -> None:
    _print_matrix(_Store(), 2)
    lines = capsys.readouterr().out.splitlines()
    assert "points" in lines[0]
    assert lines[1].split() == ["site", "v2"]
    assert lines[2].split() == ["A", "30.0"] and lines[3].split() == [LONG, "40.0"]
