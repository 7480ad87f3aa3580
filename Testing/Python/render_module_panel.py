"""Render the module panel from its .ui file offscreen with PySide6 (for the README screenshot).

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/Python/render_module_panel.py [OUT.png]

Slicer's custom widgets (ctk, qMRML) are drawn by small PySide6 stand-ins; the panel is filled
with illustrative values (a connected backend, two versions, a labelling order, a site check, a
running job, the results table, the audit table and a case's shift flag) and carries a banner
saying it is a mock, not a screenshot of Slicer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtWidgets  # noqa: E402
from PySide6.QtCore import Property, QFile, QObject  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "DAKRSegmentation"))

from DAKRSegmentationLib import shift  # noqa: E402  (the module's own wording of the shift verdicts)

UI_FILE = REPO / "DAKRSegmentation" / "Resources" / "UI" / "DAKRSegmentation.ui"
DEFAULT_OUTPUT = REPO / "Resources" / "Screenshots" / "module_panel.png"
STRATEGIES = ["dakr", "replay", "finetune", "ewc", "lwf", "joint", "distill", "dakr-cna", "dakr-cra"]


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """Stand-in: a titled box (Slicer draws a full-width header button with an arrow); a collapsed
    one shows only its title."""

    def _text(self) -> str:
        return self.title().lstrip("▸▾ ")

    def _set_text(self, text: str) -> None:
        self.setTitle(("▸ " if self._collapsed() else "▾ ") + text)

    def _collapsed(self) -> bool:
        return bool(self.property("_collapsed"))

    def _set_collapsed(self, collapsed: bool) -> None:
        text = self._text()
        self.setProperty("_collapsed", collapsed)
        self._set_text(text)
        self.setMaximumHeight(28 if collapsed else 16777215)

    text = Property(str, _text, _set_text)
    collapsed = Property(bool, _collapsed, _set_collapsed)


class ctkCollapsibleGroupBox(QtWidgets.QGroupBox):
    """Stand-in: a collapsed group box shows only its title."""

    def _collapsed(self) -> bool:
        return bool(self.property("_collapsed"))

    def _set_collapsed(self, collapsed: bool) -> None:
        self.setProperty("_collapsed", collapsed)
        self.setTitle(("▸ " if collapsed else "▾ ") + self.title().lstrip("▸▾ "))
        self.setMaximumHeight(28 if collapsed else 16777215)

    collapsed = Property(bool, _collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    """Stand-in: a line edit with a browse button."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QtWidgets.QLineEdit()
        layout.addWidget(self.edit)
        layout.addWidget(QtWidgets.QToolButton(text="..."))

    def _path(self) -> str:
        return self.edit.text()

    def _set_path(self, path: str) -> None:
        self.edit.setText(path)

    currentPath = Property(str, _path, _set_path)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Stand-in: a combo box listing node names."""


class qMRMLTableView(QtWidgets.QTableWidget):
    """Stand-in: a table widget showing a table node's content."""


class qMRMLWidget(QtWidgets.QWidget):
    """Stand-in: the panel's top-level widget."""


def load_panel() -> QtWidgets.QWidget:
    loader = QUiLoader()
    for cls in (ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkPathLineEdit, qMRMLNodeComboBox, qMRMLTableView, qMRMLWidget):
        loader.registerCustomWidget(cls)
    ui_file = QFile(str(UI_FILE))
    ui_file.open(QFile.ReadOnly)
    panel = loader.load(ui_file)
    ui_file.close()
    return panel


#: Banner on the rendered panel.
MOCK_BANNER = "MOCK: the .ui rendered offscreen with illustrative values, not a screenshot of Slicer"


def _fill_table(table: QtWidgets.QTableWidget, headers: list[str], rows: list[list[str]]) -> None:
    """Fill a table and size its columns as the module does (stretched to the panel width)."""
    table.setColumnCount(len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QtWidgets.QTableWidgetItem(value))
    table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)


