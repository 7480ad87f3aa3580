"""A prediction sent back as a file with the case's shift verdict in the response headers, and the
OpenAPI description of those headers."""

from __future__ import annotations

import shutil
from pathlib import Path

import SimpleITK as sitk
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from dakr.data.io import write_image
from dakr.shift import ShiftedPrediction

#: The verdict headers, as documented in the OpenAPI ``responses`` of the routes that send them.
SHIFT_HEADERS_DOC = {
    "X-DAKR-Shift-Score": {"description": "the case's shift score (distance to the nearest known site's mean)",
                           "schema": {"type": "string"}},
    "X-DAKR-Shift-Threshold": {"description": "the out-of-distribution threshold of the version", "schema": {"type": "string"}},
    "X-DAKR-Out-Of-Distribution": {"description": "true when the score is above the threshold", "schema": {"type": "string"}},
    "X-DAKR-Nearest-Site": {"description": "the known site the case is closest to", "schema": {"type": "string"}},
}


def shift_headers(result: ShiftedPrediction) -> dict[str, str]:
    """The response headers that carry ``result``'s shift verdict."""
    return {
        "X-DAKR-Shift-Score": f"{result.shift_score:.4f}",
        "X-DAKR-Shift-Threshold": f"{result.threshold:.4f}",
        "X-DAKR-Out-Of-Distribution": "true" if result.out_of_distribution else "false",
        "X-DAKR-Nearest-Site": result.nearest_site,
    }


def shift_file_response(folder: Path, image: sitk.Image, name: str, result: ShiftedPrediction, media_type: str) -> FileResponse:
    """``image`` written to ``folder/name`` and sent with ``result``'s verdict headers; ``folder`` (a
    temp folder of the store) is removed once the response is sent. The caller removes it when this raises."""
    target = folder / name
    write_image(image, target)
    cleanup = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
    return FileResponse(target, media_type=media_type, filename=name, headers=shift_headers(result), background=cleanup)
