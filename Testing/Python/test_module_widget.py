"""The module file under test doubles of qt, ctk, slicer.app and ScriptedLoadableModule: set-up and
parameter binding, button wiring, the adapt flow driven by a fake timer, and error dialogs."""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
import time
import types
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

import slicer_gui_doubles as doubles
from DAKRSegmentationLib import mrmlio
from DAKRSegmentationLib.session import AdaptSettings
from fake_http import INFO, SITE_CHECK, FakeBackend, shift_headers

MODELS_V1 = [{"id": 1, "parent": None, "site": "A", "strategy": "dakr", "created": "2026-01-02T10:00:00", "seed": 0,
              "config": {}, "active": True, "dice": {"A": 0.9}}]
MODELS_V2 = [{**MODELS_V1[0], "active": False},
             {"id": 2, "parent": 1, "site": "B", "strategy": "replay", "created": "2026-01-03T11:00:00", "seed": 0,
              "config": {}, "active": True, "dice": {"A": 0.8, "B": 0.85}}]
MATRIX_V2 = {"versions": [1, 2], "sites": ["A", "B"], "dice": [[0.9, 0.5], [0.8, 0.85]], "per_class": {}}
SITES = [{"name": "A", "n_train": 3, "n_audit": 2, "purged": False, "created": "", "split_seed": 0},
         {"name": "B", "n_train": 3, "n_audit": 1, "purged": False, "created": "", "split_seed": 0}]


class Backend:
    """A scripted backend whose job advances one step per poll of its state."""

    def __init__(self) -> None:
        self.info = dict(INFO)
        self.models = list(MODELS_V1)
        self.jobs_list: list[dict] = []
        self.job_states = ["running", "succeeded"]
        self.job_error: str | None = None
        self.events = [
            [{"stage": "train", "step": 5, "total": 20, "epoch": 1, "epochs": 2, "losses": {"seg": 0.7},
              "throughput": 4.0, "eta_s": 30.0, "message": "", "time": 1.0}],
            [{"stage": "evaluate", "step": 2, "total": 2, "epoch": 0, "epochs": 0, "losses": {},
              "throughput": 0.0, "eta_s": None, "message": "audit cases", "time": 2.0}],
        ]
        self.polls = 0
        self.server = FakeBackend({
            ("GET", "/api/v1/info"): lambda r: (200, self.info),
            ("GET", "/api/v1/models"): lambda r: (200, self.models),
            ("GET", "/api/v1/sites"): (200, SITES),
            ("GET", "/api/v1/sites/A/cases"): (200, [{"case_id": "a1", "split": "train"}, {"case_id": "a2", "split": "audit"}]),
            ("GET", "/api/v1/sites/B/cases"): (200, [{"case_id": "b1", "split": "train"}, {"case_id": "b2", "split": "audit"}]),
            ("GET", "/api/v1/sites/A/audit-dice"): (200, [{"case_id": "a2", "before": {"shell": 0.9, "core": 0.8},
                                                            "after": {"shell": 0.85, "core": 0.82}}]),
            ("GET", "/api/v1/sites/B/audit-dice"): (200, [{"case_id": "b2", "before": None, "after": {"shell": 0.9, "core": 0.7}}]),
            ("GET", "/api/v1/jobs"): lambda r: (200, self.jobs_list),
            ("POST", "/api/v1/jobs"): (202, {"job_id": "j1"}),
            ("GET", "/api/v1/jobs/j1/events"): self._events,
            ("GET", "/api/v1/jobs/j1"): self._job,
            ("GET", "/api/v1/jobs/j1/log"): (200, {"lines": ["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"]}),
            ("POST", "/api/v1/jobs/j1/cancel"): (200, {"id": "j1", "state": "running"}),
            ("POST", "/api/v1/jobs/j1/resume"): (200, {"id": "j1", "state": "queued"}),
            ("GET", "/api/v1/evaluation/matrix"): (200, MATRIX_V2),
            ("POST", "/api/v1/models/1/activate"): (200, MODELS_V1[0]),
            ("GET", "/api/v1/sites/B/check"): (200, SITE_CHECK),
            ("GET", "/api/v1/sites/C/check"): (200, {**SITE_CHECK, "site": "C"}),
        })

    def _events(self, request) -> tuple[int, dict]:
        since = int(request.query["since"][0])
        available = [event for batch in self.events[: self.polls + 1] for event in batch]
        return 200, {"events": available[since:], "next": len(available)}

    def _job(self, request) -> tuple[int, dict]:
        state = self.job_states[min(self.polls, len(self.job_states) - 1)]
        self.polls += 1
        if state == "succeeded":
            self.models = list(MODELS_V2)
        return 200, {"id": "j1", "kind": "adapt", "state": state, "params": {}, "progress": None, "created": "",
                     "updated": "", "error": self.job_error if state == "failed" else None,
                     "result": {"version": 2} if state == "succeeded" else None}

    def requests(self, method: str, path: str) -> list:
        return [r for r in self.server.requests if r.method == method and r.path == f"/api/v1{path}"]


@pytest.fixture
def backend():
    fake = Backend()
    yield fake
    fake.server.close()


@pytest.fixture
def gui(monkeypatch, scene, tmp_path):
    """The module imported and its widget set up under the doubles."""
    env = doubles.install(monkeypatch, scene, tmp_path / "slicer-temp")
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)
    module = importlib.import_module("DAKRSegmentation")
    widget = module.DAKRSegmentationWidget()
    widget.setup()
    yield types.SimpleNamespace(module=module, widget=widget, ui=widget.ui, env=env, scene=scene)
    widget.cleanup()
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)


def connect_remote(gui, backend: Backend, token: str = "t0ken") -> None:
    gui.ui.backendModeComboBox.currentIndex = gui.ui.backendModeComboBox._items.index("remote")
    gui.ui.remoteUrlLineEdit.text = backend.server.url
    gui.ui.remoteTokenLineEdit.text = token
    gui.ui.connectButton.click()
    finish(gui)


def finish(gui, timeout_s: float = 30.0) -> None:
    """Let the widget's background tasks end, firing its task timer as Qt would."""
    deadline = time.monotonic() + timeout_s
    while gui.widget.tasks.busy():
        assert time.monotonic() < deadline, f"background tasks still running: {[t.name for t in gui.widget.tasks.tasks]}"
        time.sleep(0.01)
        gui.widget.taskTimer.fire()


def poll_timer(gui) -> doubles.QTimer:
    return gui.widget.pollTimer


def test_setup_binds_the_parameter_node_and_wires_every_button(gui) -> None:
    ui, params = gui.ui, gui.widget._parameterNode
    assert gui.env.unhandled == []
    assert ui.strategyComboBox._items == list(gui.module.STRATEGIES) and ui.strategyComboBox.currentText == "dakr"
    ui.epochsSpinBox.value = 7
    ui.lambdaCraSpinBox.value = 0.25
    ui.siteNameLineEdit.text = "HospitalB"
    assert (params.epochs, params.lambdaCra, params.siteName) == (7, 0.25, "HospitalB")
    params.strategy = "ewc"
    assert ui.strategyComboBox.currentText == "ewc"
    buttons = [w for w in vars(ui).values() if type(w) is doubles.QPushButton]
    assert len(buttons) == 17
    unwired = [b.name for b in buttons if not b.connections("clicked(bool)") and not b.connections("toggled(bool)")]
    assert unwired == []
    # nothing but the backend section works before a connection
    assert ui.connectButton.enabled and not ui.adaptCollapsibleButton.enabled and not ui.auditCollapsibleButton.enabled


