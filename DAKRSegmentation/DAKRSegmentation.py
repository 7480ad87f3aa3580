"""DAKR Segmentation: adapt a segmentation model to a new clinical site without forgetting the
previous ones, and audit the forgetting case by case.

Module / Widget / Logic / Test of the Slicer module. The work itself (MRML ⇄ files, the backend
client, job polling, tables, audit cases) lives in ``DAKRSegmentationLib`` without Qt; this file
wires it to the GUI and to the Slicer application.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import traceback
from importlib import metadata
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator

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

from DAKRSegmentationLib import MINIMUM_PYTHON_VERSION, MINIMUM_SLICER_VERSION, audit, gate, mrmlio, server_lock, shift
from DAKRSegmentationLib.background import BackgroundTasks, Task, TaskCancelled, TaskControl
from DAKRSegmentationLib.backend import LocalBackend, backend_location, backend_requirements, torch_requirement, torch_too_old
from DAKRSegmentationLib.install_plan import InstallPlan, install, installed_versions, plan_install, write_constraints
from DAKRSegmentationLib.client import BackendClient, BackendError, JobConflictError, PredictionFile
from DAKRSegmentationLib.jobs import FINISHED_STATES, JobMonitor, JobUpdate, format_event
from DAKRSegmentationLib.results import VersionComparison
from DAKRSegmentationLib.regressions import CaseRegression, dice_points
from DAKRSegmentationLib.session import STRATEGIES, AdaptSettings, Session
from DAKRSegmentationLib.terminology import terminology_colors
from DAKRSegmentationLib.testing import TINY_TRAINING, add_phantom_case

BACKEND_LOCAL = "local"
BACKEND_REMOTE = "remote"
CASES_FROM_SCENE = "loaded scene nodes"
CASES_FROM_FOLDER = "nnU-Net raw folder"
#: Period of the QTimer that polls the backend (job progress, local start-up).
POLL_INTERVAL_MS = 1000
#: How long a local backend may take to answer after it was started (first start imports torch).
LOCAL_START_TIMEOUT_S = 300
#: Period of the QTimer that collects finished background tasks.
TASK_INTERVAL_MS = 100
#: How long a job-end notification stays in the status bar (ms).
NOTIFICATION_MS = 10000
#: Key that toggles the before/after flicker while the module is shown.
FLICKER_KEY = "F"
#: Column of the audit table holding the Dice change (the default sort: largest drop first).
AUDIT_CHANGE_COLUMN = 3


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


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
            "segmentation changed. Training runs in a separate backend process, local or remote. "
            f"Needs Slicer {_version_text(MINIMUM_SLICER_VERSION)} or later (Python {_version_text(MINIMUM_PYTHON_VERSION)})."
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
    showLost: bool = True
    showGained: bool = True
    #: Opacity of the audit segmentations in percent.
    auditOpacity: Annotated[int, WithinRange(0, 100)] = 60
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
        """Torch through the PyTorch extension, then the backend's other requirements. Blocking: for the
        self-test and scripts; the widget runs the plan and the install on worker threads."""
        self.ensureTorch()
        plan = self.planBackendInstall()
        if self.confirmBackendInstall(plan):
            self.installBackendRequirements()

    def ensureTorch(self) -> None:
        """Install torch through the PyTorch extension, or offer its upgrade when it is older than tested."""
        _, pyproject = backend_location(self.moduleDir)
        requirement = torch_requirement(pyproject)
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                "DAKR needs the PyTorch extension. Fix: install 'PyTorch' from the Extensions Manager and restart Slicer."
            ) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=requirement) is None:
                raise RuntimeError("PyTorch is required to run the backend locally. Fix: accept its installation, or use a remote backend.")
            return
        installed = self.installedTorchVersion()
        if not torch_too_old(installed, requirement):
            return
        if not slicer.util.confirmOkCancelDisplay(
                f"PyTorch {installed} is older than the DAKR backend was tested with ({requirement}).\n\n"
                "Upgrade it through the PyTorch extension now? Restart Slicer afterwards.", "DAKR Segmentation"):
            raise RuntimeError(f"PyTorch {installed} is too old for the DAKR backend ({requirement}). "
                               "Fix: upgrade it in the PyTorch Utils module, or use a remote backend.")
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
            raise RuntimeError("PyTorch was not upgraded. Fix: upgrade it in the PyTorch Utils module and restart Slicer.")

    @staticmethod
    def installedTorchVersion() -> str:
        return metadata.version("torch")

    def planBackendInstall(self) -> InstallPlan:
        """What installing the backend's requirements would add or change (a pip dry run; no GUI, worker-safe)."""
        _, pyproject = backend_location(self.moduleDir)
        return plan_install(self.pythonExecutable(), backend_requirements(pyproject))

    def confirmBackendInstall(self, plan: InstallPlan) -> bool:
        """Whether there is something to install: refuse a plan that changes installed packages, ask
        before one that only adds packages (GUI thread: dialogs)."""
        if not plan.packages:
            return False
        refusal = plan.refusal()
        if refusal:
            raise RuntimeError(refusal)
        if not slicer.util.confirmOkCancelDisplay(
                "The DAKR backend needs these Python packages (nothing already installed changes):\n\n"
                + plan.summary() + "\n\nInstall them now?", "DAKR Segmentation"):
            raise RuntimeError("Required Python packages are missing. Fix: accept their installation, or use a remote backend.")
        return True

    def installBackendRequirements(self, onLine: Callable[[str], None] | None = None,
                                   cancelled: Callable[[], bool] | None = None) -> None:
        """Install the backend's requirements into Slicer's Python with every installed package pinned,
        so pip can only add packages (a child pip process; blocking: run it on a worker thread)."""
        _, pyproject = backend_location(self.moduleDir)
        python = self.pythonExecutable()
        constraints = write_constraints(installed_versions(python),
                                        Path(slicer.app.temporaryPath) / "DAKRSegmentation" / "constraints.txt")
        install(python, backend_requirements(pyproject), constraints, onLine, cancelled)

    def pythonExecutable(self) -> str:
        """``PythonSlicer`` (Slicer's own Python), unless :attr:`backendPython` names another one."""
        python = self.backendPython or shutil.which("PythonSlicer")
        if not python:
            raise RuntimeError("PythonSlicer was not found. Fix: start Slicer through its launcher, or use a remote backend.")
        return python

    def newLocalBackend(self, store: Path) -> LocalBackend:
        """A local server for ``store`` on loopback (not started yet)."""
        pythonpath, _ = backend_location(self.moduleDir)
        runDir = Path(slicer.app.temporaryPath) / "DAKRSegmentation" / "backend"
        return LocalBackend(self.pythonExecutable(), Path(store), pythonpath, runDir,
                            environment=slicer.util.startupEnvironment())

    def openLocal(self, backend: LocalBackend, cancelled: Callable[[], bool] | None = None) -> Session:
        """Reuse the server another module started on the same store (its lock file), else start
        ``backend`` (``dakr init``, then ``dakr serve``) and wait until it answers. Blocking: run it
        on a worker thread; the caller makes the result current with :meth:`useSession`."""
        store = backend.store
        running = server_lock.running_server(store)
        if running is not None:
            return self.newSession(running)
        backend.start()
        backend.wait_until_ready(LOCAL_START_TIMEOUT_S, cancelled)
        server_lock.write_lock(store, server_lock.ServerLock(backend.url, backend.token, backend.process.pid))
        return self.newSession(backend.client())

    def newSession(self, client: BackendClient) -> Session:
        """A session on ``client`` (asks ``/info``: blocking; refuses an unsupported API major version)."""
        return Session(client, slicer.mrmlScene, Path(slicer.app.temporaryPath) / "DAKRSegmentation")

    def useSession(self, session: Session, backend: LocalBackend | None = None) -> None:
        """Make ``session`` current; ``backend`` is the local server this module started for it, if any."""
        self.session = session
        self.localBackend = backend if backend is not None and backend.running() else None

    def connect(self, url: str, token: str | None) -> Session:
        """Connect to a backend (blocking; for scripts and the self-test)."""
        self.useSession(self.newSession(BackendClient(url, token)))
        return self.session

    def startLocalBackend(self, store: Path) -> Session:
        """Start or reuse the local server for ``store`` and connect (blocking; for scripts and the self-test)."""
        backend = self.newLocalBackend(store)
        self.useSession(self.openLocal(backend), backend)
        return self.session

    def jobRunning(self) -> bool:
        """Whether this module follows a job that has not finished."""
        return self.monitor is not None and self.monitor.state not in FINISHED_STATES

    def detachLocalBackend(self) -> LocalBackend | None:
        """Forget the session; return the local server this module started (to stop it), if any."""
        backend, self.localBackend = self.localBackend, None
        self.monitor = None
        self.session = None
        if backend is not None and backend.process is not None:
            server_lock.remove_lock(backend.store, backend.process.pid)
        return backend

    def disconnect(self) -> None:
        """Forget the session and stop the local server this module started (blocking up to its grace time)."""
        backend = self.detachLocalBackend()
        if backend is not None:
            backend.stop()

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

    # -- results ----------------------------------------------------------------------------------
    def showResults(self, parameterNode: DAKRSegmentationParameterNode, before: int, after: int,
                    fetched: tuple[dict, list[dict]] | None = None) -> VersionComparison:
        """Fill the Dice table and plot and show them in a table + plot layout (``fetched``: the
        session's :meth:`~Session.fetch_results`, fetched here when ``None``)."""
        scene = slicer.mrmlScene
        if parameterNode.resultsTable is None:
            parameterNode.resultsTable = scene.AddNewNodeByClass("vtkMRMLTableNode", "DAKR Dice before vs after")
        if parameterNode.diceTable is None:
            parameterNode.diceTable = scene.AddNewNodeByClass("vtkMRMLTableNode", "DAKR Dice across versions")
        if parameterNode.diceChart is None:
            parameterNode.diceChart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DAKR Dice per site")
        comparison = self.requireSession().update_results(
            before, after, parameterNode.resultsTable, parameterNode.diceTable, parameterNode.diceChart, fetched)
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
        """Load a stored case with both versions' segmentations (blocking; for scripts and the self-test)."""
        return self.showAuditFiles(self.requireSession().download_audit_case(site, caseId, before, after))

    def showAuditFiles(self, files: audit.AuditFiles) -> audit.AuditCase:
        """Load downloaded audit files into the audit layout (GUI thread), segments coloured from the
        terminologies where a label name is a terminology type."""
        session = self.requireSession()
        if session.label_colors is None:
            terminologies = getattr(slicer.modules, "terminologies", None)
            session.label_colors = terminology_colors(terminologies.logic() if terminologies else None,
                                                      [name for name, value in (session.label_names or {}).items() if value])
        case = session.show_audit_files(files, session.label_colors)
        audit.show_audit_layout(slicer.mrmlScene, case)
        slicer.util.resetSliceViews()
        audit.centre_views(slicer.mrmlScene, case)
        return case


class DAKRSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: backend, model versions, new site, adapt, results, audit.

    Every request to the backend, child process and pip dry run runs on a worker thread
    (:class:`BackgroundTasks`); :attr:`taskTimer` brings results back to the GUI thread."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: DAKRSegmentationLogic | None = None
        self._parameterNode: DAKRSegmentationParameterNode | None = None
        self._parameterNodeGuiTag = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.taskTimer = qt.QTimer()
        self.taskTimer.setInterval(TASK_INTERVAL_MS)
        self.tasks = BackgroundTasks()
        #: The progress dialog of the task that shows one, and that task.
        self.progressDialog = None
        self.progressTask: Task | None = None
        self.scenePairs: list[mrmlio.ScenePair] = []
        self.models: list[dict] = []
        self.versionIds: list[int] = []
        #: Rows of the audit table (by case id) for the site and versions shown.
        self.auditCases: dict[str, CaseRegression] = {}
        self.flickerShortcut = None
        self.trayIcon = None
        #: Whether the job in the parameter node's ``jobId`` can be resumed.
        self.jobResumable = False

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
        self.taskTimer.connect("timeout()", self.onTaskTimer)

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
        self.ui.auditCasesTableWidget.connect("cellClicked(int,int)", self.onAuditCaseClicked)
        self.ui.auditCasesTableWidget.connect("itemSelectionChanged()", self.updateGUIFromState)
        self.ui.beforeVersionComboBox.connect("currentIndexChanged(int)", self.onAuditSiteChanged)
        self.ui.afterVersionComboBox.connect("currentIndexChanged(int)", self.onAuditSiteChanged)
        self.ui.flickerButton.connect("toggled(bool)", self.onFlicker)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCase)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.checkShiftButton.connect("clicked(bool)", self.onCheckShift)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.ui.rankButton.connect("clicked(bool)", self.onRankImages)
        self.setupGateWidgets()

        for table in (self.ui.auditCasesTableWidget, self.ui.resultsTableView, self.ui.rankTableWidget):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)

        self.initializeParameterNode()
        self.updateGUIFromState()

    def cleanup(self) -> None:
        """Application exit or module reload: stop timers and workers, then the local server this module
        started (without waiting for it). With a job running, ask first: the server may keep running,
        and Connect reaches it again through the store's lock file (it still exits with Slicer)."""
        self.pollTimer.stop()
        self.taskTimer.stop()
        self.removeObservers()
        self.tasks.shutdown()
        if self.logic is None or self.logic.localBackend is None:
            return
        if self.logic.jobRunning() and not slicer.util.confirmOkCancelDisplay(
                "An adapt job is running in the local backend.\n\nOK: stop it now; Resume continues it from its last "
                "checkpoint the next time you connect to this store.\nCancel: keep the backend and the job running; "
                "Connect follows it again (the backend still stops when Slicer exits).", "DAKR Segmentation"):
            return
        self.logic.detachLocalBackend().terminate()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.flickerShortcut = qt.QShortcut(qt.QKeySequence(FLICKER_KEY), slicer.util.mainWindow())
        self.flickerShortcut.connect("activated()", self.ui.flickerButton.click)

    def exit(self) -> None:
        if self.flickerShortcut is not None:
            self.flickerShortcut.setParent(None)
            self.flickerShortcut = None
        self.trayIcon = None
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self.logic.session is not None:
            self.logic.session.audit_case = None
        self.ui.caseShiftLabel.text = ""

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

    # -- background work --------------------------------------------------------------------------
    def runInBackground(self, name: str, function: Callable[[TaskControl], object], onDone: Callable[[object], None],
                        errorMessage: str, progress: str | None = None,
                        onError: Callable[[BaseException], None] | None = None) -> Task:
        """Run ``function(control)`` on a worker thread; ``onDone(result)`` runs on the GUI thread.

        An error becomes an error dialog starting with ``errorMessage`` (or goes to ``onError``);
        ``progress`` opens a progress dialog whose Cancel sets the task's cancel flag."""
        task: Task | None = None

        def done(result: object) -> None:
            self.closeProgress(task)
            with reportErrors(errorMessage):
                onDone(result)
            self.updateGUIFromState()

        def failed(error: BaseException) -> None:
            self.closeProgress(task)
            if isinstance(error, TaskCancelled) or task.control.cancelled:
                self.ui.jobStatusLabel.text = f"{progress or name}: cancelled."
            elif onError is not None:
                onError(error)
            else:
                logging.error("%s\n%s", errorMessage, "".join(traceback.format_exception(error)))
                slicer.util.errorDisplay(f"{errorMessage}\n\n{error}",
                                         detailedText="".join(traceback.format_exception(error)))
            self.updateGUIFromState()

        task = self.tasks.submit(name, function, done, failed)
        if progress is not None:
            self.showProgress(task, progress)
        self.taskTimer.start()
        self.updateGUIFromState()
        return task

    def showProgress(self, task: Task, text: str) -> None:
        self.closeProgress(self.progressTask)
        dialog = qt.QProgressDialog()
        dialog.windowTitle = "DAKR Segmentation"
        dialog.labelText = text
        dialog.setRange(0, 0)
        dialog.minimumDuration = 0
        dialog.connect("canceled()", task.control.cancel)
        dialog.show()
        self.progressDialog, self.progressTask = dialog, task

    def closeProgress(self, task: Task | None) -> None:
        if self.progressDialog is not None and task is self.progressTask:
            self.progressDialog.close()
            self.progressDialog, self.progressTask = None, None

    def onTaskTimer(self) -> None:
        """Collect finished background tasks, show progress and stream the local server's log."""
        if self.progressDialog is not None and self.progressTask.control.text:
            control = self.progressTask.control
            self.progressDialog.labelText = control.text
            if control.fraction is not None:
                self.progressDialog.setRange(0, 100)
                self.progressDialog.value = int(100 * control.fraction)
        self.streamServerLog()
        self.tasks.collect()
        if not self.tasks.busy():
            self.taskTimer.stop()

    def streamServerLog(self) -> None:
        """New lines of the local server's log into the module's log panel and Slicer's log."""
        backend = self.logic.localBackend
        if backend is None:
            return
        for line in backend.new_log_lines():
            logging.info("[dakr serve] %s", line)
            self.ui.jobLogTextEdit.appendPlainText(f"[server] {line}")

    # -- GUI state --------------------------------------------------------------------------------
    def updateGUIFromState(self, caller=None, event=None) -> None:
        """Show, enable and label widgets from the parameter node, the connection and the running tasks."""
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
        connecting = self.tasks.busy("connect")
        following = self.pollTimer.isActive() and self.logic.monitor is not None
        busy = self.tasks.busy()
        self.ui.connectButton.enabled = not connected and not connecting
        self.ui.disconnectButton.enabled = connected and not self.tasks.busy("disconnect")
        for section in (self.ui.modelCollapsibleButton, self.ui.newSiteCollapsibleButton, self.ui.adaptCollapsibleButton,
                        self.ui.resultsCollapsibleButton, self.ui.auditCollapsibleButton):
            section.enabled = connected
        self.ui.rollbackButton.enabled = connected and not following and bool(self.models) and not busy
        self.approveButton.enabled = self.rejectButton.enabled = self.ui.rollbackButton.enabled
        self.ui.registerSiteButton.enabled = (bool(params.siteName) and (bool(self.scenePairs) or not fromScene)
                                              and not self.tasks.busy("register"))
        self.ui.adaptButton.enabled = connected and not following and self.ui.adaptSiteComboBox.count > 0 and not busy
        self.ui.cancelButton.enabled = following
        self.ui.resumeButton.enabled = connected and not following and bool(params.jobId) and self.jobResumable and not busy
        hasVersions = len(self.versionIds) > 0
        self.ui.showResultsButton.enabled = hasVersions
        loading = self.tasks.busy("audit")
        row = self.ui.auditCasesTableWidget.currentRow()
        self.ui.loadCaseButton.enabled = hasVersions and row >= 0 and not loading
        self.ui.previousCaseButton.enabled = hasVersions and row > 0 and not loading
        self.ui.nextCaseButton.enabled = hasVersions and 0 <= row < self.ui.auditCasesTableWidget.rowCount() - 1 and not loading
        self.ui.flickerButton.enabled = self.logic.session is not None and self.logic.session.audit_case is not None
        self.ui.checkShiftButton.enabled = connected and self.ui.adaptSiteComboBox.count > 0 and not self.tasks.busy("site-check")
        self.ui.rankButton.enabled = connected and bool(self.models) and not self.tasks.busy("rank")
        case = self.logic.session.audit_case if connected else None
        self.ui.showUncertaintyCheckBox.enabled = case is not None and case.uncertainty is not None
        self.updateAuditVisibility()

    def updateAuditVisibility(self) -> None:
        case = self.logic.session.audit_case if self.logic.session else None
        if case is None:
            return
        params = self._parameterNode
        audit.set_overlays(case, params.showGroundTruth, params.showLost, params.showGained, params.auditOpacity / 100.0)

    # -- backend ----------------------------------------------------------------------------------
    def onConnect(self) -> None:
        """Local: torch (GUI thread, through the PyTorch extension), install plan (worker), confirmation
        (GUI thread), install (worker, child pip), start or reuse the server (worker). Remote: ``/info``
        on a worker."""
        params = self._parameterNode
        if params.backendMode == BACKEND_REMOTE:
            url, token = params.remoteUrl, self.ui.remoteTokenLineEdit.text
            self.ui.backendStatusLabel.text = f"Connecting to {url} ..."
            self.runInBackground("connect", lambda control: self.logic.newSession(BackendClient(url, token)),
                                 self.onSessionOpened, "Cannot connect to the DAKR backend.", onError=self.onConnectFailed)
            return
        with reportErrors("Cannot connect to the DAKR backend."):
            self.logic.ensureTorch()
            self.ui.backendStatusLabel.text = "Checking the backend's Python requirements ..."
            self.runInBackground("connect", lambda control: self.logic.planBackendInstall(), self.onInstallPlan,
                                 "The backend's Python requirements cannot be installed.",
                                 progress="Checking the backend's Python requirements (pip dry run) ...",
                                 onError=self.onConnectFailed)

    def onInstallPlan(self, plan: InstallPlan) -> None:
        """Confirm the plan (GUI thread), install what it adds on a worker, then start the server."""
        try:
            needed = self.logic.confirmBackendInstall(plan)
        except Exception as error:
            self.onConnectFailed(error)
            return
        if not needed:
            self.startLocalServer()
            return
        self.ui.backendStatusLabel.text = "Installing the backend's Python packages ..."

        def work(control: TaskControl) -> None:
            self.logic.installBackendRequirements(lambda line: control.report(f"Installing: {line[:120]}"),
                                                  lambda: control.cancelled)

        self.runInBackground("connect", work, lambda _: self.startLocalServer(),
                             "The backend's Python packages were not installed.",
                             progress="Installing the backend's Python packages (pip) ...", onError=self.onConnectFailed)

    def startLocalServer(self) -> None:
        """Start (or reuse) the local server for the chosen store on a worker and connect to it."""
        try:
            backend = self.logic.newLocalBackend(self._parameterNode.storePath)
        except Exception as error:
            self.onConnectFailed(error)
            return
        self.ui.backendStatusLabel.text = f"Starting the local backend on {backend.url} ..."

        def opened(session: Session) -> None:
            self.onSessionOpened(session, backend)

        self.runInBackground("connect", lambda control: self.logic.openLocal(backend, lambda: control.cancelled), opened,
                             "The local backend did not start.", progress="Starting the local backend ...",
                             onError=self.onConnectFailed)

    def onConnectFailed(self, error: BaseException) -> None:
        self.ui.backendStatusLabel.text = "Not connected."
        logging.error("connect failed: %s", error)
        slicer.util.errorDisplay(f"Cannot connect to the DAKR backend.\n\n{error}")

    def onSessionOpened(self, session: Session, backend: LocalBackend | None = None) -> None:
        self.logic.useSession(session, backend)
        info = session.info
        reused = backend is not None and self.logic.localBackend is None
        self.ui.backendStatusLabel.text = (
            f"Connected to {session.client.base_url} · API {info['api_version']} · device {session.device_text}"
            + (" · server shared with another Slicer" if reused else ""))
        self.ui.deviceWarningLabel.visible = session.gpu_unused
        self.ui.deviceWarningLabel.text = (
            "A GPU is present but the backend's PyTorch cannot use it (CPU-only build): training will be slow. "
            "Fix: reinstall PyTorch with CUDA support in the PyTorch Utils module, then restart the backend."
            if session.gpu_unused else "")
        self.refreshOverview(followJob=True)

    def refreshOverview(self, followJob: bool = False, selectSite: str | None = None) -> None:
        """Fetch models, sites and the job to follow on a worker, then fill the panel."""
        session = self.logic.requireSession()

        def show(overview: dict) -> None:
            self.showModels(overview["models"])
            self.showSites(overview["sites"], selectSite)
            if followJob:
                self.resumeOrFollowExistingJob(overview["job"])

        self.runInBackground("refresh", lambda control: session.fetch_overview(), show,
                             "Connected, but the backend's models and sites could not be read.")

    def onDisconnect(self) -> None:
        if self.logic.jobRunning() and self.logic.localBackend is not None and not slicer.util.confirmOkCancelDisplay(
                "An adapt job is running in the local backend. Disconnecting stops it; Resume continues it from its "
                "last checkpoint the next time you connect to this store.\n\nStop the job and disconnect?",
                "DAKR Segmentation"):
            return
        self.pollTimer.stop()
        backend = self.logic.detachLocalBackend()
        self.ui.backendStatusLabel.text = "Not connected."
        self.ui.deviceWarningLabel.visible = False
        if backend is not None:
            self.ui.backendStatusLabel.text = "Stopping the local backend ..."
            self.runInBackground("disconnect", lambda control: backend.stop(), self.onStopped,
                                 "The local backend did not stop cleanly.")
        self.updateGUIFromState()

    def onStopped(self, _result: object) -> None:
        self.ui.backendStatusLabel.text = "Not connected."

    # -- model versions ---------------------------------------------------------------------------
    def showModels(self, models: list[dict]) -> None:
        """Versions table, active version and the before/after selectors (defaults: previous vs active)."""
        session = self.logic.requireSession()
        self.models = sorted(models, key=lambda model: int(model["id"]))
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
        client = self.logic.requireSession().client
        self.runInBackground("rollback", lambda control: client.activate_model(version),
                             lambda _: self.refreshOverview(), f"Cannot activate v{version}.")

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
        """Scene cases are written to files here (MRML, GUI thread) and uploaded on a worker with a
        cancellable progress dialog; a folder is registered on a worker."""
        params = self._parameterNode
        name = params.siteName
        message = f"Site '{name}' was not registered."
        with reportErrors(message):
            session = self.logic.requireSession()
            if params.casesSource == CASES_FROM_SCENE:
                upload = session.prepare_site_upload(name, self.scenePairs)

                def work(control: TaskControl) -> dict:
                    def progress(sent: int, total: int) -> None:
                        control.check()
                        control.report(f"Uploading site {name}: {sent / 1e6:.1f} of {total / 1e6:.1f} MB", sent / max(total, 1))
                    return session.upload_site(upload, progress)
            else:
                folder = params.siteFolder

                def work(control: TaskControl) -> dict:
                    return session.register_site_from_folder(name, folder)
            self.runInBackground("register", work, self.onSiteRegistered, message, progress=f"Registering site {name} ...")

    def onSiteRegistered(self, site: dict) -> None:
        self.ui.jobStatusLabel.text = (f"Site {site['name']} registered: {site['n_train']} training and "
                                       f"{site['n_audit']} audit cases. Ready to adapt.")
        self.refreshOverview(selectSite=site["name"])
        self.checkSiteShift(site["name"])

    def showSites(self, sites: list[dict], select: str | None = None) -> None:
        """Fill the adapt and audit site selectors."""
        names = [site["name"] for site in sites]
        learned = {model["site"] for model in self.models}
        for combo, choices in ((self.ui.adaptSiteComboBox, names),
                               (self.ui.auditSiteComboBox, [name for name in names if name in learned])):
            current = select if combo is self.ui.adaptSiteComboBox and select else combo.currentText
            combo.clear()
            for name in choices:
                combo.addItem(name)
            if current in choices:
                combo.currentIndex = choices.index(current)

    # -- adapt ------------------------------------------------------------------------------------
    def onAdapt(self) -> None:
        params = self._parameterNode
        settings = AdaptSettings(params.epochs, params.bufferSamples, params.lambdaCna, params.lambdaCra)
        site, strategy = self.ui.adaptSiteComboBox.currentText, params.strategy
        session = self.logic.requireSession()

        def started(monitor: JobMonitor) -> None:
            self.logic.monitor = monitor
            self.startFollowing(monitor, f"Adapting to {site} with {strategy} ...")

        def failed(error: BaseException) -> None:
            if isinstance(error, JobConflictError):
                slicer.util.errorDisplay(f"{error}\n\nThe module now follows the running job {error.job_id}; "
                                         "start the new one when it has finished.")
                self.startFollowing(self.logic.followJob(error.job_id), f"Following the running job {error.job_id} ...")
                return
            logging.error("adapt did not start: %s", error)
            slicer.util.errorDisplay(f"Adapting to site '{site}' did not start.\n\n{error}")

        self.runInBackground("adapt", lambda control: session.start_adapt(site, strategy, settings), started,
                             f"Adapting to site '{site}' did not start.", onError=failed)

    def startFollowing(self, monitor: JobMonitor, message: str) -> None:
        self._parameterNode.jobId = monitor.job_id
        self.jobResumable = False
        self.ui.jobProgressBar.setRange(0, 0)
        self.ui.jobStatusLabel.text = message
        self.ui.jobLogTextEdit.appendPlainText(f"[job {monitor.job_id}] {message}")
        self.pollTimer.start()
        self.updateGUIFromState()

    def resumeOrFollowExistingJob(self, found: tuple[str, str] | None) -> None:
        """On connect: follow a running job, or offer Resume for an interrupted one."""
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
        """One poll of the followed job on a worker (skipped while the previous one is still out)."""
        monitor = self.logic.monitor
        if monitor is None:
            self.pollTimer.stop()
            return
        if self.tasks.busy("poll"):
            return
        self.runInBackground("poll", lambda control: monitor.poll(), self.onJobUpdate,
                             "Cannot read the job's progress.", onError=self.onLostContact)

    def onLostContact(self, error: BaseException) -> None:
        self.pollTimer.stop()
        self.ui.jobStatusLabel.text = f"Lost contact with the backend: {error}"
        slicer.util.errorDisplay(f"Lost contact with the backend while following the job.\n\n{error}")

    def onJobUpdate(self, update: JobUpdate) -> None:
        if not self.pollTimer.isActive():
            return
        self.showJobUpdate(update)
        if update.finished:
            self.pollTimer.stop()
            self.notify(f"DAKR job {update.job_id}: {update.status_text}")
            self.onJobFinished(update)

    def notify(self, text: str) -> None:
        """A status bar message and, when Slicer's window is not active, a desktop notification (a
        tray message where the desktop has a tray, else a short message box)."""
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        mainWindow.statusBar().showMessage(text, NOTIFICATION_MS)
        if mainWindow.isActiveWindow():
            return
        if qt.QSystemTrayIcon.isSystemTrayAvailable():
            if self.trayIcon is None:
                self.trayIcon = qt.QSystemTrayIcon(mainWindow.windowIcon, mainWindow)
            self.trayIcon.show()
            self.trayIcon.showMessage("DAKR Segmentation", text)
        else:
            slicer.util.delayDisplay(text, NOTIFICATION_MS)

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
        session = self.logic.requireSession()
        if update.state == "succeeded":
            def refreshed(overview: dict) -> None:
                self.showModels(overview["models"])
                self.showSites(overview["sites"])
                self.onShowResults()

            self.runInBackground("refresh", lambda control: session.fetch_overview(), refreshed,
                                 "The job finished, but the new model versions could not be read.")
            self.showGate((update.result or {}).get("gate"))
            return
        if update.resumable:
            self.jobResumable = True
            return

        def showLog(lines: list[str]) -> None:
            for line in lines:
                self.ui.jobLogTextEdit.appendPlainText(line)
            slicer.util.errorDisplay(f"Adapting failed.\n\n{update.error or 'See the log below the progress bar.'}")

        self.runInBackground("log", lambda control: session.client.job_log(update.job_id, lines=50), showLog,
                             "Cannot read the job log.")

    def onCancel(self) -> None:
        client, jobId = self.logic.requireSession().client, self.logic.monitor.job_id
        self.ui.jobStatusLabel.text = "Cancelling: the job stops at its next checkpoint ..."
        self.runInBackground("cancel", lambda control: client.cancel_job(jobId), lambda _: None, "Cannot cancel the job.")

    def onResume(self) -> None:
        jobId = self._parameterNode.jobId
        session = self.logic.requireSession()
        self.runInBackground("resume", lambda control: session.client.resume_job(jobId),
                             lambda _: self.startFollowing(self.logic.followJob(jobId), f"Resuming job {jobId} ..."),
                             f"Cannot resume job {jobId}.")

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
        session = self.logic.requireSession()

        def signAndRefresh(control: TaskControl) -> dict:
            send(session.client, version, reason)
            return session.fetch_overview()

        def refreshed(overview: dict) -> None:
            self.showModels(overview["models"])
            self.showSites(overview["sites"])

        self.runInBackground(action, signAndRefresh, refreshed, f"Cannot {action} v{version}.")

    # -- results ----------------------------------------------------------------------------------
    def selectedVersions(self) -> tuple[int, int]:
        return (self.versionIds[self.ui.beforeVersionComboBox.currentIndex],
                self.versionIds[self.ui.afterVersionComboBox.currentIndex])

    def onShowResults(self) -> None:
        if not self.versionIds:
            return
        before, after = self.selectedVersions()
        session = self.logic.requireSession()

        def show(fetched: tuple[dict, list[dict]]) -> None:
            comparison = self.logic.showResults(self._parameterNode, before, after, fetched)
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)
            self.ui.bwtLabel.text = (f"Backward transfer of v{after}: {dice_points(comparison.bwt, signed=True)} Dice points (negative = forgetting)"
                                     if comparison.bwt is not None else f"v{after} has no earlier site: no BWT yet.")

        self.runInBackground("results", lambda control: session.fetch_results(), show, "Cannot show the results.")

    # -- audit ------------------------------------------------------------------------------------
    def onAuditSiteChanged(self, index: int = 0) -> None:
        """Fetch the audit table of the chosen site for the Before/After versions on a worker."""
        self.showAuditTable([])
        site = self.ui.auditSiteComboBox.currentText
        if self.logic.session is None or not site or not self.versionIds:
            return
        before, after = self.selectedVersions()
        session = self.logic.session
        self.runInBackground("audit-cases", lambda control: session.fetch_audit_table(site, before, after),
                             self.showAuditTable, f"Cannot list the audit cases of {site}.")

    def showAuditTable(self, cases: list[CaseRegression]) -> None:
        """One row per audit case, numbers sortable, sorted by change (largest drop first)."""
        self.auditCases = {case.case_id: case for case in cases}
        table = self.ui.auditCasesTableWidget
        table.sortingEnabled = False
        table.setRowCount(len(cases))
        for row, case in enumerate(cases):
            worst = case.worst
            cells = [case.case_id, case.before, case.after, case.change,
                     None if worst is None else f"{worst[0]} {dice_points(worst[1], signed=True)}"]
            for column, value in enumerate(cells):
                item = qt.QTableWidgetItem()
                if isinstance(value, float):
                    item.setData(qt.Qt.DisplayRole, round(100 * value, 1))  # Dice points
                else:
                    item.setText("n/a" if value is None else value)
                item.setToolTip(case.structure_text())
                table.setItem(row, column, item)
        table.sortingEnabled = True
        table.sortItems(AUDIT_CHANGE_COLUMN, qt.Qt.AscendingOrder)
        self.updateGUIFromState()

    def auditCaseAt(self, row: int) -> str | None:
        item = self.ui.auditCasesTableWidget.item(row, 0)
        return None if item is None else item.text()

    def onAuditCaseClicked(self, row: int, column: int = 0) -> None:
        self.ui.auditCasesTableWidget.selectRow(row)
        self.onLoadCase()

    def onLoadCase(self) -> None:
        """Downloads (and an uncached prediction) on a worker with a cancellable progress dialog; MRML on the GUI thread."""
        site = self.ui.auditSiteComboBox.currentText
        caseId = self.auditCaseAt(self.ui.auditCasesTableWidget.currentRow())
        if caseId is None:
            return
        before, after = self.selectedVersions()
        session = self.logic.requireSession()

        def show(files: audit.AuditFiles) -> None:
            case = self.logic.showAuditFiles(files)
            self.ui.flickerButton.checked = False
            row = self.auditCases.get(caseId)
            self.ui.auditDiceLabel.text = (
                f"{site} / {caseId}: Dice v{before} {dice_points(case.dice_before)} → v{after} {dice_points(case.dice_after)}"
                f" · {case.lost_voxels} voxels lost, {case.gained_voxels} gained"
                + (f"\n{row.structure_text()}" if row is not None and row.structures else ""))
            self.checkCaseShift(case)

        self.runInBackground(
            "audit", lambda control: session.download_audit_case(site, caseId, before, after, lambda: control.cancelled),
            show, f"Cannot load case {caseId} of {site}.", progress=f"Loading {site} / {caseId} (v{before} and v{after}) ...")

    def onPreviousCase(self) -> None:
        self.onAuditCaseClicked(max(0, self.ui.auditCasesTableWidget.currentRow() - 1))

    def onNextCase(self) -> None:
        table = self.ui.auditCasesTableWidget
        self.onAuditCaseClicked(min(table.rowCount() - 1, table.currentRow() + 1))

    def onFlicker(self, swapped: bool) -> None:
        case = self.logic.session.audit_case if self.logic.session else None
        if case is not None:
            audit.show_flicker(slicer.mrmlScene, case, swapped)

    # -- site shift -------------------------------------------------------------------------------
    def onCheckShift(self) -> None:
        self.checkSiteShift(self.ui.adaptSiteComboBox.currentText)

    def checkSiteShift(self, site: str) -> None:
        """Fetch the site's shift check on a worker and show its verdict; no model yet is said in the label."""
        if not site:
            return
        client = self.logic.requireSession().client
        message = f"Cannot check the shift of site {site}."
        self.ui.siteCheckLabel.styleSheet = ""
        self.ui.siteCheckLabel.text = f"Checking the shift of site {site} (the active model runs on each of its cases) ..."

        def show(check: dict) -> None:
            self.ui.siteCheckLabel.text = shift.site_check_text(check)
            self.ui.siteCheckLabel.styleSheet = shift.site_check_style_sheet(check)

        def failed(error: BaseException) -> None:
            if isinstance(error, BackendError) and error.status == 409:
                self.ui.siteCheckLabel.text = shift.NO_MODEL_TEXT
                return
            self.ui.siteCheckLabel.text = f"The shift of site {site} was not checked."
            logging.error("%s %s", message, error)
            slicer.util.errorDisplay(f"{message}\n\n{error}")

        self.runInBackground("site-check", lambda control: client.site_check(site), show, message, onError=failed)

    def checkCaseShift(self, case: audit.AuditCase) -> None:
        """The after version's shift flag and uncertainty map of the shown case, computed by the backend from
        the image it stores (one request on a worker)."""
        session = self.logic.requireSession()
        name = f"{case.site} / {case.case_id}"
        self.ui.caseShiftLabel.styleSheet = ""
        self.ui.caseShiftLabel.text = f"Checking {name} for site shift under v{case.after_version} ..."

        def show(prediction: PredictionFile) -> None:
            if session.audit_case is not case:
                prediction.path.unlink(missing_ok=True)
                return
            audit.attach_shift(slicer.mrmlScene, case, prediction)
            self.ui.caseShiftLabel.text = case.shift.text
            self.ui.caseShiftLabel.styleSheet = case.shift.style_sheet
            audit.show_uncertainty(slicer.mrmlScene, case, self.ui.showUncertaintyCheckBox.checked)

        def failed(error: BaseException) -> None:
            logging.error("shift check of %s failed: %s", name, error)
            if session.audit_case is case:
                self.ui.caseShiftLabel.text = f"The shift of {name} was not checked: {error}"
                self.ui.caseShiftLabel.styleSheet = ""

        def fetch(control: TaskControl) -> PredictionFile:
            return session.fetch_case_uncertainty(case.site, case.case_id, case.after_version, lambda: control.cancelled)

        self.runInBackground("case-shift", fetch, show, f"Cannot show the shift of {name}.", onError=failed)

    def onRankImages(self) -> None:
        """Pick unlabelled images, upload them on a worker with a cancellable progress dialog, show their order."""
        paths = qt.QFileDialog.getOpenFileNames(self.parent, "Unlabelled images of the new site", str(self._parameterNode.siteFolder),
                                                "Images (*.nii.gz *.nii *.nrrd *.mha)")
        if not paths:
            return
        images = [Path(path) for path in paths]
        client = self.logic.requireSession().client

        def work(control: TaskControl) -> list[dict]:
            def progress(sent: int, total: int) -> None:
                control.check()
                control.report(f"Uploading {len(images)} images: {sent / 1e6:.1f} of {total / 1e6:.1f} MB; the backend "
                               "then runs the active model on each", sent / max(total, 1))
            return client.rank_images(images, on_progress=progress)

        self.runInBackground("rank", work, self.showRanking, f"The {len(images)} images were not ranked.",
                             progress=f"Ranking {len(images)} images ...")

    def showRanking(self, ranked: list[dict]) -> None:
        """One row per image in labelling order: rank, file, score and the reason; the parts of the score as tooltip."""
        table = self.ui.rankTableWidget
        table.setRowCount(len(ranked))
        for row, item in enumerate(sorted(ranked, key=lambda entry: int(entry["rank"]))):
            tip = f"uncertainty {item['uncertainty']:.3f} · novelty {item['novelty']:.3f}"
            for column, value in enumerate((str(item["rank"]), item["path"], f"{item['score']:.3f}", item["reason"])):
                cell = qt.QTableWidgetItem(value)
                cell.setToolTip(tip)
                table.setItem(row, column, cell)
        table.visible = True

    def onShowUncertainty(self, visible: bool) -> None:
        case = self.logic.session.audit_case if self.logic.session else None
        if case is not None:
            audit.show_uncertainty(slicer.mrmlScene, case, visible)



