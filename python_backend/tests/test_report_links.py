"""The HTML report links its summary figure and cites nothing outside what it ships."""

from __future__ import annotations

from pathlib import Path

from dakr.evaluation.report import SUMMARY_FIGURE, write_report
from test_report import _three_stage_store


def test_report_links_the_summary_figure_and_cites_no_missing_file(tmp_path: Path) -> None:
    index = write_report(_three_stage_store(tmp_path), tmp_path / "report", cases_per_site=1)
    page = index.read_text(encoding="utf-8")
    assert f'href="{SUMMARY_FIGURE}"' in page and (index.parent / SUMMARY_FIGURE).is_file()
    assert ".md" not in page