def test_backend_defaults_are_the_backend_config_defaults(gui) -> None:
    from dakr.config import ExperimentConfig

    defaults = ExperimentConfig()
    params = gui.widget._parameterNode
    assert (params.epochs, params.bufferSamples) == (defaults.train.epochs, defaults.continual.buffer_samples)
    assert (params.lambdaCna, params.lambdaCra) == (defaults.continual.lambda_cna, defaults.continual.lambda_cra)


def test_backend_mode_switches_the_visible_fields(gui) -> None:
    ui = gui.ui
    assert ui.storePathLineEdit.visible and not ui.remoteUrlLineEdit.visible and not ui.remoteTokenLineEdit.visible
    ui.backendModeComboBox.currentIndex = 1
    assert not ui.storePathLineEdit.visible and ui.remoteUrlLineEdit.visible and ui.remoteTokenLineEdit.visible
    ui.casesSourceComboBox.currentIndex = 1
    assert ui.folderCasesWidget.visible and not ui.sceneCasesWidget.visible


def test_remote_connect_shows_version_device_and_gpu_warning(gui, backend) -> None:
    backend.info["device"] = {"type": "cpu", "name": "CPU", "cuda_available_but_unused": True}
    connect_remote(gui, backend)

    ui = gui.ui
    assert gui.env.dialogs.errors == []
    assert ui.backendStatusLabel.text == f"Connected to {backend.server.url} · API 1.0 · device cpu (CPU)"
    assert ui.deviceWarningLabel.visible and "CPU-only" in ui.deviceWarningLabel.text
    assert backend.server.requests[0].headers["Authorization"] == "Bearer t0ken"
    assert ui.adaptCollapsibleButton.enabled and not ui.connectButton.enabled
    assert ui.activeVersionLabel.text == "Active version: v1 (dakr on A)"
    assert ui.adaptSiteComboBox._items == ["A", "B"] and ui.auditSiteComboBox._items == ["A"]
    assert "remoteToken" not in gui.widget._parameterNode._fields, "the token must not be saved with the scene"


def test_backend_with_another_api_major_is_refused(gui, backend) -> None:
    backend.info["api_version"] = "2.0"
    connect_remote(gui, backend)

    assert len(gui.env.dialogs.errors) == 1
    assert "API version 2.0, this module supports 1.x" in gui.env.dialogs.errors[0]
    assert gui.widget.logic.session is None
    assert not gui.ui.adaptCollapsibleButton.enabled and gui.ui.connectButton.enabled
    assert gui.env.unhandled == []


def test_unreachable_backend_gives_a_dialog_not_a_traceback(gui, backend) -> None:
    url = backend.server.url
    backend.server.close()
    gui.ui.backendModeComboBox.currentIndex = 1
    gui.ui.remoteUrlLineEdit.text = url
    gui.ui.connectButton.click()
    finish(gui)
    assert len(gui.env.dialogs.errors) == 1 and f"No DAKR backend answered at {url}" in gui.env.dialogs.errors[0]
    assert gui.env.unhandled == []


def test_adapt_flow_is_driven_by_the_timer(gui, backend) -> None:
    connect_remote(gui, backend)
    ui = gui.ui
    ui.adaptSiteComboBox.currentIndex = 1
    ui.strategyComboBox.currentIndex = gui.module.STRATEGIES.index("replay")
    ui.epochsSpinBox.value = 2
    ui.bufferSamplesSpinBox.value = 32
    ui.lambdaCnaSpinBox.value = 2.0

    ui.adaptButton.click()
    finish(gui)

    body = json.loads(backend.requests("POST", "/jobs")[0].body)
    assert body == {"kind": "adapt", "site": "B", "strategy": "replay",
                    "config": {"train.epochs": 2, "continual.buffer_samples": 32, "continual.lambda_cna": 2.0,
                               "continual.lambda_cra": AdaptSettings.lambda_cra}}  # untouched: the default
    timer = poll_timer(gui)
    assert timer.isActive() and timer.interval == gui.module.POLL_INTERVAL_MS
    assert ui.cancelButton.enabled and not ui.adaptButton.enabled and not ui.rollbackButton.enabled
    assert gui.widget._parameterNode.jobId == "j1"

    timer.fire()
    finish(gui)
    assert ui.jobProgressBar.value == 25 and ui.jobProgressBar.maximum == 100
    assert ui.jobStatusLabel.text == "train · epoch 1/2 · step 5/20 · seg 0.700 · ETA 0:30"
    assert "train · epoch 1/2 · step 5/20" in ui.jobLogTextEdit.toPlainText()
    assert timer.isActive()

    timer.fire()
    finish(gui)
    assert not timer.isActive()
    assert ui.jobStatusLabel.text == "Finished: version 2 is active."
    assert "evaluate · step 2/2 · audit cases" in ui.jobLogTextEdit.toPlainText()
    assert ui.versionsTableWidget.rowCount() == 2 and ui.versionsTableWidget.item(1, 0).text() == "v2 (active)"
    assert (ui.beforeVersionComboBox.currentText, ui.afterVersionComboBox.currentText) == ("v1 · A · dakr", "v2 · B · replay")
    table = gui.widget._parameterNode.resultsTable
    assert table is not None and ui.resultsTableView.mrmlTableNode() is table
    after = table.GetTable().GetColumnByName("Dice after")
    assert [after.GetValue(i) for i in range(2)] == pytest.approx([80.0, 85.0])  # Dice points
    assert ui.bwtLabel.text == "Backward transfer of v2: -10.0 Dice points (negative = forgetting)"
    assert gui.env.app.layoutManager().layouts[-1] == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView
    assert gui.env.app.applicationLogic().propagated == ["table", "plot"]
    assert ui.auditSiteComboBox._items == ["A", "B"]
    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []


def test_cancel_then_resume(gui, backend) -> None:
    backend.job_states = ["running", "cancelled", "running"]
    connect_remote(gui, backend)
    gui.ui.adaptButton.click()
    finish(gui)
    timer = poll_timer(gui)
    timer.fire()
    finish(gui)

    gui.ui.cancelButton.click()
    finish(gui)
    assert len(backend.requests("POST", "/jobs/j1/cancel")) == 1
    timer.fire()
    finish(gui)
    assert not timer.isActive()
    assert gui.ui.resumeButton.enabled and gui.ui.adaptButton.enabled
    assert gui.ui.jobStatusLabel.text.startswith("Cancelled.")

    gui.ui.resumeButton.click()
    finish(gui)
    assert len(backend.requests("POST", "/jobs/j1/resume")) == 1
    assert timer.isActive() and not gui.ui.resumeButton.enabled


def test_failed_job_shows_the_error_and_the_log(gui, backend) -> None:
    backend.job_states = ["failed"]
    backend.job_error = "RuntimeError: CUDA out of memory"
    connect_remote(gui, backend)
    gui.ui.adaptButton.click()
    finish(gui)
    poll_timer(gui).fire()
    finish(gui)

    assert gui.env.dialogs.errors == ["Adapting failed.\n\nRuntimeError: CUDA out of memory"]
    assert "Traceback (most recent call last):" in gui.ui.jobLogTextEdit.toPlainText()
    assert not poll_timer(gui).isActive() and not gui.ui.resumeButton.enabled