#: Set to 1 to run the end-to-end self-test (installs packages, starts a backend, trains for minutes).
HEAVY_SELF_TEST_VARIABLE = "DAKR_HEAVY_SELF_TEST"


class DAKRSegmentationTest(ScriptedLoadableModuleTest):
    """The light test always runs (ctest on the extensions build farm, Reload and Test): the module's
    logic, the backend it ships and its requirements, without installing or training anything. The
    end-to-end test (local backend, two sites, two short adapt jobs, results and the audit of one case;
    needs the PyTorch extension and a few minutes on CPU) runs only when the environment variable
    ``DAKR_HEAVY_SELF_TEST`` is 1."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_Light()
        if os.environ.get(HEAVY_SELF_TEST_VARIABLE) == "1":
            self.setUp()
            self.test_EndToEnd()
        else:
            self.delayDisplay(f"End-to-end test skipped: set {HEAVY_SELF_TEST_VARIABLE}=1 to run it")

    def test_Light(self) -> None:
        logic = DAKRSegmentationLogic()
        pythonpath, pyproject = backend_location(logic.moduleDir)
        self.assertTrue((pythonpath / "dakr" / "__init__.py").is_file())
        requirements = backend_requirements(pyproject)
        self.assertTrue(any(requirement.startswith("monai") for requirement in requirements))
        self.assertFalse(any(requirement.startswith("torch") for requirement in requirements))
        volume, segmentation = add_phantom_case(slicer.mrmlScene, "light", seed=0)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertEqual(mrmlio.find_scene_pairs(slicer.mrmlScene)[0].volume, volume)
        self.delayDisplay("Light test passed")

    def test_EndToEnd(self) -> None:
        logic = DAKRSegmentationLogic()
        store = Path(tempfile.mkdtemp(prefix="dakr-selftest-")) / "store"
        self.delayDisplay("Installing the backend's requirements if needed, then starting it")
        logic.ensureBackendDependencies()
        session = logic.startLocalBackend(store)
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
            names = {case.regressions.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)}
            self.assertEqual(names, {mrmlio.LOST, mrmlio.GAINED})
            self.delayDisplay("Test passed")
        finally:
            logic.disconnect()
            shutil.rmtree(store.parent, ignore_errors=True)
