"""Shared set-up of the module tests: import paths, a bare MRML scene as Slicer's data layer has it,
and a real backend started on loopback for the end-to-end tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "DAKRSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer  # noqa: E402  (the PyPI slicer-core data layer)

_converters_registered = False


def register_segmentation_converters() -> None:
    """What Slicer's Segmentations module does at start-up: make binary labelmaps constructible."""
    global _converters_registered
    if not _converters_registered:
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        _converters_registered = True


def new_scene() -> "slicer.vtkMRMLScene":
    """A scene with the view nodes Slicer's layout manager would create (layout, Red/Yellow/Green, 3D view 1)."""
    register_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    scene.AddNewNodeByClass("vtkMRMLLayoutNode").SetSingletonTag("vtkMRMLLayoutNode")
    for name in ("Red", "Yellow", "Green"):
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
    view = slicer.vtkMRMLViewNode()
    view.SetLayoutName("1")
    view.SetSingletonTag("1")
    scene.AddNode(view)
    return scene


@pytest.fixture
def scene() -> "slicer.vtkMRMLScene":
    scene = new_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def backend_python() -> str:
    """The Python that runs ``-m dakr serve`` in tests (in Slicer this is PythonSlicer)."""
    return os.environ.get("DAKR_TEST_PYTHON", sys.executable)