def test_conflict_shows_a_dialog_and_follows_the_running_job(gui, backend) -> None:
    backend.server.routes[("POST", "/api/v1/jobs")] = (409, {"detail": "a training job is running: j1", "job_id": "j1"})
    connect_remote(gui, backend)
    gui.ui.adaptButton.click()
    finish(gui)
    assert len(gui.env.dialogs.errors) == 1 and "follows the running job j1" in gui.env.dialogs.errors[0]
    assert poll_timer(gui).isActive() and gui.widget.logic.monitor.job_id == "j1"


def test_connect_offers_to_resume_an_interrupted_job(gui, backend) -> None:
    backend.jobs_list = [{"id": "j0", "kind": "adapt", "state": "succeeded", "updated": "2026-01-01"},
                         {"id": "j1", "kind": "adapt", "state": "interrupted", "updated": "2026-01-02"}]
    connect_remote(gui, backend)
    assert gui.ui.resumeButton.enabled
    assert gui.ui.jobStatusLabel.text == "Job j1 was interrupted. Resume continues it from its last checkpoint."


def test_connect_follows_a_running_job(gui, backend) -> None:
    backend.info["running_job"] = "j1"
    connect_remote(gui, backend)
    assert poll_timer(gui).isActive() and gui.ui.cancelButton.enabled


def test_rollback_activates_the_selected_version_after_confirmation(gui, backend) -> None:
    backend.models = list(MODELS_V2)
    connect_remote(gui, backend)
    gui.ui.versionsTableWidget.selectRow(0)
    gui.env.dialogs.confirm_answer = False
    gui.ui.rollbackButton.click()
    finish(gui)
    assert backend.requests("POST", "/models/1/activate") == []
    gui.env.dialogs.confirm_answer = True
    gui.ui.rollbackButton.click()
    finish(gui)
    assert len(backend.requests("POST", "/models/1/activate")) == 1
    assert "Make v1 the active model?" in gui.env.dialogs.confirmations[-1]


def test_scene_cases_are_paired_and_a_rejected_site_names_case_and_fix(gui, backend) -> None:
    from DAKRSegmentationLib.testing import add_phantom_case

    detail = "case_2.nii.gz: label map has no foreground. Fix: segment the structures or remove the case"
    backend.server.routes[("POST", "/api/v1/sites")] = (422, {"detail": detail})
    connect_remote(gui, backend)
    for index in (1, 2):
        add_phantom_case(gui.scene, f"case {index}", seed=index)
    ui = gui.ui
    ui.siteNameLineEdit.text = "C"
    assert not ui.registerSiteButton.enabled
    ui.findCasesButton.click()
    finish(gui)
    assert ui.casesTableWidget.rowCount() == 2 and ui.casesTableWidget.item(1, 0).text() == "case_2"
    ui.registerSiteButton.click()
    finish(gui)

    assert len(gui.env.dialogs.errors) == 1
    message = gui.env.dialogs.errors[0]
    assert message.startswith("Site 'C' was not registered.")
    assert detail in message and "case case_2 = volume 'case 2' + labels 'case 2 segmentation'" in message
    upload = backend.requests("POST", "/sites")[0]
    assert b'filename="case_1_0000.nii.gz"' in upload.body and b'filename="case_2.nii.gz"' in upload.body


def test_manual_case_pairs_can_be_added_and_removed(gui, backend) -> None:
    from DAKRSegmentationLib.testing import add_phantom_case

    connect_remote(gui, backend)
    volume, segmentation = add_phantom_case(gui.scene, "manual", seed=1)
    ui = gui.ui
    ui.addCaseButton.click()
    finish(gui)
    assert gui.env.dialogs.errors and "Choose an image volume" in gui.env.dialogs.errors[-1]
    ui.caseVolumeSelector.setCurrentNode(volume)
    ui.caseLabelsSelector.setCurrentNode(segmentation)
    ui.addCaseButton.click()
    finish(gui)
    ui.addCaseButton.click()
    finish(gui)
    assert [ui.casesTableWidget.item(r, 0).text() for r in range(2)] == ["manual", "manual_2"]
    ui.casesTableWidget.selectRow(0)
    ui.removeCaseButton.click()
    finish(gui)
    assert ui.casesTableWidget.rowCount() == 1 and gui.widget.scenePairs[0].case_id == "manual_2"


def _nifti(array: np.ndarray, path: Path) -> bytes:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.2, 1.1, 2.5))
    image.SetOrigin((5.0, 6.0, -7.0))
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


AUDIT_DICE_A = [
    {"case_id": "c1", "before": {"shell": 0.95, "core": 0.9}, "after": {"shell": 0.94, "core": 0.92}},
    {"case_id": "c2", "before": {"shell": 0.9, "core": 0.8}, "after": {"shell": 0.7, "core": 0.78}},
    {"case_id": "c3", "before": {"shell": 0.9, "core": 0.8}, "after": None},
]


def audit_backend(backend: Backend, tmp_path: Path) -> dict:
    """Site A with audit cases c1, c2 (files) and c3 (not evaluated by v2); v1 → v2."""
    from DAKRSegmentationLib.testing import phantom_arrays

    files = {}
    for case, seed in (("c1", 1), ("c2", 2)):
        image, labels = phantom_arrays(seed)
        after = labels.copy()
        after[6, 12:16, 12:16] = 0
        files[case] = {key: _nifti(array, tmp_path / f"{case}-{key}.nii.gz")
                       for key, array in (("image", image), ("label", labels), ("1", labels), ("2", after))}
    routes = backend.server.routes
    routes[("GET", "/api/v1/sites/A/audit-dice")] = (200, AUDIT_DICE_A)
    for case in files:
        routes[("GET", f"/api/v1/sites/A/cases/{case}/image")] = (200, files[case]["image"])
        routes[("GET", f"/api/v1/sites/A/cases/{case}/label")] = (200, files[case]["label"])
        routes[("GET", f"/api/v1/sites/A/cases/{case}/prediction")] = lambda r, case=case: (200, files[case][r.query["version"][0]])
        routes[("GET", f"/api/v1/sites/A/cases/{case}/dice")] = (200, {"before": 0.91, "after": 0.87})
        routes[("GET", f"/api/v1/sites/A/cases/{case}/uncertainty")] = (200, uncertainty_map(tmp_path), shift_headers(0.7, 1.2))
    backend.models = list(MODELS_V2)
    return files


def uncertainty_map(tmp_path: Path) -> bytes:
    """A normalised-entropy map on the phantom grid: 0 to 1 along the first image axis."""
    from DAKRSegmentationLib.testing import phantom_arrays

    shape = phantom_arrays(1)[0].shape
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, shape[2], dtype=np.float32), shape).copy()
    return _nifti(ramp, tmp_path / "uncertainty.nii.gz")


def table_rows(table) -> list[list[str]]:
    return [[table.item(row, column).text() for column in range(table.columnCount())] for row in range(table.rowCount())]


