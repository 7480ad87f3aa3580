"""Shared helpers of the service tests: tiny synthetic sites, tiny model versions, job polling.

Imported by test_service_api.py, test_service_jobs.py and test_service_e2e.py; holds no tests.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dakr.config import ExperimentConfig, apply_overrides
from dakr.data.site import discover_site
from dakr.nets import build_network
from dakr.pipeline import NETWORK_PREFIX
from dakr.service.processes import SPAWN_OPTIONS
from dakr.store import EvaluationRecord, JobRecord, Store, VersionInfo

LABELS = {"background": 0, "A": 1, "B": 2}
SPACING = (0.9, 1.1, 2.0)
ORIGIN = (-12.0, 7.5, 3.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
SHAPE_ZYX = (6, 32, 32)
#: A first-stage config small enough to train in seconds on a CPU.
TINY_CONFIG: dict[str, Any] = {
    "preprocess.target_spacing": None,
    "net.filters": [4, 8, 16],
    "net.patch_size": [16, 16],
    "train.epochs": 1,
    "train.steps_per_epoch": 3,
    "train.batch_size": 2,
    "train.checkpoint_every": 1,
    "continual.buffer_samples": 8,
    "continual.buffer_batch_size": 2,
}


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    """A test client that addresses the app as the local Slicer module does (``Host: 127.0.0.1``)."""
    return TestClient(app, base_url="http://127.0.0.1", **kwargs)


def volume(array: np.ndarray) -> sitk.Image:
    """An image of ``array`` (z, y, x) with a non-trivial geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def case_volumes(index: int, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """(image, label map) of a synthetic case: two bright boxes labelled 1 and 2 on noise."""
    rng = np.random.default_rng(seed * 100 + index)
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    label[1:5, 4 : 12 + index, 5:14] = 1
    label[2:6, 16:26, 14 : 22 + index] = 2
    image = rng.normal(0.0, 1.0, SHAPE_ZYX).astype(np.float32) + 4.0 * label
    return volume(image), volume(label)


def write_site(root: Path, n_cases: int = 4, suffix: str = ".nii.gz", seed: int = 0) -> Path:
    """A site folder in nnU-Net raw layout (imagesTr/<case>_0000, labelsTr/<case>, dataset.json with LABELS)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS}))
    for index in range(n_cases):
        image, label = case_volumes(index, seed)
        sitk.WriteImage(image, str(root / "imagesTr" / f"case{index:02d}_0000{suffix}"))
        sitk.WriteImage(label, str(root / "labelsTr" / f"case{index:02d}{suffix}"))
    return root


def encoded(image: sitk.Image, suffix: str = ".nii.gz") -> bytes:
    """The bytes of ``image`` written in the format of ``suffix``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"volume{suffix}"
        sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()


def decoded(data: bytes, suffix: str = ".nii.gz") -> sitk.Image:
    """An image from the bytes of a file in the format of ``suffix``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"volume{suffix}"
        path.write_bytes(data)
        return sitk.ReadImage(str(path))


def upload_files(site_dir: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` for POST /sites from a site folder in nnU-Net raw layout."""
    files = []
    for field, folder in (("images", "imagesTr"), ("labels", "labelsTr")):
        for path in sorted((site_dir / folder).iterdir()):
            files.append((field, (path.name, path.read_bytes(), "application/octet-stream")))
    return files


def tiny_config() -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), TINY_CONFIG)


def add_tiny_version(
    store: Store, site: str, parent: int | None, seed: int = 0, overrides: dict[str, Any] | None = None, activate: bool = True
) -> VersionInfo:
    """A model version of an untrained tiny network (``overrides`` on the tiny config), stored as the pipeline stores them."""
    config = apply_overrides(tiny_config(), overrides or {})
    network = build_network(config.net, len(LABELS))
    tensors = {NETWORK_PREFIX + name: value.detach().clone() for name, value in network.state_dict().items()}
    return store.add_version(
        parent=parent, site=site, strategy="dakr", config=config.to_dict(), seed=seed, tensors=tensors, buffer=None,
        activate=activate,
    )


def store_with_base(root: Path) -> Store:
    """A store under ``root`` with site A (4 cases, a quarter for audit) and an untrained tiny base version."""
    store = Store.init(root / "store")
    store.add_site("A", discover_site(write_site(root / "A")), audit_fraction=0.25)
    add_tiny_version(store, "A", None)
    return store


def record_dice(store: Store, version: int, site: str, dice_a: float, dice_b: float) -> None:
    """Record the same per-class Dice for every case of a site."""
    store.record_evaluations(
        [
            EvaluationRecord(version, site, case.case_id, {"A": dice_a, "B": dice_b}, {"A": 1.0, "B": 1.0})
            for case in store.cases(site)
        ]
    )


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def as_upload(name: str, data: bytes) -> tuple[str, io.BytesIO, str]:
    return name, io.BytesIO(data), "application/octet-stream"


@contextmanager
def fake_worker(store: Store, params: dict, kind: str = "adapt") -> Iterator[tuple[JobRecord, subprocess.Popen]]:
    """A running job whose 'worker' is a sleeping process in its own group (its argv names the job)."""
    job = store.create_job(kind, params)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", job.id], **SPAWN_OPTIONS)
    try:
        yield store.update_job(job.id, state="running", pid=process.pid), process
    finally:
        process.kill()
        process.wait()