def fill_example(panel: QtWidgets.QWidget) -> None:
    """Illustrative content: what the panel shows while a third site is being learned."""
    ui = {widget.objectName(): widget for widget in panel.findChildren(QObject) if widget.objectName()}
    ui["backendModeComboBox"].addItems(["local", "remote"])
    ui["storePathLineEdit"].currentPath = "/home/radiology/DAKRSegmentationStore"
    for name in ("remoteUrlLabel", "remoteUrlLineEdit", "remoteTokenLabel", "remoteTokenLineEdit", "folderCasesWidget",
                 "deviceWarningLabel"):
        ui[name].setVisible(False)
    ui["backendStatusLabel"].setText("Connected to http://127.0.0.1:43127 · API 1.0 · device cuda (NVIDIA RTX A4000)")
    ui["activeVersionLabel"].setText("Active version: v2 (dakr on HospitalB)")
    _fill_table(ui["versionsTableWidget"], ["Version", "Site", "Strategy", "Created", "Parent"], [
        ["v1", "HospitalA", "finetune", "2026-03-02 09:14", ""],
        ["v2 (active)", "HospitalB", "dakr", "2026-03-09 16:40", "v1"]])
    ui["siteNameLineEdit"].setText("HospitalC")
    ui["casesSourceComboBox"].addItems(["loaded scene nodes", "nnU-Net raw folder"])
    ui["caseVolumeSelector"].addItem("HC-017 T1")
    ui["caseLabelsSelector"].addItem("HC-017 T1 segmentation")
    _fill_table(ui["casesTableWidget"], ["Case", "Image", "Labels"], [
        ["HC-016_T1", "HC-016 T1", "HC-016 T1 segmentation"], ["HC-017_T1", "HC-017 T1", "HC-017 T1 segmentation"]])
    ranked = [["1", "HC-031.nii.gz", "0.812", "uncertainty 0.412 (1st highest of 3); feature distance 1.30 to the "
               "nearest labelled or earlier-ranked case"],
              ["2", "HC-027.nii.gz", "0.547", "uncertainty 0.275 (3rd highest of 3); feature distance 1.12 to the "
               "nearest labelled or earlier-ranked case"],
              ["3", "HC-029.nii.gz", "0.433", "uncertainty 0.301 (2nd highest of 3); feature distance 0.41 to the "
               "nearest labelled or earlier-ranked case"]]
    _fill_table(ui["rankTableWidget"], ["Rank", "Image", "Score", "Reason"], ranked)
    ui["rankTableWidget"].setVisible(True)
    ui["adaptSiteComboBox"].addItems(["HospitalC"])
    check = {"site": "HospitalC", "version": 2, "unlike_known": False, "adapt_recommended": True,
             "verdict": "looks like site HospitalB (median shift 0.94, threshold 1.20); current model Dice 74.1 vs 85.8 "
                        "on known sites — adapt"}
    ui["siteCheckLabel"].setText(shift.site_check_text(check))
    ui["siteCheckLabel"].setStyleSheet(shift.site_check_style_sheet(check))
    ui["strategyComboBox"].addItems(STRATEGIES)
    ui["jobProgressBar"].setValue(60)
    ui["jobStatusLabel"].setText("train · epoch 3/4 · step 120/200 · seg 0.412 cna 0.031 cra 0.054 · ETA 2:10")
    ui["jobLogTextEdit"].setPlainText("[job 5f3a91c2] Adapting to HospitalC with dakr ...\n"
                                      "train · epoch 1/4 · step 50/200 · seg 0.702 cna 0.044 cra 0.071 · ETA 6:40\n"
                                      "train · epoch 3/4 · step 120/200 · seg 0.412 cna 0.031 cra 0.054 · ETA 2:10")
    ui["adaptButton"].setEnabled(False)
    ui["resumeButton"].setEnabled(False)
    ui["beforeVersionComboBox"].addItems(["v1 · HospitalA · finetune"])
    ui["afterVersionComboBox"].addItems(["v2 · HospitalB · dakr"])
    _fill_table(ui["resultsTableView"], ["Site", "Before", "After", "Change", "Learned"], [
        ["HospitalA", "87.1", "86.2", "-0.9", "87.1"], ["HospitalB", "64.4", "85.3", "20.9", "85.3"],
        ["BWT", "", "", "-0.9", ""]])
    ui["bwtLabel"].setText("Backward transfer of v2: -0.9 Dice points (negative = forgetting)")
    ui["auditSiteComboBox"].addItems(["HospitalA"])
    _fill_table(ui["auditCasesTableWidget"], ["Case", "Before", "After", "Change", "Worst"], [
        ["HA-011", "88.3", "82.9", "-5.4", "hippo -12.1"], ["HA-004", "87.4", "86.6", "-0.8", "csf -1.9"],
        ["HA-017", "86.1", "86.4", "0.3", "csf -0.4"], ["HA-020", "85.2", "87.1", "1.9", "gm +0.6"]])
    ui["auditCasesTableWidget"].selectRow(0)
    for name in ("showGroundTruthCheckBox", "showLostCheckBox", "showGainedCheckBox"):
        ui[name].setChecked(True)
    ui["auditOpacitySlider"].setValue(60)
    ui["auditDiceLabel"].setText("HospitalA / HA-011: Dice v1 88.3 → v2 82.9 · 1904 voxels lost, 377 gained\n"
                                 "hippocampus 84.6 → 72.5 (-12.1) · csf 90.2 → 88.4 (-1.8)")
    flag = shift.ShiftFlag(score=0.71, threshold=1.20, out_of_distribution=False, nearest_site="HospitalA")
    ui["caseShiftLabel"].setText(flag.text)
    ui["caseShiftLabel"].setStyleSheet(flag.style_sheet)
    banner = QtWidgets.QLabel(MOCK_BANNER)
    banner.setObjectName("mockBanner")
    banner.setWordWrap(True)
    banner.setStyleSheet("background: #fff3b0; color: #5a4500; font-weight: bold; padding: 4px;")
    panel.layout().insertWidget(0, banner)


def render(output: Path = DEFAULT_OUTPUT, width: int = 460) -> Path:
    """Write a PNG of the filled panel and return its path."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    panel = load_panel()
    fill_example(panel)
    panel.resize(width, panel.sizeHint().height())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise OSError(f"cannot write {output}")
    panel.deleteLater()
    app.processEvents()
    return output


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