def test_audit_table_lists_cases_regressions_first_and_sortable(gui, backend, tmp_path: Path) -> None:
    audit_backend(backend, tmp_path)
    connect_remote(gui, backend)
    table = gui.ui.auditCasesTableWidget
    assert gui.env.dialogs.errors == []
    assert backend.requests("GET", "/sites/A/audit-dice")[-1].query == {"before": ["1"], "after": ["2"]}
    assert table_rows(table) == [["c2", "85.0", "74.0", "-11.0", "shell -20.0"],
                                 ["c1", "92.5", "93.0", "0.5", "shell -1.0"],
                                 ["c3", "85.0", "n/a", "n/a", "n/a"]]
    assert table.sortingEnabled and table.item(0, 3).data(0) == pytest.approx(-11.0)
    assert "shell 90.0 → 70.0 (-20.0) · core 80.0 → 78.0 (-2.0)" == table.item(0, 0).tooltip
    assert table.horizontalHeader().resize_mode == doubles.QHeaderView.Stretch
    assert table.horizontalScrollBarPolicy is not None and gui.ui.resultsTableView.horizontalHeader().resize_mode == doubles.QHeaderView.Stretch


def test_clicking_a_row_loads_lost_and_gained_overlays_in_the_audit_layout(gui, backend, tmp_path: Path) -> None:
    audit_backend(backend, tmp_path)
    connect_remote(gui, backend)
    ui, scene = gui.ui, gui.scene
    ui.auditCasesTableWidget.clickRow(1)
    finish(gui)

    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    assert gui.env.progress_dialogs[-1].labelText == "Loading A / c1 (v1 and v2) ..."
    names = {node.GetName() for node in mrmlio.nodes_of_class(scene, "vtkMRMLSegmentationNode")}
    assert names == {"A c1 ground truth", "A c1 before (v1)", "A c1 after (v2)", "A c1 lost/gained v1-v2"}
    case = gui.widget.logic.session.audit_case
    lost = int((phantom_labels(1)[6, 12:16, 12:16] != 0).sum())
    assert (case.lost_voxels, case.gained_voxels) == (lost, 0)
    assert ui.auditDiceLabel.text == (f"A / c1: Dice v1 91.0 → v2 87.0 · {lost} voxels lost, 0 gained\n"
                                      "shell 95.0 → 94.0 (-1.0) · core 90.0 → 92.0 (+2.0)")
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    views = {name: view_id(scene, name) for name in ("Red", "Yellow", "Green", "1")}
    shown_in = lambda node: set(node.GetDisplayNode().GetViewNodeIDs())  # noqa: E731
    assert shown_in(case.before) == {views["Red"]}
    assert shown_in(case.after) == {views["Yellow"], views["Green"], views["1"]}
    assert shown_in(case.regressions) == set(views.values())
    assert case.after.GetSegmentation().ContainsRepresentation("Closed surface"), "after is shown in 3D"

    ui.showLostCheckBox.click()
    display = case.regressions.GetDisplayNode()
    lost_id = case.regressions.GetSegmentation().GetSegmentIdBySegmentName("lost")
    gained_id = case.regressions.GetSegmentation().GetSegmentIdBySegmentName("gained")
    assert not display.GetSegmentVisibility(lost_id) and display.GetSegmentVisibility(gained_id)
    ui.auditOpacitySlider.value = 25
    assert case.after.GetDisplayNode().GetOpacity() == pytest.approx(0.25)

    gui.widget.enter()
    (shortcut,) = gui.env.shortcuts
    assert shortcut.key == "F"
    shortcut.activate()
    assert ui.flickerButton.checked
    assert shown_in(case.before) == {views["Yellow"], views["Green"], views["1"]} and shown_in(case.after) == {views["Red"]}
    shortcut.activate()
    assert shown_in(case.before) == {views["Red"]}
    gui.widget.exit()
    shortcut.activate()
    assert not ui.flickerButton.checked, "the key does nothing once the module is left"

    ui.previousCaseButton.click()
    finish(gui)
    assert gui.widget.logic.session.audit_case.case_id == "c2"
    assert scene.GetFirstNodeByName("A c1 before (v1)") is None, "the previous case's nodes must be removed"
    assert not ui.previousCaseButton.enabled and ui.nextCaseButton.enabled
    regressions = gui.widget.logic.session.audit_case.regressions
    assert not regressions.GetDisplayNode().GetSegmentVisibility(
        regressions.GetSegmentation().GetSegmentIdBySegmentName("lost")), "the lost toggle holds for the next case"


def test_a_cancelled_audit_load_leaves_the_scene_alone(gui, backend, tmp_path: Path) -> None:
    audit_backend(backend, tmp_path)
    connect_remote(gui, backend)
    backend.server.delay_s = 0.5
    gui.ui.auditCasesTableWidget.clickRow(0)
    gui.env.progress_dialogs[-1].cancel()
    finish(gui)
    assert gui.env.dialogs.errors == [] and gui.widget.logic.session.audit_case is None
    assert mrmlio.nodes_of_class(gui.scene, "vtkMRMLSegmentationNode") == []
    assert gui.ui.jobStatusLabel.text.endswith("cancelled.")


def test_segment_colours_come_from_the_terminologies(gui, backend, tmp_path: Path, monkeypatch) -> None:
    terminology = tmp_path / "terms.json"
    terminology.write_text(json.dumps({
        "SegmentationCategoryTypeContextName": "DAKR test terminology",
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [{
            "CodeMeaning": "Anatomical Structure", "CodingSchemeDesignator": "SCT", "CodeValue": "123037004",
            "Type": [{"CodeMeaning": "Core", "CodingSchemeDesignator": "SCT", "CodeValue": "1",
                      "recommendedDisplayRGBValue": [255, 0, 51]}]}]}}))
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologies.LoadTerminologyFromFile(str(terminology)) == "DAKR test terminology"
    monkeypatch.setattr(slicer.modules, "terminologies", types.SimpleNamespace(logic=lambda: terminologies), raising=False)
    audit_backend(backend, tmp_path)
    connect_remote(gui, backend)
    gui.ui.auditCasesTableWidget.clickRow(0)
    finish(gui)
    case = gui.widget.logic.session.audit_case
    segments = case.after.GetSegmentation()
    core = segments.GetSegment(segments.GetSegmentIdBySegmentName("core"))
    shell = segments.GetSegment(segments.GetSegmentIdBySegmentName("shell"))
    assert core.GetColor() == pytest.approx((1.0, 0.0, 0.2))
    from DAKRSegmentationLib.mrmlio import label_color
    assert shell.GetColor() == pytest.approx(label_color(1)), "no terminology match: the module's own colour"


def test_a_finished_job_is_notified(gui, backend) -> None:
    connect_remote(gui, backend)
    gui.env.main_window.active = False
    gui.ui.adaptButton.click()
    finish(gui)
    for _ in range(2):
        poll_timer(gui).fire()
        finish(gui)
    assert gui.env.main_window.statusBar().messages[-1] == "DAKR job j1: Finished: version 2 is active."
    assert gui.env.tray_messages == ["DAKR job j1: Finished: version 2 is active."]


def view_id(scene, layout_name: str) -> str:
    for class_name in ("vtkMRMLSliceNode", "vtkMRMLViewNode"):
        for node in mrmlio.nodes_of_class(scene, class_name):
            if node.GetLayoutName() == layout_name:
                return node.GetID()
    raise KeyError(layout_name)


def phantom_labels(seed: int):
    from DAKRSegmentationLib.testing import phantom_arrays

    return phantom_arrays(seed)[1]


