"""One connection to a backend and the module's work on it: register a site, adapt, compare
versions, audit a case. No Qt here: the Slicer widget and the tests drive the same calls."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import slicer

from . import audit, mrmlio, regressions, results
from .client import BackendClient, PredictionFile, UploadCase, ValidationFailedError
from .jobs import RESUMABLE_STATES, JobMonitor

#: Strategies the backend offers; ``dakr`` is the default.
STRATEGIES = ("dakr", "replay", "finetune", "ewc", "lwf", "joint", "distill", "dakr-cna", "dakr-cra")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class AdaptSettings:
    """The adapt settings the module exposes, as backend config overrides (defaults = backend defaults)."""

    epochs: int = 4
    buffer_samples: int = 64
    lambda_cna: float = 0.3
    lambda_cra: float = 0.25
    #: Further dotted overrides, e.g. a tiny network for self-tests.
    extra: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        return {
            "train.epochs": int(self.epochs),
            "continual.buffer_samples": int(self.buffer_samples),
            "continual.lambda_cna": float(self.lambda_cna),
            "continual.lambda_cra": float(self.lambda_cra),
            **self.extra,
        }


@dataclass
class SiteUpload:
    """A new site's cases written to files, ready to upload."""

    name: str
    folder: Path
    cases: list[UploadCase]
    #: The label set a first site defines from its segment names (``None``: the store has one).
    new_label_names: dict[str, int] | None
    #: One line per case naming its scene nodes, added to validation errors.
    legend: list[str]


