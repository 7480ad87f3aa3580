"""The module's Qt Designer file, loaded with PySide6 offscreen: every ``ui.<name>`` the module uses
exists with the expected widget type, and the ``SlicerParameterName`` bindings match the parameter node."""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ElementTree

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402
from PySide6 import QtCore  # noqa: E402
from PySide6.QtCore import QFile, QObject  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

from conftest import MODULE_DIR  # noqa: E402

UI_FILE = MODULE_DIR / "Resources" / "UI" / "DAKRSegmentation.ui"
MODULE_FILE = MODULE_DIR / "DAKRSegmentation.py"

#: Designer class of every widget the module code touches.
EXPECTED_CLASSES = {
    "backendModeComboBox": "QComboBox", "storePathLineEdit": "ctkPathLineEdit", "storePathLabel": "QLabel",
    "remoteUrlLineEdit": "QLineEdit", "remoteUrlLabel": "QLabel", "remoteTokenLineEdit": "QLineEdit",
    "remoteTokenLabel": "QLabel", "connectButton": "QPushButton", "disconnectButton": "QPushButton",
    "backendStatusLabel": "QLabel", "deviceWarningLabel": "QLabel",
    "modelCollapsibleButton": "ctkCollapsibleButton", "activeVersionLabel": "QLabel",
    "versionsTableWidget": "QTableWidget", "rollbackButton": "QPushButton",
    "newSiteCollapsibleButton": "ctkCollapsibleButton", "sceneCasesWidget": "QWidget", "folderCasesWidget": "QWidget",
    "caseVolumeSelector": "qMRMLNodeComboBox", "caseLabelsSelector": "qMRMLNodeComboBox", "addCaseButton": "QPushButton",
    "findCasesButton": "QPushButton", "removeCaseButton": "QPushButton", "casesTableWidget": "QTableWidget",
    "registerSiteButton": "QPushButton", "rankButton": "QPushButton", "rankTableWidget": "QTableWidget",
    "adaptCollapsibleButton": "ctkCollapsibleButton", "adaptSiteComboBox": "QComboBox", "adaptButton": "QPushButton",
    "checkShiftButton": "QPushButton", "siteCheckLabel": "QLabel", "cancelButton": "QPushButton",
    "resumeButton": "QPushButton", "jobProgressBar": "QProgressBar", "jobStatusLabel": "QLabel",
    "jobLogTextEdit": "QPlainTextEdit",
    "resultsCollapsibleButton": "ctkCollapsibleButton", "beforeVersionComboBox": "QComboBox",
    "afterVersionComboBox": "QComboBox", "showResultsButton": "QPushButton", "resultsTableView": "qMRMLTableView",
    "bwtLabel": "QLabel",
    "auditCollapsibleButton": "ctkCollapsibleButton", "auditSiteComboBox": "QComboBox",
    "auditCasesTableWidget": "QTableWidget", "previousCaseButton": "QPushButton", "loadCaseButton": "QPushButton",
    "nextCaseButton": "QPushButton", "flickerButton": "QPushButton", "auditDiceLabel": "QLabel",
    "caseShiftLabel": "QLabel", "showUncertaintyCheckBox": "QCheckBox",
}
#: What each Slicer custom widget extends (as in Slicer's own Designer plugins).
CUSTOM_BASES = {"ctkCollapsibleButton": "QWidget", "ctkCollapsibleGroupBox": "QGroupBox", "ctkPathLineEdit": "QWidget",
                "qMRMLNodeComboBox": "QWidget", "qMRMLTableView": "QTableView", "qMRMLWidget": "QWidget"}
#: Widget class that Slicer's parameter node GUI connectors accept for each annotated type.
CONNECTORS = {"str+Choice": {"QComboBox"}, "str": {"QLineEdit"}, "int": {"QSpinBox", "QSlider"},
              "float": {"QDoubleSpinBox"}, "bool": {"QCheckBox"}, "Path": {"ctkPathLineEdit"}, "node": {"qMRMLNodeComboBox"}}
#: Parameters kept by the module itself rather than bound to a widget.
UNBOUND_PARAMETERS = {"jobId", "resultsTable", "diceTable", "diceChart"}
#: Width of Slicer's module panel in a default main window (px).
DEFAULT_PANEL_WIDTH = 400


@pytest.fixture(scope="module")
def loaded():
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui_file)
    ui_file.close()
    assert widget is not None, "QUiLoader could not load the .ui file"
    yield widget
    widget.deleteLater()
    app.processEvents()


@pytest.fixture(scope="module")
def designer() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def _classes(root: ElementTree.Element) -> dict[str, str]:
    return {element.get("name"): element.get("class") for element in root.iter("widget")}


def test_top_level_is_a_mrml_widget_named_after_the_module(designer) -> None:
    top = designer.find("widget")
    assert (designer.findtext("class"), top.get("class"), top.get("name")) == ("DAKRSegmentation", "qMRMLWidget", "DAKRSegmentation")


def test_every_ui_name_the_module_uses_exists_with_the_expected_type(loaded, designer) -> None:
    used = set(re.findall(r"\bui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module uses no ui widgets?"
    assert used <= set(EXPECTED_CLASSES), f"add the expected class of {sorted(used - set(EXPECTED_CLASSES))} to this test"
    classes = _classes(designer)
    for name in sorted(used):
        assert classes.get(name) == EXPECTED_CLASSES[name], f"{name}: designer class {classes.get(name)}"
        child = loaded.findChild(QObject, name)
        assert child is not None, f"{name} missing from the loaded panel"
        qt_class = CUSTOM_BASES.get(EXPECTED_CLASSES[name], EXPECTED_CLASSES[name])
        assert isinstance(child, getattr(QtWidgets, qt_class)), f"{name} loaded as {type(child).__name__}"


def test_custom_widgets_are_declared_like_slicer_declares_them(designer) -> None:
    declared = {item.findtext("class"): (item.findtext("extends"), item.findtext("header"))
                for item in designer.iter("customwidget")}
    used = {cls for cls in _classes(designer).values() if not cls.startswith("Q")}
    assert used <= set(declared)
    for cls in used:
        assert declared[cls] == (CUSTOM_BASES[cls], f"{cls}.h")


def test_scene_reaches_every_mrml_widget(designer) -> None:
    classes = _classes(designer)
    needs_scene = {name for name, cls in classes.items() if cls in ("qMRMLNodeComboBox", "qMRMLTableView")}
    connected = {c.findtext("receiver") for c in designer.iter("connection")
                 if c.findtext("sender") == "DAKRSegmentation" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert needs_scene == connected


def _parameters() -> dict[str, str]:
    """Parameter name -> connector kind, read from the parameter node class in the module source."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "DAKRSegmentationParameterNode")
    kinds = {}
    for statement in cls.body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        annotation = ast.unparse(statement.annotation)
        base = re.sub(r"^Annotated\[(\w+),.*$", r"\1", annotation)
        if base.startswith("vtkMRML"):
            kinds[statement.target.id] = "node"
        else:
            kinds[statement.target.id] = base + ("+Choice" if "Choice(" in annotation else "")
    return kinds


def test_parameter_names_match_the_parameter_node(loaded, designer) -> None:
    parameters = _parameters()
    classes = _classes(designer)
    bound = {}
    for element in designer.iter("widget"):
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property"
                bound.setdefault(prop.findtext("string"), []).append(element.get("name"))
    unknown = set(bound) - set(parameters)
    assert not unknown, f"widgets bound to parameters the node does not have: {unknown}"
    assert set(bound) == set(parameters) - UNBOUND_PARAMETERS, "every GUI parameter has a widget"
    for parameter, widgets in bound.items():
        assert len(widgets) == 1, f"{parameter} is bound to several widgets {widgets}"
        assert classes[widgets[0]] in CONNECTORS[parameters[parameter]], (
            f"{widgets[0]} ({classes[widgets[0]]}) cannot represent {parameter} ({parameters[parameter]})")
        assert loaded.findChild(QObject, widgets[0]).property("SlicerParameterName") == parameter


def test_the_token_is_a_password_field_and_not_a_parameter(loaded) -> None:
    token = loaded.findChild(QtWidgets.QLineEdit, "remoteTokenLineEdit")
    assert token.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
    assert token.property("SlicerParameterName") is None


def test_panel_renders_offscreen_labelled_as_a_mock(tmp_path) -> None:
    from PySide6.QtGui import QImage
    from render_module_panel import MOCK_BANNER, render

    path = render(tmp_path / "panel.png")
    image = QImage(str(path))
    assert image.width() >= 400 and image.height() >= 800
    assert len({image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}) > 20
    assert "MOCK" in MOCK_BANNER


def test_rarely_used_sections_start_collapsed(designer) -> None:
    collapsed = {element.get("name") for element in designer.iter("widget")
                 if any(prop.get("name") == "collapsed" and prop.findtext("bool") == "true" for prop in element.findall("property"))}
    assert {"modelCollapsibleButton", "advancedGroupBox"} <= collapsed
    assert not {"backendCollapsibleButton", "adaptCollapsibleButton", "auditCollapsibleButton"} & collapsed


def test_the_labelling_order_table_starts_hidden_with_the_columns_the_module_fills(loaded) -> None:
    table = loaded.findChild(QtWidgets.QTableWidget, "rankTableWidget")
    assert table.isHidden()
    assert [table.horizontalHeaderItem(column).text() for column in range(table.columnCount())] == ["Rank", "Image", "Score", "Reason"]


@pytest.mark.parametrize("table_name", ["auditCasesTableWidget", "resultsTableView", "rankTableWidget"])
def test_tables_do_not_scroll_sideways_at_the_default_panel_width(table_name: str) -> None:
    from render_module_panel import fill_example, load_panel

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    panel = load_panel()
    fill_example(panel)
    panel.resize(DEFAULT_PANEL_WIDTH, 1600)
    panel.show()
    app.processEvents()
    table = panel.findChild(QtWidgets.QTableWidget, table_name)
    assert table.horizontalScrollBarPolicy() == QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    header = table.horizontalHeader()
    assert header.length() <= table.viewport().width() + 1, f"{header.length()} px of columns in {table.viewport().width()} px"
    for column in range(table.columnCount()):
        title = table.horizontalHeaderItem(column).text()
        needed = header.fontMetrics().horizontalAdvance(title)
        assert header.sectionSize(column) >= needed, f"{table_name}: column '{title}' is cut ({header.sectionSize(column)} < {needed} px)"
    panel.deleteLater()
    app.processEvents()