class PyTorchUtilsLogic:
    """The PyTorch extension's logic as the module uses it; records its install calls."""

    def __init__(self, installed: bool) -> None:
        self.installed = installed
        self.calls: list[tuple[bool, str | None]] = []

    def torchInstalled(self) -> bool:
        return self.installed

    def installTorch(self, askConfirmation: bool = False, torchVersionRequirement: str | None = None, **kwargs):
        self.calls.append((askConfirmation, torchVersionRequirement))
        return types.SimpleNamespace(__version__="2.13.0")


def use_pytorch_extension(monkeypatch, logic: PyTorchUtilsLogic) -> None:
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: logic))


def test_torch_comes_from_the_pytorch_extension_and_an_older_one_is_offered_an_upgrade(gui, monkeypatch) -> None:
    torch_logic = PyTorchUtilsLogic(installed=False)
    use_pytorch_extension(monkeypatch, torch_logic)
    gui.widget.logic.ensureTorch()
    assert torch_logic.calls == [(True, "<3,>=2.13")]

    torch_logic.installed, torch_logic.calls = True, []
    monkeypatch.setattr(gui.widget.logic, "installedTorchVersion", lambda: "2.13.0+cu128")
    gui.widget.logic.ensureTorch()
    assert torch_logic.calls == []

    monkeypatch.setattr(gui.widget.logic, "installedTorchVersion", lambda: "2.4.1+cu121")
    gui.env.dialogs.confirm_answer = False
    with pytest.raises(RuntimeError, match=r"PyTorch 2.4.1\+cu121 is too old for the DAKR backend"):
        gui.widget.logic.ensureTorch()
    assert "older than the DAKR backend was tested with" in gui.env.dialogs.confirmations[-1] and torch_logic.calls == []
    gui.env.dialogs.confirm_answer = True
    gui.widget.logic.ensureTorch()
    assert torch_logic.calls == [(False, "<3,>=2.13")]


FAKE_PIP = """#!/bin/sh
# A Python whose pip lists two packages and, for install, records its arguments and prints progress.
if [ "$5" = "list" ]; then echo '[{{"name": "numpy", "version": "2.3.4"}}, {{"name": "SimpleITK", "version": "2.5.3"}}]'; exit 0; fi
echo "$@" > "{calls}"
echo "Collecting monai"
sleep {pause}
echo "Successfully installed monai-1.6.1"
"""


def fake_pip_python(folder: Path, pause: float = 0.0) -> Path:
    python = folder / "python-with-pip"
    python.write_text(FAKE_PIP.format(calls=folder / "pip-calls.txt", pause=pause))
    python.chmod(0o755)
    return python


def test_an_install_plan_that_changes_installed_packages_is_refused(gui) -> None:
    from DAKRSegmentationLib.install_plan import InstallPlan, PlannedPackage

    plan = InstallPlan([PlannedPackage("monai", "1.6.1", None), PlannedPackage("scipy", "1.17.1", "1.16.3")])
    with pytest.raises(RuntimeError, match="scipy 1.16.3 → 1.17.1"):
        gui.widget.logic.confirmBackendInstall(plan)
    assert gui.env.dialogs.confirmations == []


def test_an_install_plan_that_only_adds_packages_is_confirmed_then_installed_on_a_worker_with_everything_pinned(
        gui, torch_ready, monkeypatch, tmp_path: Path) -> None:
    from DAKRSegmentationLib.install_plan import InstallPlan, PlannedPackage

    plan = InstallPlan([PlannedPackage("monai", "1.6.1", None), PlannedPackage("numpy", "2.3.4", "2.3.4")])
    monkeypatch.setattr(gui.widget.logic, "planBackendInstall", lambda: plan)
    started = []
    monkeypatch.setattr(gui.widget, "startLocalServer", lambda: started.append(True))
    gui.widget.logic.backendPython = str(fake_pip_python(tmp_path, pause=0.5))
    gui.ui.connectButton.click()
    finish(gui)

    assert "monai 1.6.1" in gui.env.dialogs.confirmations[-1] and "numpy" not in gui.env.dialogs.confirmations[-1]
    assert gui.env.dialogs.errors == [] and started == [True]
    assert gui.env.progress_dialogs[-1].labelText == "Installing: Successfully installed monai-1.6.1"
    arguments = (tmp_path / "pip-calls.txt").read_text().split()
    assert arguments[:7] == ["-m", "pip", "--disable-pip-version-check", "--no-input", "install", "-c", arguments[6]]
    assert any(argument.startswith("monai<2,>=") for argument in arguments[7:])
    assert not any(argument.startswith("torch") for argument in arguments[7:])
    assert Path(arguments[6]).read_text().split() == ["numpy==2.3.4", "simpleitk==2.5.3"]

    gui.env.dialogs.confirm_answer = False
    gui.ui.connectButton.click()
    finish(gui)
    assert "Required Python packages are missing" in gui.env.dialogs.errors[-1] and started == [True]


def test_an_install_can_be_cancelled(gui, tmp_path: Path) -> None:
    from DAKRSegmentationLib.install_plan import install

    python = fake_pip_python(tmp_path, pause=5)
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="was cancelled"):
        install(str(python), ["monai"], tmp_path / "c.txt", lines.append, lambda: bool(lines))
    assert lines == ["Collecting monai"] and time.monotonic() - start < 4


def test_missing_pytorch_extension_is_explained(gui, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    gui.ui.connectButton.click()
    finish(gui)
    assert len(gui.env.dialogs.errors) == 1 and "install 'PyTorch' from the Extensions Manager" in gui.env.dialogs.errors[0]
    assert gui.env.unhandled == [] and not poll_timer(gui).isActive()


@pytest.fixture
def torch_ready(monkeypatch, gui):
    """Torch installed at the tested version and nothing left to install."""
    from DAKRSegmentationLib.install_plan import InstallPlan

    use_pytorch_extension(monkeypatch, PyTorchUtilsLogic(installed=True))
    monkeypatch.setattr(gui.widget.logic, "installedTorchVersion", lambda: "2.13.0")
    monkeypatch.setattr(gui.widget.logic, "planBackendInstall", lambda: InstallPlan([]))


def start_local(gui, tmp_path: Path, serve: str | None = None) -> None:
    from stand_in_python import info_server_command, stand_in_python

    gui.widget.logic.backendPython = str(stand_in_python(tmp_path, serve=serve or info_server_command(tmp_path)))
    gui.ui.storePathLineEdit.currentPath = str(tmp_path / "store")
    gui.ui.connectButton.click()


def test_local_backend_is_started_on_a_worker_and_stopped_on_disconnect(gui, torch_ready, tmp_path: Path) -> None:
    start_local(gui, tmp_path)
    assert not gui.ui.connectButton.enabled and gui.widget.tasks.busy("connect")
    finish(gui)

    backend = gui.widget.logic.localBackend
    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0] == f"-m dakr init {tmp_path / 'store'}" and f"--parent-pid {os.getpid()}" in calls[2]
    assert gui.ui.backendStatusLabel.text == f"Connected to {backend.url} · API 1.0 · device cpu (CPU)"
    assert gui.ui.adaptCollapsibleButton.enabled
    assert [dialog.labelText for dialog in gui.env.progress_dialogs] == [
        "Checking the backend's Python requirements (pip dry run) ...", "Starting the local backend ..."]
    assert not any(dialog.visible for dialog in gui.env.progress_dialogs)
    lock = json.loads((tmp_path / "store" / ".dakr-slicer-server.json").read_text())
    assert lock == {"url": backend.url, "token": backend.token, "pid": backend.process.pid}
    assert stat.S_IMODE((tmp_path / "store" / ".dakr-slicer-server.json").stat().st_mode) == 0o600

    gui.ui.disconnectButton.click()
    assert gui.widget.logic.session is None and gui.widget.tasks.busy("disconnect")
    finish(gui)
    assert not backend.running() and gui.ui.backendStatusLabel.text == "Not connected." and gui.ui.connectButton.enabled
    assert not (tmp_path / "store" / ".dakr-slicer-server.json").exists()


