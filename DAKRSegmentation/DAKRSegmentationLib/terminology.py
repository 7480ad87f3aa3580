"""Segment colours from Slicer's terminologies: a label whose name is the meaning of a terminology
type (``Liver``, ``White matter``, ...) gets that type's recommended display colour."""

from __future__ import annotations

from typing import Iterable

import slicer
import vtk


def terminology_colors(logic: "slicer.vtkSlicerTerminologiesModuleLogic | None",
                       names: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Recommended colours (RGB, 0..1) of the names matching a type in any loaded terminology
    (case-insensitive, first match wins); names without a match are left out."""
    wanted = {name.lower(): name for name in names}
    found: dict[str, tuple[float, float, float]] = {}
    if logic is None or not wanted:
        return found
    terminologies = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(terminologies)
    category, term = slicer.vtkSlicerTerminologyCategory(), slicer.vtkSlicerTerminologyType()
    for terminology in (terminologies.GetValue(i) for i in range(terminologies.GetNumberOfValues())):
        for category_index in range(logic.GetNumberOfCategoriesInTerminology(terminology)):
            logic.GetNthCategoryInTerminology(terminology, category_index, category)
            for type_index in range(logic.GetNumberOfTypesInTerminologyCategory(terminology, category)):
                logic.GetNthTypeInTerminologyCategory(terminology, category, type_index, term)
                name = wanted.get((term.GetCodeMeaning() or "").lower())
                if name is not None and name not in found:
                    found[name] = tuple(value / 255.0 for value in term.GetRecommendedDisplayRGBValue())
                    if len(found) == len(wanted):
                        return found
    return found


def apply_colors(segmentation: "slicer.vtkMRMLSegmentationNode", colors: dict[str, tuple[float, float, float]]) -> None:
    """Colour the segments whose name has a colour in ``colors``."""
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(index)
        if segment.GetName() in colors:
            segment.SetColor(*colors[segment.GetName()])
