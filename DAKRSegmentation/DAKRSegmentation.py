"""DAKR Segmentation: adapt a segmentation model to a new clinical site without forgetting the
previous ones, and audit the forgetting case by case.

Module / Widget / Logic / Test of the Slicer module. The work itself (MRML ⇄ files, the backend
client, job polling, tables, audit cases) lives in ``DAKRSegmentationLib`` without Qt; this file
wires it to the GUI and to the Slicer application.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from DAKRSegmentationLib import audit, gate, mrmlio
from DAKRSegmentationLib.backend import (
    LocalBackend,
    backend_location,
    backend_requirements,
    missing_requirements,
    shared_package_constraints,
    torch_requirement,
)
from DAKRSegmentationLib.client import BackendClient, JobConflictError
from DAKRSegmentationLib.jobs import JobMonitor, JobUpdate, format_event
from DAKRSegmentationLib.results import VersionComparison
from DAKRSegmentationLib.session import STRATEGIES, AdaptSettings, Session
from DAKRSegmentationLib.testing import TINY_TRAINING, add_phantom_case

BACKEND_LOCAL = "local"
BACKEND_REMOTE = "remote"
CASES_FROM_SCENE = "loaded scene nodes"
CASES_FROM_FOLDER = "nnU-Net raw folder"
#: Period of the QTimer that polls the backend (job progress, local start-up).
POLL_INTERVAL_MS = 1000
#: How long a local backend may take to answer after it was started (first start imports torch).
LOCAL_START_TIMEOUT_S = 300


@contextmanager
def reportErrors(message: str) -> Iterator[None]:
    """Run a GUI action with a wait cursor; an exception becomes an error dialog (message, cause,
    details) instead of escaping the Qt slot."""
    try:
        with slicer.util.WaitCursor():
            yield
    except Exception as error:
        logging.exception(message)
        slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=traceback.format_exc())


class DAKRSegmentation(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DAKR Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DAKRSegmentation contributors"]
        self.parent.helpText = (
            "Adapt the segmentation model to a new clinical site (continual learning with dual-alignment "
            "knowledge retention, DAKR) and audit, on stored cases of every earlier site, how the "
            "segmentation changed. Training runs in a separate backend process, local or remote."
        )
        self.parent.acknowledgementText = (
            "DAKR backend: PyTorch and MONAI. Torch is installed through the PyTorch extension."
        )


@parameterNodeWrapper
class DAKRSegmentationParameterNode:
    """GUI state saved with the scene (the remote token is deliberately not part of it)."""

    backendMode: Annotated[str, Choice([BACKEND_LOCAL, BACKEND_REMOTE])] = BACKEND_LOCAL
    storePath: Path = Path.home() / "DAKRSegmentationStore"
    remoteUrl: str = "http://127.0.0.1:8765"
    siteName: str = ""
    casesSource: Annotated[str, Choice([CASES_FROM_SCENE, CASES_FROM_FOLDER])] = CASES_FROM_SCENE
    siteFolder: Path = Path.home()
    strategy: Annotated[str, Choice(list(STRATEGIES))] = "dakr"
    epochs: Annotated[int, WithinRange(1, 1000)] = AdaptSettings.epochs
    bufferSamples: Annotated[int, WithinRange(0, 100000)] = AdaptSettings.buffer_samples
    lambdaCna: Annotated[float, WithinRange(0.0, 100.0)] = AdaptSettings.lambda_cna
    lambdaCra: Annotated[float, WithinRange(0.0, 100.0)] = AdaptSettings.lambda_cra
    showGroundTruth: bool = True
    showChanges: bool = True
    #: The adapt job being followed; kept so a reloaded module can follow or resume it.
    jobId: str = ""
    resultsTable: vtkMRMLTableNode
    diceTable: vtkMRMLTableNode
    diceChart: vtkMRMLPlotChartNode


class DAKRSegmentationLogic(ScriptedLoadableModuleLogic):
    """Backend lifecycle and Slicer-side glue around :class:`DAKRSegmentationLib.session.Session`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session: Session | None = None
        self.localBackend: LocalBackend | None = None
        self.monitor: JobMonitor | None = None
        self.moduleDir = Path(__file__).resolve().parent
        #: Python that runs ``-m dakr serve`` (``None``: Slicer's PythonSlicer).
        self.backendPython: str | None = None

    def getParameterNode(self) -> DAKRSegmentationParameterNode:
        return DAKRSegmentationParameterNode(super().getParameterNode())

    # -- backend ----------------------------------------------------------------------------------
    def ensureBackendDependencies(self) -> None:
        """Install torch via the PyTorch extension and the backend's other requirements with pip
        (main thread), pinning the numpy, SimpleITK and torch that are already there."""
        _, pyproject = backend_location(self.moduleDir)
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                "DAKR needs the PyTorch extension. Fix: install 'PyTorch' from the Extensions Manager and restart Slicer."
            ) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=torch_requirement(pyproject)) is None:
                raise RuntimeError("PyTorch is required to run the backend locally. Fix: accept its installation, or use a remote backend.")
        missing = missing_requirements(backend_requirements(pyproject))
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(
                "The DAKR backend needs these Python packages:\n\n" + "\n".join(missing) + "\n\nInstall them now?",
                "DAKR Segmentation"):
            raise RuntimeError("Required Python packages are missing. Fix: accept their installation, or use a remote backend.")
        constraints = Path(slicer.app.temporaryPath) / "DAKRSegmentation" / "constraints.txt"
        constraints.parent.mkdir(parents=True, exist_ok=True)
        constraints.write_text(shared_package_constraints(), encoding="utf-8")
        slicer.util.pip_install(["-c", str(constraints), *missing])

    def pythonExecutable(self) -> str:
        """``PythonSlicer`` (Slicer's own Python), unless :attr:`backendPython` names another one."""
        python = self.backendPython or shutil.which("PythonSlicer")
        if not python:
            raise RuntimeError("PythonSlicer was not found. Fix: start Slicer through its launcher, or use a remote backend.")
        return python

    def startLocalBackend(self, store: Path) -> LocalBackend:
        """Start ``dakr serve`` on loopback for ``store`` (returns at once; poll ``ready()``)."""
        self.disconnect()
        pythonpath, _ = backend_location(self.moduleDir)
        runDir = Path(slicer.app.temporaryPath) / "DAKRSegmentation" / "backend"
        self.localBackend = LocalBackend(self.pythonExecutable(), Path(store), pythonpath, runDir,
                                         environment=slicer.util.startupEnvironment())
        self.localBackend.start()
        return self.localBackend

    def connect(self, url: str, token: str | None) -> Session:
        """Connect to a backend; refuses one with an unsupported API major version."""
        return self._openSession(BackendClient(url, token))

    def connectLocal(self) -> Session:
        """Connect to the local backend this logic started."""
        return self._openSession(self.localBackend.client())

    def _openSession(self, client: BackendClient) -> Session:
        self.session = Session(client, slicer.mrmlScene, Path(slicer.app.temporaryPath) / "DAKRSegmentation")
        return self.session

    def disconnect(self) -> None:
        """Forget the session and stop the local backend, if this module started one."""
        self.monitor = None
        self.session = None
        if self.localBackend is not None:
            self.localBackend.stop()
            self.localBackend = None

    def requireSession(self) -> Session:
        if self.session is None:
            raise RuntimeError("Not connected to a backend. Fix: connect in the Backend section first.")
        return self.session

    # -- jobs -------------------------------------------------------------------------------------
    def startAdapt(self, site: str, strategy: str, settings: AdaptSettings) -> JobMonitor:
        self.monitor = self.requireSession().start_adapt(site, strategy, settings)
        return self.monitor

    def followJob(self, jobId: str) -> JobMonitor:
        self.monitor = JobMonitor(self.requireSession().client, jobId)
        return self.monitor

    def pollJob(self) -> JobUpdate:
        return self.monitor.poll()

    # -- results ----------------------------------------------------------------------------------
    def showResults(self, parameterNode: DAKRSegmentationParameterNode, before: int, after: int) -> VersionComparison:
        """Fill the Dice table and plot and show them in a table + plot layout."""
        scene = slicer.mrmlScene
        if parameterNode.resultsTable is None:
            parameterNode.resultsTable = scene.AddNewNodeByClass("vtkMRMLTableNode", "DAKR Dice before vs after")
        if parameterNode.diceTable is None:
            parameterNode.diceTable = scene.AddNewNodeByClass("vtkMRMLTableNode", "DAKR Dice across versions")
        if parameterNode.diceChart is None:
            parameterNode.diceChart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DAKR Dice per site")
        comparison = self.requireSession().update_results(
            before, after, parameterNode.resultsTable, parameterNode.diceTable, parameterNode.diceChart)
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        applicationLogic = slicer.app.applicationLogic()
        selection = applicationLogic.GetSelectionNode()
        selection.SetActiveTableID(parameterNode.resultsTable.GetID())
        selection.SetActivePlotChartID(parameterNode.diceChart.GetID())
        applicationLogic.PropagateTableSelection()
        applicationLogic.PropagatePlotChartSelection()
        return comparison

    # -- audit ------------------------------------------------------------------------------------
    def loadAuditCase(self, site: str, caseId: str, before: int, after: int) -> audit.AuditCase:
        """Load a stored case with both versions' segmentations into linked side-by-side views."""
        case = self.requireSession().load_audit_case(site, caseId, before, after)
        audit.show_side_by_side(slicer.mrmlScene, case)
        slicer.util.resetSliceViews()
        audit.centre_views(slicer.mrmlScene, case)
        return case


class DAKRSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: backend, model versions, new site, adapt, results, audit."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: DAKRSegmentationLogic | None = None
        self._parameterNode: DAKRSegmentationParameterNode | None = None
        self._parameterNodeGuiTag = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.scenePairs: list[mrmlio.ScenePair] = []
        self.models: list[dict] = []
        self.versionIds: list[int] = []
        self.auditCaseIds: list[str] = []
        #: Whether the job in the parameter node's ``jobId`` can be resumed.
        self.jobResumable = False
        #: ``time.monotonic()`` by which a starting local backend must answer.
        self.localStartDeadline = 0.0

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DAKRSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DAKRSegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.pollTimer.connect("timeout()", self.onPollTimer)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.disconnectButton.connect("clicked(bool)", self.onDisconnect)
        self.ui.rollbackButton.connect("clicked(bool)", self.onRollback)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.findCasesButton.connect("clicked(bool)", self.onFindCases)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.registerSiteButton.connect("clicked(bool)", self.onRegisterSite)
        self.ui.adaptButton.connect("clicked(bool)", self.onAdapt)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResults)
        self.ui.auditSiteComboBox.connect("currentIndexChanged(int)", self.onAuditSiteChanged)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCase)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.setupGateWidgets()

        self.initializeParameterNode()
        self.updateGUIFromState()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop polling and the local backend."""
        self.pollTimer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.disconnect()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self.logic.session is not None:
            self.logic.session.audit_case = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: DAKRSegmentationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
            self.updateGUIFromState()

    # -- GUI state --------------------------------------------------------------------------------
    def updateGUIFromState(self, caller=None, event=None) -> None:
        """Show, enable and label widgets from the parameter node and the connection state."""
        params = self._parameterNode
        if params is None:
            return
        local = params.backendMode == BACKEND_LOCAL
        self.ui.storePathLineEdit.visible = local
        self.ui.storePathLabel.visible = local
        for widget in (self.ui.remoteUrlLineEdit, self.ui.remoteUrlLabel, self.ui.remoteTokenLineEdit, self.ui.remoteTokenLabel):
            widget.visible = not local
        fromScene = params.casesSource == CASES_FROM_SCENE
        self.ui.sceneCasesWidget.visible = fromScene
        self.ui.folderCasesWidget.visible = not fromScene

        connected = self.logic.session is not None
        following = self.pollTimer.isActive() and self.logic.monitor is not None
        self.ui.connectButton.enabled = not connected and not self.pollTimer.isActive()
        self.ui.disconnectButton.enabled = connected or self.logic.localBackend is not None
        for section in (self.ui.modelCollapsibleButton, self.ui.newSiteCollapsibleButton, self.ui.adaptCollapsibleButton,
                        self.ui.resultsCollapsibleButton, self.ui.auditCollapsibleButton):
            section.enabled = connected
        self.ui.rollbackButton.enabled = connected and not following and bool(self.models)
        self.approveButton.enabled = self.rejectButton.enabled = self.ui.rollbackButton.enabled
        self.ui.registerSiteButton.enabled = bool(params.siteName) and (bool(self.scenePairs) or not fromScene)
        self.ui.adaptButton.enabled = connected and not following and self.ui.adaptSiteComboBox.count > 0
        self.ui.cancelButton.enabled = following
        self.ui.resumeButton.enabled = connected and not following and bool(params.jobId) and self.jobResumable
        hasVersions = len(self.versionIds) > 0
        self.ui.showResultsButton.enabled = hasVersions
        self.ui.loadCaseButton.enabled = hasVersions and bool(self.auditCaseIds)
        self.ui.previousCaseButton.enabled = self.ui.loadCaseButton.enabled and self.ui.auditCaseComboBox.currentIndex > 0
        self.ui.nextCaseButton.enabled = (self.ui.loadCaseButton.enabled
                                          and self.ui.auditCaseComboBox.currentIndex < len(self.auditCaseIds) - 1)
        self.updateAuditVisibility()

    def updateAuditVisibility(self) -> None:
        case = self.logic.session.audit_case if self.logic.session else None
        if case is None:
            return
        case.ground_truth.GetDisplayNode().SetVisibility(self._parameterNode.showGroundTruth)
        case.changes.GetDisplayNode().SetVisibility(self._parameterNode.showChanges)

    # -- backend ----------------------------------------------------------------------------------
    def onConnect(self) -> None:
        params = self._parameterNode
        with reportErrors("Cannot connect to the DAKR backend."):
            if params.backendMode == BACKEND_LOCAL:
                self.logic.ensureBackendDependencies()
                backend = self.logic.startLocalBackend(params.storePath)
                self.ui.backendStatusLabel.text = f"Starting the local backend on {backend.url} ..."
                self.localStartDeadline = time.monotonic() + LOCAL_START_TIMEOUT_S
                self.pollTimer.start()
            else:
                self.logic.connect(params.remoteUrl, self.ui.remoteTokenLineEdit.text)
                self.onConnected()
        self.updateGUIFromState()

    def pollLocalStartup(self) -> None:
        """Timer tick while the local backend starts: connect once it answers."""
        backend = self.logic.localBackend
        try:
            if not backend.ready():
                if time.monotonic() < self.localStartDeadline:
                    return
                raise RuntimeError(f"It did not answer within {LOCAL_START_TIMEOUT_S} s. Its log ({backend.log_file}) "
                                   f"ends with:\n{backend.log_tail()}")
            self.pollTimer.stop()
            self.logic.connectLocal()
        except Exception as error:
            self.pollTimer.stop()
            self.logic.disconnect()
            self.ui.backendStatusLabel.text = "Not connected."
            slicer.util.errorDisplay(f"The local backend did not start.\n\n{error}")
            self.updateGUIFromState()
            return
        with reportErrors("Connected, but the backend's models and sites could not be read."):
            self.onConnected()

    def onConnected(self) -> None:
        session = self.logic.session
        info = session.info
        self.ui.backendStatusLabel.text = (
            f"Connected to {session.client.base_url} · API {info['api_version']} · device {session.device_text}")
        self.ui.deviceWarningLabel.visible = session.gpu_unused
        self.ui.deviceWarningLabel.text = (
            "A GPU is present but the backend's PyTorch cannot use it (CPU-only build): training will be slow. "
            "Fix: reinstall PyTorch with CUDA support in the PyTorch Utils module, then restart the backend."
            if session.gpu_unused else "")
        self.refreshModels()
        self.refreshSites()
        self.resumeOrFollowExistingJob()
        self.updateGUIFromState()

    def onDisconnect(self) -> None:
        self.pollTimer.stop()
        self.logic.disconnect()
        self.ui.backendStatusLabel.text = "Not connected."
        self.ui.deviceWarningLabel.visible = False
        self.updateGUIFromState()

    # -- model versions ---------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """Versions table, active version and the before/after selectors (defaults: previous vs active)."""
        session = self.logic.session
        self.models = sorted(session.client.models(), key=lambda model: int(model["id"]))
        table = self.ui.versionsTableWidget
        table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            values = [gate.version_label(model), model["site"], model["strategy"],
                      str(model.get("created", ""))[:19].replace("T", " "),
                      "" if model.get("parent") is None else f"v{model['parent']}"]
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))
        active = next((model for model in self.models if model.get("active")), None)
        self.ui.activeVersionLabel.text = (f"Active version: v{active['id']} ({active['strategy']} on {active['site']})"
                                           if active else "No model yet: adapt to a first site.")
        self.versionIds = [int(model["id"]) for model in self.models]
        labels = [f"v{model['id']} · {model['site']} · {model['strategy']}" for model in self.models]
        defaults = session.default_versions(self.models)
        for combo, default in ((self.ui.beforeVersionComboBox, defaults[0] if defaults else None),
                               (self.ui.afterVersionComboBox, defaults[1] if defaults else None)):
            combo.clear()
            for label in labels:
                combo.addItem(label)
            if default is not None:
                combo.currentIndex = self.versionIds.index(default)

    def onRollback(self) -> None:
        row = self.ui.versionsTableWidget.currentRow()
        if row < 0:
            slicer.util.errorDisplay("Select the version to roll back to in the versions table first.")
            return
        version = int(self.models[row]["id"])
        if not slicer.util.confirmOkCancelDisplay(
                f"Make v{version} the active model? Newer versions stay stored and can be activated again.", "Roll back"):
            return
        with reportErrors(f"Cannot activate v{version}."):
            self.logic.requireSession().client.activate_model(version)
            self.logic.session.refresh()
            self.refreshModels()
        self.updateGUIFromState()

    # -- new site ---------------------------------------------------------------------------------
    def refreshCasesTable(self) -> None:
        table = self.ui.casesTableWidget
        table.setRowCount(len(self.scenePairs))
        for row, pair in enumerate(self.scenePairs):
            for column, value in enumerate((pair.case_id, pair.volume.GetName(), pair.labels.GetName())):
                table.setItem(row, column, qt.QTableWidgetItem(value))
        self.updateGUIFromState()

    def onAddCase(self) -> None:
        volume = self.ui.caseVolumeSelector.currentNode()
        labels = self.ui.caseLabelsSelector.currentNode()
        if volume is None or labels is None:
            slicer.util.errorDisplay("Choose an image volume and its segmentation (or labelmap) first.")
            return
        taken = {pair.case_id for pair in self.scenePairs}
        self.scenePairs.append(mrmlio.ScenePair(mrmlio.case_id_from_name(volume.GetName(), taken), volume, labels))
        self.refreshCasesTable()

    def onFindCases(self) -> None:
        self.scenePairs = mrmlio.find_scene_pairs(slicer.mrmlScene)
        if not self.scenePairs:
            slicer.util.errorDisplay(
                "No image volume with a segmentation was found. Fix: create the segmentation of each volume in Segment "
                "Editor (or load a labelmap named '<volume>-label'), or add the pairs one by one.")
        self.refreshCasesTable()

    def onRemoveCase(self) -> None:
        row = self.ui.casesTableWidget.currentRow()
        if 0 <= row < len(self.scenePairs):
            del self.scenePairs[row]
            self.refreshCasesTable()

    def onRegisterSite(self) -> None:
        params = self._parameterNode
        with reportErrors(f"Site '{params.siteName}' was not registered."):
            session = self.logic.requireSession()
            if params.casesSource == CASES_FROM_SCENE:
                site = session.register_site_from_scene(params.siteName, self.scenePairs)
            else:
                site = session.register_site_from_folder(params.siteName, params.siteFolder)
            session.refresh()
            self.refreshSites(select=site["name"])
            self.ui.jobStatusLabel.text = (f"Site {site['name']} registered: {site['n_train']} training and "
                                           f"{site['n_audit']} audit cases. Ready to adapt.")
        self.updateGUIFromState()

    def refreshSites(self, select: str | None = None) -> None:
        """Fill the adapt and audit site selectors from the backend."""
        sites = [site["name"] for site in self.logic.session.client.sites()]
        learned = {model["site"] for model in self.models}
        for combo, names in ((self.ui.adaptSiteComboBox, sites),
                             (self.ui.auditSiteComboBox, [name for name in sites if name in learned])):
            current = select if combo is self.ui.adaptSiteComboBox and select else combo.currentText
            combo.clear()
            for name in names:
                combo.addItem(name)
            if current in names:
                combo.currentIndex = names.index(current)

    # -- adapt ------------------------------------------------------------------------------------
    def onAdapt(self) -> None:
        params = self._parameterNode
        settings = AdaptSettings(params.epochs, params.bufferSamples, params.lambdaCna, params.lambdaCra)
        site = self.ui.adaptSiteComboBox.currentText
        try:
            monitor = self.logic.startAdapt(site, params.strategy, settings)
        except JobConflictError as error:
            slicer.util.errorDisplay(f"{error}\n\nThe module now follows the running job {error.job_id}; "
                                     "start the new one when it has finished.")
            monitor = self.logic.followJob(error.job_id)
        except Exception as error:
            logging.exception("adapt did not start")
            slicer.util.errorDisplay(f"Adapting to site '{site}' did not start.\n\n{error}", detailedText=traceback.format_exc())
            return
        self.startFollowing(monitor, f"Adapting to {site} with {params.strategy} ...")

    def startFollowing(self, monitor: JobMonitor, message: str) -> None:
        self._parameterNode.jobId = monitor.job_id
        self.jobResumable = False
        self.ui.jobProgressBar.setRange(0, 0)
        self.ui.jobStatusLabel.text = message
        self.ui.jobLogTextEdit.appendPlainText(f"[job {monitor.job_id}] {message}")
        self.pollTimer.start()
        self.updateGUIFromState()

    def resumeOrFollowExistingJob(self) -> None:
        """On connect: follow a running job, or offer Resume for an interrupted one."""
        found = self.logic.session.job_to_follow()
        if found is None:
            return
        jobId, state = found
        if state == "running":
            self.startFollowing(self.logic.followJob(jobId), f"Following the running job {jobId} ...")
        else:
            self._parameterNode.jobId = jobId
            self.jobResumable = True
            self.ui.jobStatusLabel.text = f"Job {jobId} was {state}. Resume continues it from its last checkpoint."

    def onPollTimer(self) -> None:
        if self.logic.session is None and self.logic.localBackend is not None:
            self.pollLocalStartup()
            return
        if self.logic.monitor is None:
            self.pollTimer.stop()
            return
        try:
            update = self.logic.pollJob()
        except Exception as error:
            self.pollTimer.stop()
            self.ui.jobStatusLabel.text = f"Lost contact with the backend: {error}"
            slicer.util.errorDisplay(f"Lost contact with the backend while following the job.\n\n{error}")
            self.updateGUIFromState()
            return
        self.showJobUpdate(update)
        if update.finished:
            self.pollTimer.stop()
            self.onJobFinished(update)
        self.updateGUIFromState()

    def showJobUpdate(self, update: JobUpdate) -> None:
        percent = update.percent
        if percent is None:
            self.ui.jobProgressBar.setRange(0, 0)
        else:
            self.ui.jobProgressBar.setRange(0, 100)
            self.ui.jobProgressBar.value = percent
        self.ui.jobStatusLabel.text = update.status_text
        for event in update.events:
            self.ui.jobLogTextEdit.appendPlainText(format_event(event))

    def onJobFinished(self, update: JobUpdate) -> None:
        session = self.logic.session
        if update.state == "succeeded":
            with reportErrors("The job finished, but the new model versions could not be read."):
                session.refresh()
                self.refreshModels()
                self.refreshSites()
            self.onShowResults()
            self.showGate((update.result or {}).get("gate"))
            return
        if update.resumable:
            self.jobResumable = True
            return
        with reportErrors("Cannot read the job log."):
            for line in session.client.job_log(update.job_id, lines=50):
                self.ui.jobLogTextEdit.appendPlainText(line)
        slicer.util.errorDisplay(f"Adapting failed.\n\n{update.error or 'See the log below the progress bar.'}")

    def onCancel(self) -> None:
        with reportErrors("Cannot cancel the job."):
            self.logic.requireSession().client.cancel_job(self.logic.monitor.job_id)
            self.ui.jobStatusLabel.text = "Cancelling: the job stops at its next checkpoint ..."

    def onResume(self) -> None:
        jobId = self._parameterNode.jobId
        with reportErrors(f"Cannot resume job {jobId}."):
            self.logic.requireSession().client.resume_job(jobId)
            self.startFollowing(self.logic.followJob(jobId), f"Resuming job {jobId} ...")

    # -- change control ---------------------------------------------------------------------------
    def setupGateWidgets(self) -> None:
        """Approve / Reject under the versions table; the gate verdict (text and table) in Results."""
        buttons = qt.QWidget()
        buttons.setLayout(qt.QHBoxLayout())
        self.approveButton, self.rejectButton = qt.QPushButton(), qt.QPushButton()
        for button, handler, text, tip in (
                (self.approveButton, self.onApprove, "Approve...", "Approve the selected version (e.g. held) and activate it"),
                (self.rejectButton, self.onReject, "Reject...", "Reject the selected version; it stays inactive")):
            button.text, button.toolTip = text, tip
            buttons.layout().addWidget(button)
            button.connect("clicked(bool)", handler)
        self.ui.modelCollapsibleButton.layout().addWidget(buttons)
        self.gateLabel = qt.QLabel()
        self.gateLabel.wordWrap = True
        self.gateTableView = slicer.qMRMLTableView()
        self.gateTableView.setMRMLScene(slicer.mrmlScene)
        self.gateTableView.visible = False
        self.ui.resultsCollapsibleButton.layout().addRow(self.gateLabel)
        self.ui.resultsCollapsibleButton.layout().addRow(self.gateTableView)

    def showGate(self, outcome: dict | None) -> None:
        """The gate verdict of the version an adapt job made: per-site table and the error-bar plot."""
        self.gateTableView.visible = outcome is not None
        if outcome is None:
            self.gateLabel.text = ""
            return
        self.gateLabel.text = "\n".join([outcome["summary"], *(f"Power warning: {w}" for w in outcome.get("warnings", []))])
        scene = slicer.mrmlScene
        nodes = [scene.GetFirstNodeByName(f"DAKR gate {part}") or scene.AddNewNodeByClass(kind, f"DAKR gate {part}")
                 for kind, part in (
            ("vtkMRMLTableNode", "verdict"), ("vtkMRMLTableNode", "changes"), ("vtkMRMLTableNode", "intervals"),
            ("vtkMRMLPlotChartNode", "chart"))]
        gate.fill_verdict_table(nodes[0], outcome)
        gate.fill_error_bar_plot(scene, nodes[3], nodes[1], nodes[2], outcome)
        self.gateTableView.setMRMLTableNode(nodes[0])
        slicer.modules.plots.logic().ShowChartInLayout(nodes[3])

    def onApprove(self) -> None:
        self.signOff("approve", gate.approve)

    def onReject(self) -> None:
        self.signOff("reject", gate.reject)

    def signOff(self, action: str, send) -> None:
        """Ask for the reason, send the approval or rejection of the selected version, refresh."""
        row = self.ui.versionsTableWidget.currentRow()
        if row < 0:
            slicer.util.errorDisplay(f"Select the version to {action} in the versions table first.")
            return
        version = int(self.models[row]["id"])
        reason = qt.QInputDialog.getText(self.parent, f"{action.capitalize()} v{version}",
                                         "Reason (kept for good in the version's change record):")
        if not reason or not reason.strip():
            return
        with reportErrors(f"Cannot {action} v{version}."):
            send(self.logic.requireSession().client, version, reason)
            self.logic.session.refresh()
            self.refreshModels()
        self.updateGUIFromState()

    # -- results ----------------------------------------------------------------------------------
    def selectedVersions(self) -> tuple[int, int]:
        return (self.versionIds[self.ui.beforeVersionComboBox.currentIndex],
                self.versionIds[self.ui.afterVersionComboBox.currentIndex])

    def onShowResults(self) -> None:
        if not self.versionIds:
            return
        before, after = self.selectedVersions()
        with reportErrors("Cannot show the results."):
            comparison = self.logic.showResults(self._parameterNode, before, after)
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)
            self.ui.bwtLabel.text = (f"Backward transfer of v{after}: {comparison.bwt:+.3f} (negative = forgetting)"
                                     if comparison.bwt is not None else f"v{after} has no earlier site: no BWT yet.")

    # -- audit ------------------------------------------------------------------------------------
    def onAuditSiteChanged(self, index: int) -> None:
        self.auditCaseIds = []
        site = self.ui.auditSiteComboBox.currentText
        if self.logic.session is not None and site:
            with reportErrors(f"Cannot list the audit cases of {site}."):
                self.auditCaseIds = audit.audit_case_ids(self.logic.session.client, site)
        self.ui.auditCaseComboBox.clear()
        for caseId in self.auditCaseIds:
            self.ui.auditCaseComboBox.addItem(caseId)
        self.updateGUIFromState()

    def onLoadCase(self) -> None:
        site = self.ui.auditSiteComboBox.currentText
        caseId = self.ui.auditCaseComboBox.currentText
        before, after = self.selectedVersions()
        with reportErrors(f"Cannot load case {caseId} of {site}."):
            case = self.logic.loadAuditCase(site, caseId, before, after)
            self.ui.auditDiceLabel.text = (
                f"{site} / {caseId}: Dice v{before} {_dice_text(case.dice_before)} → v{after} {_dice_text(case.dice_after)}"
                f" · {case.changed_voxels} voxels changed")
            self.updateAuditVisibility()
        self.updateGUIFromState()

    def onPreviousCase(self) -> None:
        self.ui.auditCaseComboBox.currentIndex = max(0, self.ui.auditCaseComboBox.currentIndex - 1)
        self.onLoadCase()

    def onNextCase(self) -> None:
        self.ui.auditCaseComboBox.currentIndex = min(len(self.auditCaseIds) - 1, self.ui.auditCaseComboBox.currentIndex + 1)
        self.onLoadCase()


def _dice_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class DAKRSegmentationTest(ScriptedLoadableModuleTest):
    """End to end on a tiny synthetic problem: local backend, two sites, two short adapt jobs,
    the results table and the audit of one case. Needs the PyTorch extension; takes a few minutes on CPU."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_EndToEnd()

    def test_EndToEnd(self) -> None:
        logic = DAKRSegmentationLogic()
        store = Path(tempfile.mkdtemp(prefix="dakr-selftest-")) / "store"
        self.delayDisplay("Installing the backend's requirements if needed, then starting it")
        logic.ensureBackendDependencies()
        logic.startLocalBackend(store).wait_until_ready(timeout_s=300)
        session = logic.connectLocal()
        try:
            for siteIndex, (site, contrast) in enumerate((("SiteA", 1.0), ("SiteB", 0.6))):
                self.delayDisplay(f"Registering {site} from scene nodes")
                pairs = []
                for caseIndex in range(5):
                    volume, segmentation = add_phantom_case(slicer.mrmlScene, f"{site}-{caseIndex}", seed=10 * siteIndex + caseIndex,
                                                            contrast=contrast)
                    pairs.append(mrmlio.ScenePair(f"{site}-{caseIndex}", volume, segmentation))
                registered = session.register_site_from_scene(site, pairs)
                self.assertEqual(registered["n_train"] + registered["n_audit"], 5)
                session.refresh()
                self.delayDisplay(f"Adapting to {site}")
                monitor = logic.startAdapt(site, "dakr", AdaptSettings(epochs=1, buffer_samples=8, extra=TINY_TRAINING))
                update = monitor.wait(timeout_s=600, on_update=lambda u: logging.info(u.status_text))
                self.assertEqual(update.state, "succeeded", update.error)
            # One audit case per site cannot show non-inferiority: the gate may hold v2, a reviewer signs it off.
            gate.approve(session.client, 2, "tiny self-test model, signed off by the self-test")

            models = session.client.models()
            before, after = session.default_versions(models)
            parameterNode = logic.getParameterNode()
            comparison = logic.showResults(parameterNode, before, after)
            matrix = session.client.evaluation_matrix()
            row = matrix["versions"].index(after)
            for site in comparison.sites:
                self.assertAlmostEqual(site.after, matrix["dice"][row][matrix["sites"].index(site.site)])
            self.assertIsNotNone(comparison.bwt)

            self.delayDisplay("Auditing a case of SiteA")
            caseId = audit.audit_case_ids(session.client, "SiteA")[0]
            case = logic.loadAuditCase("SiteA", caseId, before, after)
            dice = session.client.case_dice("SiteA", caseId, before, after)
            self.assertEqual((case.dice_before, case.dice_after), (dice["before"], dice["after"]))
            self.assertEqual(case.before.GetSegmentation().GetNumberOfSegments(), 2)
            self.assertEqual(case.changes.GetSegmentation().GetNthSegment(0).GetName(), "changed voxels")
            self.delayDisplay("Test passed")
        finally:
            logic.disconnect()
            shutil.rmtree(store.parent, ignore_errors=True)
