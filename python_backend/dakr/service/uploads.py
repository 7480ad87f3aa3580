"""Uploaded volumes: safe names, format check by content, pairing images with label maps, and
reading them only in a limited child process."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

import SimpleITK as sitk
from fastapi import HTTPException, UploadFile, status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dakr.data.errors import DataError, ImageTooLargeError, SiteValidationError
from dakr.data.io import image_suffix, read_image, sniff_format
from dakr.data.site import SiteSpec, case_id_from_image, site_from_pairs
from dakr.isolation import CheckAbortedError, check_image_isolated, register_site_isolated
from dakr.service.security import safe_name
from dakr.store import SiteInfo, Store

#: Bytes read to recognise a format (a NIfTI-1 header is 348 bytes; gzip needs a little more).
HEAD_BYTES = 4096
#: The format each accepted file ending must contain.
SUFFIX_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".seg.nrrd": "nrrd", ".mha": "mha"}
#: The file ending written for each format.
FORMAT_SUFFIXES = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}
_FORMATS_HINT = "send NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage (.mha) volumes"


def check_volume(name: str, stream: BinaryIO) -> str:
    """Format (``"nifti"``, ``"nrrd"``, ``"mha"``) of an uploaded volume, checked by its content.

    HTTP 415 when the file ending is not a volume format or the content does not match it.
    ``stream`` is left at its start.
    """
    try:
        expected = SUFFIX_FORMATS[image_suffix(name)]
    except DataError as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{name}: unsupported file type; {_FORMATS_HINT}") from exc
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    found = sniff_format(head)
    if found != expected:
        content = f"{found} data" if found else "not a NIfTI, NRRD or MetaImage volume"
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"{name}: the file name says {expected} but the content is {content}; {_FORMATS_HINT} with matching file names",
        )
    return expected


def save_volume(upload: UploadFile, folder: Path) -> Path:
    """Check an uploaded volume (name 400, format 415) and copy it into ``folder`` under its own name."""
    name = safe_name(upload.filename, "file")
    check_volume(name, upload.file)
    target = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} was uploaded twice; send each file once")
    with target.open("wb") as handle:
        shutil.copyfileobj(upload.file, handle)
    return target


def site_spec_from_uploads(
    images: list[UploadFile], labels: list[UploadFile], folder: Path, label_names: dict[str, int] | None
) -> SiteSpec:
    """Save the uploads below ``folder`` and pair images with label maps by case id.

    The case id of ``case01_0000.nii.gz`` and of ``case01.nii.gz`` is ``case01``. An image without
    a label map (or the reverse) is paired with the missing file's expected name, so site
    validation reports every such case together with all other problems.
    """
    image_paths = [save_volume(upload, folder / "images") for upload in images]
    label_paths = [save_volume(upload, folder / "labels") for upload in labels]
    labels_by_case: dict[str, list[Path]] = {}
    for path in label_paths:
        labels_by_case.setdefault(case_id_from_image(path), []).append(path)
    duplicates = [
        DataError(path, f"is one of {len(paths)} label maps for case {case_id!r}", "upload one label map per case")
        for case_id, paths in labels_by_case.items()
        if len(paths) > 1
        for path in paths
    ]
    if duplicates:
        raise SiteValidationError(duplicates)
    pairs = []
    for image in image_paths:
        case_id = case_id_from_image(image)
        label = labels_by_case.pop(case_id, [folder / "labels" / f"{case_id}{image_suffix(image)}"])[0]
        pairs.append((image, label))
    for case_id, (label,) in labels_by_case.items():
        pairs.append((folder / "images" / f"{case_id}_0000{image_suffix(label)}", label))
    return site_from_pairs(pairs, label_names)


def relative_problems(error: SiteValidationError, folder: Path) -> SiteValidationError:
    """The same problems with each file named as uploaded (``images/<name>``, ``labels/<name>``)."""
    return SiteValidationError([relative_error(problem, folder) for problem in error.problems])


def relative_error(error: DataError, folder: Path) -> DataError:
    """The same error of the same class with its file named relative to ``folder`` (the upload's)."""
    path = Path(error.file)
    shown = path.relative_to(folder) if path.is_relative_to(folder) else path
    return type(error)(shown if str(shown) != "." else "upload", error.problem, error.fix)


def register_site_files(store: Store, name: str, spec: SiteSpec, folder: Path, *, audit_fraction: float, seed: int) -> SiteInfo:
    """Validate, copy and register a site in a memory- and time-limited process, naming files below ``folder``.

    ``SiteValidationError`` lists the data's problems (422); HTTP 413 when reading needs more
    memory than allowed, 422 when the check ran past its time limit or crashed.
    """
    try:
        register_site_isolated(store.path, name, spec, audit_fraction=audit_fraction, seed=seed)
    except SiteValidationError as exc:
        raise relative_problems(exc, folder) from exc
    except DataError as exc:
        raise _http_error(relative_error(exc, folder)) from exc
    return store.site(name)


def read_uploaded_volume(path: Path) -> sitk.Image:
    """Read an uploaded volume after checking it in a memory- and time-limited process.

    HTTP 413 for a volume over the size limits, 422 when the check ran past its time limit or
    crashed, 400 for an unreadable volume; messages name the file as uploaded.
    """
    try:
        check_image_isolated(path)
    except DataError as exc:
        raise _http_error(relative_error(exc, path.parent)) from exc
    return read_image(path)


def _http_error(error: DataError) -> HTTPException:
    if isinstance(error, ImageTooLargeError):
        return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error))
    if isinstance(error, CheckAbortedError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error))
    return HTTPException(status.HTTP_400_BAD_REQUEST, str(error))


class UploadLimitMiddleware:
    """Refuse request bodies larger than ``max_mb`` megabytes with HTTP 413 and a JSON message.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body
    without one (chunked) is counted while it streams in.
    """

    def __init__(self, app: ASGIApp, max_mb: float) -> None:
        self.app = app
        self.max_bytes = int(max_mb * 2**20)
        self.message = (
            f"the request is larger than this server's limit of {max_mb:g} MB. Fix: send fewer or smaller "
            "files per request, or restart the server with a larger --max-upload-mb"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.message)
            return message

        await self.app(scope, counting_receive, send)