def test_a_second_slicer_reuses_the_running_server_of_the_store(gui, torch_ready, tmp_path: Path) -> None:
    from DAKRSegmentationLib.server_lock import ServerLock, write_lock

    other = Backend()
    try:
        write_lock(tmp_path / "store", ServerLock(other.server.url, "t0ken", os.getpid()))
        start_local(gui, tmp_path)
        finish(gui)
        assert gui.env.dialogs.errors == []
        assert gui.ui.backendStatusLabel.text.endswith("· server shared with another Slicer")
        assert gui.widget.logic.session.client.base_url == other.server.url
        assert gui.widget.logic.localBackend is None, "a reused server belongs to the module that started it"
        assert not (tmp_path / "calls.txt").exists(), "no second server was started"
        assert other.requests("GET", "/info")[0].headers["Authorization"] == "Bearer t0ken"
    finally:
        other.server.close()


def test_a_stale_lock_is_ignored(tmp_path: Path) -> None:
    from DAKRSegmentationLib.server_lock import ServerLock, running_server, write_lock

    assert running_server(tmp_path) is None
    write_lock(tmp_path, ServerLock("http://127.0.0.1:9", "x", os.getpid()))
    assert running_server(tmp_path) is None, "nothing answers there"
    (tmp_path / ".dakr-slicer-server.json").write_text("{not json")
    assert running_server(tmp_path) is None


def test_disconnect_asks_before_stopping_a_running_job_and_the_server_log_is_streamed(gui, torch_ready, tmp_path: Path) -> None:
    start_local(gui, tmp_path)
    finish(gui)
    backend = gui.widget.logic.localBackend
    with backend.log_file.open("a") as log:
        log.write("INFO: Application startup complete.\n")
    gui.widget.logic.followJob("j1")
    gui.widget.pollTimer.start()
    gui.widget.runInBackground("probe", lambda control: None, lambda _: None, "probe")
    finish(gui)
    assert "[server] INFO: Application startup complete." in gui.ui.jobLogTextEdit.toPlainText()

    gui.env.dialogs.confirm_answer = False
    gui.ui.disconnectButton.click()
    assert "Resume continues it from its last checkpoint" in gui.env.dialogs.confirmations[-1]
    assert backend.running() and gui.widget.logic.session is not None
    gui.env.dialogs.confirm_answer = True
    gui.ui.disconnectButton.click()
    finish(gui)
    assert not backend.running() and gui.widget.logic.session is None


def test_a_local_backend_that_exits_is_reported(gui, torch_ready, tmp_path: Path) -> None:
    from stand_in_python import stand_in_python

    gui.widget.logic.backendPython = str(stand_in_python(tmp_path))
    gui.ui.storePathLineEdit.currentPath = str(tmp_path / "store")
    gui.ui.connectButton.click()
    finish(gui)
    assert len(gui.env.dialogs.errors) == 1
    assert "Cannot connect to the DAKR backend." in gui.env.dialogs.errors[0]
    assert "exit code 3" in gui.env.dialogs.errors[0] and "dakr serve: port in use" in gui.env.dialogs.errors[0]
    assert gui.widget.logic.localBackend is None and gui.ui.connectButton.enabled


def test_site_from_a_folder_is_registered_and_selected_for_adapting(gui, backend, tmp_path: Path) -> None:
    backend.server.routes[("POST", "/api/v1/sites/from-path")] = (201, {**SITES[1], "name": "B"})
    connect_remote(gui, backend)
    ui = gui.ui
    ui.casesSourceComboBox.currentIndex = 1
    ui.siteFolderPathLineEdit.currentPath = str(tmp_path)
    ui.siteNameLineEdit.text = "B"
    assert ui.registerSiteButton.enabled
    ui.registerSiteButton.click()
    finish(gui)
    assert json.loads(backend.requests("POST", "/sites/from-path")[0].body) == {"name": "B", "path": str(tmp_path.resolve())}
    assert ui.jobStatusLabel.text == "Site B registered: 3 training and 1 audit cases. Ready to adapt."
    assert ui.adaptSiteComboBox.currentText == "B" and gui.env.dialogs.errors == []


#: The longest a widget call may take on the GUI thread while every backend answer takes SLOW_S.
GUI_BOUND_S = 0.25
SLOW_S = 1.0


def test_no_widget_call_waits_on_a_slow_backend(gui, backend, tmp_path: Path) -> None:
    from DAKRSegmentationLib.testing import add_phantom_case, phantom_arrays

    durations: dict[str, float] = {}

    callbacks: dict[str, float] = {}

    def timed(label: str, action) -> None:
        start = time.monotonic()
        action()
        durations[label] = time.monotonic() - start
        deadline = time.monotonic() + 30.0
        while gui.widget.tasks.busy():
            assert time.monotonic() < deadline, f"{label}: background tasks still running"
            time.sleep(0.01)
            start = time.monotonic()
            gui.widget.taskTimer.fire()
            callbacks[label] = max(callbacks.get(label, 0.0), time.monotonic() - start)

    files = {key: _nifti(array, tmp_path / f"{key}.nii.gz") for key, array in
             zip(("image", "label"), phantom_arrays(1))}
    routes = backend.server.routes
    routes[("GET", "/api/v1/sites/A/cases")] = (200, [{"case_id": "a2", "split": "audit"}])
    routes[("GET", "/api/v1/sites/A/cases/a2/image")] = (200, files["image"])
    for kind in ("label", "prediction"):
        routes[("GET", f"/api/v1/sites/A/cases/a2/{kind}")] = (200, files["label"])
    routes[("GET", "/api/v1/sites/A/cases/a2/dice")] = (200, {"before": 0.9, "after": 0.9})
    routes[("GET", "/api/v1/sites/A/cases/a2/uncertainty")] = (200, uncertainty_map(tmp_path), shift_headers(2.5, 1.2))
    routes[("POST", "/api/v1/sites")] = (201, {**SITES[1], "name": "C"})
    routes[("GET", "/api/v1/sites/A/check")] = (200, {**SITE_CHECK, "site": "A"})
    routes[("POST", "/api/v1/rank")] = (200, RANKED)
    backend.models = list(MODELS_V2)
    backend.server.delay_s = SLOW_S
    ui = gui.ui
    ui.backendModeComboBox.currentIndex = 1
    ui.remoteUrlLineEdit.text = backend.server.url
    timed("connect", ui.connectButton.click)
    assert gui.widget.logic.session is not None and ui.auditCasesTableWidget.rowCount() == 1
    ui.auditCasesTableWidget.selectRow(0)
    timed("load case", ui.loadCaseButton.click)
    assert gui.widget.logic.session.audit_case is not None, (gui.env.dialogs.errors, ui.loadCaseButton.enabled)
    assert gui.widget.logic.session.audit_case.uncertainty is not None and gui.ui.caseShiftLabel.text.startswith("Out of")
    timed("show results", ui.showResultsButton.click)
    for index in (1, 2):
        add_phantom_case(gui.scene, f"case {index}", seed=index)
    ui.findCasesButton.click()
    ui.siteNameLineEdit.text = "C"
    timed("register site", ui.registerSiteButton.click)
    assert ui.jobStatusLabel.text.startswith("Site C registered")
    assert gui.ui.siteCheckLabel.text.startswith("Site C (v1): Looks like site A")
    timed("check shift", gui.ui.checkShiftButton.click)
    doubles.QFileDialog.CHOSEN[:] = [str(tmp_path / "image.nii.gz")]
    timed("rank", gui.ui.rankButton.click)
    assert gui.ui.rankTableWidget.rowCount() == 2
    timed("adapt", ui.adaptButton.click)
    timed("poll", poll_timer(gui).fire)
    timed("cancel", ui.cancelButton.click)
    gui.widget.pollTimer.stop()
    ui.versionsTableWidget.selectRow(0)
    timed("rollback", ui.rollbackButton.click)
    timed("disconnect", ui.disconnectButton.click)

    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    slow = {label: round(seconds, 3) for label, seconds in durations.items() if seconds > GUI_BOUND_S}
    assert slow == {}, f"GUI-thread calls slower than {GUI_BOUND_S} s while the backend takes {SLOW_S} s: {slow}"
    assert len(durations) == 11
    waiting = {label: round(seconds, 3) for label, seconds in callbacks.items() if seconds >= SLOW_S}
    assert waiting == {}, f"callbacks on the GUI thread that waited on the backend (answers take {SLOW_S} s): {waiting}"


def test_a_timeout_names_the_slow_prediction(monkeypatch, tmp_path: Path) -> None:
    from DAKRSegmentationLib import client as client_module

    monkeypatch.setattr(client_module, "PREDICTION_TIMEOUT_S", 0.2)
    server = FakeBackend({("GET", "/api/v1/sites/A/cases/c1/prediction"): (200, b"x")})
    server.delay_s = 1.0
    try:
        client = client_module.BackendClient(server.url, timeout_s=0.2)
        with pytest.raises(client_module.BackendTimeoutError, match=r"did not answer GET .*prediction within 0.2 s \(it "
                                                                    r"computes the prediction of v3 for c1 on request"):
            client.download_case_file("A", "c1", "prediction", tmp_path / "p.nii.gz", 3)
    finally:
        server.close()


def test_the_self_test_runs_only_its_light_part_unless_asked(monkeypatch, scene, tmp_path: Path) -> None:
    env = doubles.install(monkeypatch, scene, tmp_path / "slicer-temp")
    monkeypatch.delenv("DAKR_HEAVY_SELF_TEST", raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)
    module = importlib.import_module("DAKRSegmentation")
    ran = []
    monkeypatch.setattr(module.DAKRSegmentationTest, "test_EndToEnd", lambda self: ran.append("heavy"))

    module.DAKRSegmentationTest().runTest()
    assert ran == [] and env.dialogs.confirmations == [] and env.unhandled == []
    assert scene.GetFirstNodeByName("light segmentation") is not None, "the light part ran"

    monkeypatch.setenv("DAKR_HEAVY_SELF_TEST", "1")
    module.DAKRSegmentationTest().runTest()
    assert ran == ["heavy"]
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)


def test_reload_with_a_running_job_asks_and_can_keep_the_server_for_the_next_connect(gui, torch_ready, tmp_path: Path) -> None:
    start_local(gui, tmp_path)
    finish(gui)
    backend = gui.widget.logic.localBackend
    gui.widget.logic.followJob("j1")
    gui.env.dialogs.confirm_answer = False
    gui.widget.cleanup()
    assert "Cancel: keep the backend and the job running" in gui.env.dialogs.confirmations[-1]
    assert backend.running() and (tmp_path / "store" / ".dakr-slicer-server.json").exists()

    reloaded = gui.module.DAKRSegmentationWidget()
    reloaded.setup()
    reloaded.logic.backendPython = gui.widget.logic.backendPython
    reloaded.logic.installedTorchVersion = gui.widget.logic.installedTorchVersion
    reloaded.logic.planBackendInstall = gui.widget.logic.planBackendInstall
    reloaded.ui.storePathLineEdit.currentPath = str(tmp_path / "store")
    reloaded.ui.connectButton.click()
    gui.widget = reloaded
    finish(gui)
    assert reloaded.ui.backendStatusLabel.text.endswith("· server shared with another Slicer")
    assert reloaded.logic.session.client.base_url == backend.url
    backend.stop()
    reloaded.cleanup()


def test_reload_without_a_job_stops_the_server(gui, torch_ready, tmp_path: Path) -> None:
    start_local(gui, tmp_path)
    finish(gui)
    backend = gui.widget.logic.localBackend
    gui.widget.cleanup()
    backend.process.wait(10)
    assert gui.env.dialogs.confirmations == [] and not (tmp_path / "store" / ".dakr-slicer-server.json").exists()


def register_folder_site(gui, backend: Backend, tmp_path: Path) -> None:
    backend.server.routes[("POST", "/api/v1/sites/from-path")] = (201, {**SITES[1], "name": "B"})
    connect_remote(gui, backend)
    gui.ui.casesSourceComboBox.currentIndex = 1
    gui.ui.siteFolderPathLineEdit.currentPath = str(tmp_path)
    gui.ui.siteNameLineEdit.text = "B"
    gui.ui.registerSiteButton.click()
    finish(gui)


def test_registering_a_site_shows_its_shift_verdict(gui, backend, tmp_path: Path) -> None:
    register_folder_site(gui, backend, tmp_path)
    label = gui.ui.siteCheckLabel
    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    assert len(backend.requests("GET", "/sites/B/check")) == 1
    assert label.text == ("Site B (v1): Looks like site A (median shift 0.80, threshold 1.20); current model Dice 81.0 vs "
                          "84.0 on known sites — adaptation optional.")
    assert "#2e7d32" in label.styleSheet

    backend.server.routes[("GET", "/api/v1/sites/B/check")] = (200, {
        **SITE_CHECK, "unlike_known": True, "adapt_recommended": True,
        "verdict": "unlike every known site (median shift 2.10 > threshold 1.20); current model Dice 43.0 — adapt"})
    assert gui.ui.adaptSiteComboBox.currentText == "B" and gui.ui.checkShiftButton.enabled
    gui.ui.checkShiftButton.click()
    finish(gui)
    assert label.text == "Site B (v1): Unlike every known site (median shift 2.10 > threshold 1.20); current model Dice 43.0 — adapt."
    assert "#c62828" in label.styleSheet and len(backend.requests("GET", "/sites/B/check")) == 2


def test_a_shift_check_without_a_model_says_so_without_a_dialog(gui, backend, tmp_path: Path) -> None:
    backend.server.routes[("GET", "/api/v1/sites/B/check")] = (409, {"detail": "no model yet. Fix: adapt to a first site"})
    register_folder_site(gui, backend, tmp_path)
    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    assert gui.ui.siteCheckLabel.text.startswith("No model yet: the shift check compares")

    backend.server.routes[("GET", "/api/v1/sites/B/check")] = (500, {"detail": "store is read-only"})
    gui.ui.checkShiftButton.click()
    finish(gui)
    assert gui.env.dialogs.errors == ["Cannot check the shift of site B.\n\nGET /sites/B/check failed (500): store is read-only"]
    assert gui.ui.siteCheckLabel.text == "The shift of site B was not checked."


@pytest.mark.parametrize(("score", "text", "color"), [
    (2.5, "Out of distribution: shift 2.50 > threshold 1.20 — check this result (nearest known site: A)", "#c62828"),
    (0.7, "In distribution (shift 0.70 ≤ 1.20; nearest known site: A)", "#2e7d32"),
])
def test_a_loaded_case_shows_its_shift_flag_and_uncertainty_map(gui, backend, tmp_path: Path, score: float, text: str,
                                                                 color: str) -> None:
    audit_backend(backend, tmp_path)
    backend.server.routes[("GET", "/api/v1/sites/A/cases/c1/uncertainty")] = (200, uncertainty_map(tmp_path),
                                                                            shift_headers(score, 1.2))
    connect_remote(gui, backend)
    ui, scene, widget = gui.ui, gui.scene, gui.widget
    ui.auditCasesTableWidget.clickRow(1)
    finish(gui)

    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    (request,) = backend.requests("GET", "/sites/A/cases/c1/uncertainty")
    assert request.query == {"version": ["2"]} and request.body == b""
    assert [r for r in backend.server.requests if r.method == "POST"] == [], "the stored case is not uploaded again"
    case = widget.logic.session.audit_case
    assert ui.caseShiftLabel.text == text and color in ui.caseShiftLabel.styleSheet
    assert case.shift.score == score
    assert case.after.GetAttribute("DAKR.ShiftScore") == f"{score:.4f}"
    assert case.after.GetAttribute("DAKR.OutOfDistribution") == ("true" if score > 1.2 else "false")

    uncertainty = scene.GetFirstNodeByName("A c1 uncertainty (v2)")
    assert uncertainty is case.uncertainty and uncertainty.IsA("vtkMRMLScalarVolumeNode")
    values = slicer.util.arrayFromVolume(uncertainty)
    assert values.shape == slicer.util.arrayFromVolume(case.image).shape
    np.testing.assert_allclose(values[0, 0], np.linspace(0.0, 1.0, values.shape[2]), atol=1e-6)
    display = uncertainty.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert display.GetColorNode().GetName() == mrmlio.HEAT_COLORS

    composites = [view_node(scene, "vtkMRMLSliceCompositeNode", name) for name in ("Red", "Yellow", "Green")]
    assert all(c.GetForegroundVolumeID() is None for c in composites), "the map is shown only when asked"
    assert ui.showUncertaintyCheckBox.enabled
    ui.showUncertaintyCheckBox.click()
    assert all(c.GetForegroundVolumeID() == uncertainty.GetID() and c.GetForegroundOpacity() == 0.5 for c in composites)

    ui.previousCaseButton.click()
    finish(gui)
    assert scene.GetFirstNodeByName("A c1 uncertainty (v2)") is None, "the previous case's map goes with it"
    assert all(c.GetForegroundVolumeID() == widget.logic.session.audit_case.uncertainty.GetID() for c in composites)
    work = Path(gui.env.app.temporaryPath)
    assert list(work.rglob("*uncertainty*")) == [], "no file is left behind"


def test_a_failed_case_shift_check_leaves_the_case_shown(gui, backend, tmp_path: Path) -> None:
    audit_backend(backend, tmp_path)
    backend.server.routes[("GET", "/api/v1/sites/A/cases/c2/uncertainty")] = (200, b"a map without a verdict")
    connect_remote(gui, backend)
    gui.ui.auditCasesTableWidget.clickRow(0)
    finish(gui)
    case = gui.widget.logic.session.audit_case
    assert case is not None and case.shift is None and case.uncertainty is None
    assert gui.ui.caseShiftLabel.text.startswith(
        "The shift of A / c2 was not checked: GET /sites/A/cases/c2/uncertainty answered without")
    assert list(Path(gui.env.app.temporaryPath).rglob("*uncertainty*")) == [], "no file is left behind"
    assert gui.env.dialogs.errors == [] and not gui.ui.showUncertaintyCheckBox.enabled


def view_node(scene, class_name: str, layout_name: str):
    return next(node for node in mrmlio.nodes_of_class(scene, class_name) if node.GetLayoutName() == layout_name)


RANKED = [{"rank": 2, "path": "a.nii.gz", "uncertainty": 0.2, "novelty": 0.1, "score": 0.15, "reason": "close to b.nii.gz"},
          {"rank": 1, "path": "b.nii.gz", "uncertainty": 0.4, "novelty": 0.9, "score": 0.65, "reason": "most uncertain"}]


def test_unlabelled_images_are_uploaded_with_progress_and_shown_in_labelling_order(gui, backend, tmp_path: Path) -> None:
    backend.server.routes[("POST", "/api/v1/rank")] = (200, RANKED)
    connect_remote(gui, backend)
    ui = gui.ui
    assert ui.rankButton.enabled and not ui.rankTableWidget.visible
    ui.rankButton.click()
    assert gui.env.unhandled == [] and backend.requests("POST", "/rank") == [], "Cancel in the file dialog sends nothing"

    images = []
    for name in ("a", "b"):
        images.append(tmp_path / f"{name}.nii.gz")
        images[-1].write_bytes(name.encode() * 5000)
    doubles.QFileDialog.CHOSEN[:] = [str(path) for path in images]
    ui.rankButton.click()
    assert gui.env.progress_dialogs[-1].labelText == "Ranking 2 images ..."
    finish(gui)

    assert gui.env.dialogs.errors == [] and gui.env.unhandled == []
    (request,) = backend.requests("POST", "/rank")
    assert b'filename="a.nii.gz"' in request.body and b'filename="b.nii.gz"' in request.body
    assert ui.rankTableWidget.visible
    assert table_rows(ui.rankTableWidget) == [["1", "b.nii.gz", "0.650", "most uncertain"],
                                           ["2", "a.nii.gz", "0.150", "close to b.nii.gz"]]
    assert ui.rankTableWidget.item(0, 0).tooltip == "uncertainty 0.400 · novelty 0.900"


def test_ranking_without_a_model_names_the_cause_and_images_with_one_name_are_refused(gui, backend, tmp_path: Path) -> None:
    backend.server.routes[("POST", "/api/v1/rank")] = (409, {"detail": "there is no model yet: register a site and run an adapt job first"})
    connect_remote(gui, backend)
    image = tmp_path / "a.nii.gz"
    image.write_bytes(b"a")
    doubles.QFileDialog.CHOSEN[:] = [str(image)]
    gui.ui.rankButton.click()
    finish(gui)
    assert gui.env.dialogs.errors == ["The 1 images were not ranked.\n\nPOST /rank failed (409): there is no model yet: "
                                      "register a site and run an adapt job first"]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.nii.gz").write_bytes(b"a")
    doubles.QFileDialog.CHOSEN[:] = [str(image), str(tmp_path / "x" / "a.nii.gz")]
    gui.ui.rankButton.click()
    finish(gui)
    assert "more than one image is named a.nii.gz" in gui.env.dialogs.errors[-1] and len(backend.requests("POST", "/rank")) == 1