def is_loopback(url: str) -> bool:
    """Whether a backend URL points at this machine."""
    return urllib.parse.urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def discover_nnunet_folder(folder: Path) -> tuple[list[UploadCase], dict[str, int] | None]:
    """Cases of an nnU-Net raw folder (``imagesTr/<case>_0000.<ext>``, ``labelsTr/<case>.<ext>``) and
    the label names of its ``dataset.json``, if any."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise ValueError(f"{folder} is not in nnU-Net raw layout. Fix: choose a folder holding imagesTr/ and labelsTr/")
    labels = {_stem(path): path for path in labels_dir.iterdir() if _stem(path) is not None}
    cases = []
    for image in sorted(images_dir.iterdir()):
        stem = _stem(image)
        if stem is None:
            continue
        case_id = stem[:-5] if stem.endswith("_0000") else stem
        if case_id not in labels:
            raise ValueError(f"{image} has no label map labelsTr/{case_id}.<ext>. Fix: add it or remove the image")
        cases.append(UploadCase(case_id, image, labels[case_id]))
    label_names = None
    dataset = folder / "dataset.json"
    if dataset.exists():
        label_names = {str(k): int(v) for k, v in json.loads(dataset.read_text(encoding="utf-8")).get("labels", {}).items()}
    return cases, label_names


def _stem(path: Path) -> str | None:
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


class Session:
    """A connected backend plus the scene the results and audit cases go to."""

    def __init__(self, client: BackendClient, scene: "slicer.vtkMRMLScene", work_dir: Path) -> None:
        self.client = client
        self.scene = scene
        self.work_dir = Path(work_dir)
        self.info = client.info()
        self.audit_case: audit.AuditCase | None = None
        #: Segment colours by label name from Slicer's terminologies (``None``: not looked up yet).
        self.label_colors: dict[str, tuple[float, float, float]] | None = None

    def refresh(self) -> dict[str, Any]:
        self.info = self.client.info()
        return self.info

    @property
    def label_names(self) -> dict[str, int] | None:
        return self.info.get("label_names")

    @property
    def device_text(self) -> str:
        device = self.info.get("device") or {}
        return f"{device.get('type', '?')} ({device.get('name', 'unknown')})"

    @property
    def gpu_unused(self) -> bool:
        """A GPU is present but the backend's torch cannot use it."""
        return bool((self.info.get("device") or {}).get("cuda_available_but_unused"))

    # -- sites ------------------------------------------------------------------------------------
    def register_site_from_scene(self, name: str, pairs: list[mrmlio.ScenePair]) -> dict[str, Any]:
        """Write each pair to files on its volume's grid and upload them as a new site (blocking)."""
        return self.upload_site(self.prepare_site_upload(name, pairs))

    def prepare_site_upload(self, name: str, pairs: list[mrmlio.ScenePair]) -> SiteUpload:
        """Write each pair to files on its volume's grid (GUI thread: reads MRML nodes)."""
        if len(pairs) < 2:
            raise ValueError("a site needs at least 2 cases. Fix: add more image/segmentation pairs")
        label_names = self.label_names
        new_label_names = None
        if label_names is None:
            segmentations = [pair.labels for pair in pairs if pair.labels.IsA("vtkMRMLSegmentationNode")]
            if segmentations:
                new_label_names = mrmlio.label_names_from_segmentations(segmentations)
                label_names = new_label_names
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self._work_folder()))
        try:
            cases = [
                UploadCase(
                    pair.case_id,
                    mrmlio.write_volume(pair.volume, folder / f"{pair.case_id}_0000.nii.gz"),
                    mrmlio.write_labels(pair.labels, pair.volume, folder / f"{pair.case_id}.nii.gz", label_names),
                )
                for pair in pairs
            ]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        legend = [f"case {p.case_id} = volume '{p.volume.GetName()}' + labels '{p.labels.GetName()}'" for p in pairs]
        return SiteUpload(name, folder, cases, new_label_names, legend)

    def upload_site(self, upload: SiteUpload, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Upload prepared files as a new site and remove them (no MRML: safe on a worker thread)."""
        try:
            return self.client.register_site(upload.name, upload.cases, upload.new_label_names, on_progress)
        except ValidationFailedError as error:
            raise ValidationFailedError(f"{error}\n\n" + "\n".join(upload.legend), error.problems, error.payload) from None
        finally:
            shutil.rmtree(upload.folder, ignore_errors=True)

    def register_site_from_folder(self, name: str, folder: Path) -> dict[str, Any]:
        """Register an nnU-Net raw folder: read in place by a local backend, uploaded to a remote one."""
        if is_loopback(self.client.base_url):
            return self.client.register_site_from_path(name, str(Path(folder).resolve()))
        cases, label_names = discover_nnunet_folder(folder)
        return self.client.register_site(name, cases, label_names)

    # -- jobs -------------------------------------------------------------------------------------
    def start_adapt(self, site: str, strategy: str, settings: AdaptSettings) -> JobMonitor:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}. Fix: choose one of {', '.join(STRATEGIES)}")
        return JobMonitor(self.client, self.client.start_adapt(site, strategy, settings.overrides()))

    def job_to_follow(self) -> tuple[str, str] | None:
        """The running job, else the newest interrupted/cancelled adapt job: ``(job id, state)``."""
        running = self.info.get("running_job")
        if running:
            return str(running), "running"
        resumable = [job for job in self.client.jobs() if job.get("kind") == "adapt" and job.get("state") in RESUMABLE_STATES]
        if not resumable:
            return None
        newest = max(resumable, key=lambda job: job.get("updated", ""))
        return str(newest["id"]), str(newest["state"])

    # -- versions and results ---------------------------------------------------------------------
    def default_versions(self, models: list[dict[str, Any]]) -> tuple[int, int] | None:
        """(previous, active): the active version and its parent (itself when it has none)."""
        active = next((model for model in models if model.get("active")), None)
        if active is None:
            return None
        parent = active.get("parent")
        return (int(parent) if parent is not None else int(active["id"])), int(active["id"])

    def fetch_results(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The evaluation matrix and the models (no MRML: safe on a worker thread)."""
        return self.client.evaluation_matrix(), self.client.models()

    def fetch_overview(self) -> dict[str, Any]:
        """Fresh info, models, sites and the job to follow (no MRML: safe on a worker thread)."""
        self.refresh()
        return {"models": self.client.models(), "sites": self.client.sites(), "job": self.job_to_follow()}

    def update_results(self, before: int, after: int, table: "slicer.vtkMRMLTableNode",
                       plot_table: "slicer.vtkMRMLTableNode", chart: "slicer.vtkMRMLPlotChartNode",
                       fetched: tuple[dict[str, Any], list[dict[str, Any]]] | None = None) -> results.VersionComparison:
        """Fill the comparison table and the Dice-across-versions plot from the backend's numbers
        (``fetched``: what :meth:`fetch_results` returned; fetched here when ``None``)."""
        matrix, models = fetched or self.fetch_results()
        comparison = results.compare_versions(matrix, models, before, after)
        results.fill_results_table(table, comparison)
        results.fill_dice_plot(self.scene, chart, plot_table, matrix, models, after)
        return comparison

    # -- audit ------------------------------------------------------------------------------------
    def load_audit_case(self, site: str, case_id: str, before: int, after: int) -> audit.AuditCase:
        """Load one stored case with both versions' segmentations, replacing the previous audit case (blocking)."""
        return self.show_audit_files(self.download_audit_case(site, case_id, before, after))

    def download_audit_case(self, site: str, case_id: str, before: int, after: int,
                            cancelled: Callable[[], bool] | None = None) -> audit.AuditFiles:
        """Download a case, both predictions and its Dice (no MRML: safe on a worker thread)."""
        if self.label_names is None:
            self.refresh()
        return audit.download_audit_case(self.client, site, case_id, before, after, self._work_folder() / "audit", cancelled)

    def show_audit_files(self, files: audit.AuditFiles,
                         colors: dict[str, tuple[float, float, float]] | None = None) -> audit.AuditCase:
        """Load downloaded audit files into the scene, replacing the previous audit case (GUI thread);
        ``colors``: segment colours by label name (from the terminologies)."""
        if self.audit_case is not None:
            self.audit_case.remove()
            self.audit_case = None
        self.audit_case = audit.load_audit_files(self.scene, files, self.label_names or {}, colors)
        return self.audit_case

    def fetch_case_uncertainty(self, site: str, case_id: str, version: int,
                               cancelled: Callable[[], bool] | None = None) -> PredictionFile:
        """The uncertainty map and shift verdict of ``version`` on a stored case, computed by the backend from
        the image it stores, in a new file of the work folder that :func:`audit.attach_shift` loads and
        removes (no MRML: safe on a worker thread)."""
        destination = self._work_folder() / f"uncertainty-{uuid.uuid4().hex}.nii.gz"
        return self.client.case_uncertainty(site, case_id, destination, version, cancelled)

    def fetch_audit_table(self, site: str, before: int, after: int) -> list[regressions.CaseRegression]:
        """The per-case, per-structure Dice of a site's audit cases (no MRML: safe on a worker thread)."""
        return regressions.case_regressions(self.client.site_audit_dice(site, before, after))

    def _work_folder(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir
