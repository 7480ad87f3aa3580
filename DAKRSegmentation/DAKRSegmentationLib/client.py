"""HTTP client of the DAKR backend (API v1), standard library only.

Every call returns plain JSON data (dicts and lists as the API documents them) or a downloaded
file path. Every failure is a :class:`BackendError` whose message says what went wrong and what
to do; the Slicer module shows that message in a dialog as it is.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .shift import ShiftFlag

#: Major version of the backend HTTP API this module speaks.
SUPPORTED_API_MAJOR = 1
API_PREFIX = "/api/v1"
_CHUNK = 1 << 20
#: How long a prediction download may take: the backend computes an uncached prediction in the request.
PREDICTION_TIMEOUT_S = 600.0


class BackendError(RuntimeError):
    """A backend request failed; ``status`` is the HTTP status (0 when no answer came back)."""

    def __init__(self, message: str, status: int = 0, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload or {}


class BackendUnavailableError(BackendError):
    """No backend answered at the configured address."""


class BackendTimeoutError(BackendError):
    """The backend accepted the connection but did not answer in time."""


class IncompatibleBackendError(BackendError):
    """The backend speaks an API major version this module does not support."""


class ValidationFailedError(BackendError):
    """The backend rejected uploaded cases (HTTP 422); ``problems`` lists one line per problem."""

    def __init__(self, message: str, problems: list[str], payload: dict[str, Any] | None = None) -> None:
        super().__init__(message, 422, payload)
        self.problems = problems


class JobConflictError(BackendError):
    """A training job already runs (HTTP 409); ``job_id`` names it."""

    def __init__(self, message: str, job_id: str | None, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message, 409, payload)
        self.job_id = job_id


@dataclass(frozen=True)
class PredictionFile:
    """A prediction (label map or uncertainty map) saved at ``path``, and the case's shift verdict."""

    path: Path
    shift: ShiftFlag


@dataclass(frozen=True)
class UploadCase:
    """One case of a site upload: an image file and its label map file."""

    case_id: str
    image: Path
    label: Path


def check_api_version(info: dict[str, Any]) -> None:
    """Raise :class:`IncompatibleBackendError` unless ``info["api_version"]`` has a supported major."""
    version = str(info.get("api_version", ""))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_API_MAJOR:
        raise IncompatibleBackendError(
            f"The backend speaks API version {version or 'unknown'}, this module supports {SUPPORTED_API_MAJOR}.x. "
            f"Fix: update the DAKRSegmentation extension (Extensions Manager) or run a backend with API {SUPPORTED_API_MAJOR}.x."
        )


def problems_from_detail(detail: Any) -> list[str]:
    """One readable line per problem from a 422 ``detail`` (a message, or FastAPI's list of errors)."""
    if isinstance(detail, str):
        return [line.strip() for line in detail.splitlines() if line.strip()]
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict):
                location = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                message = item.get("msg") or item.get("problem") or json.dumps(item)
                lines.append(f"{location}: {message}" if location else str(message))
            else:
                lines.append(str(item))
        return lines
    return [json.dumps(detail)]


class BackendClient:
    """Talks to one backend at ``base_url`` (e.g. ``http://127.0.0.1:8765``), with an optional bearer token."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BackendError(f"{base_url!r} is not a backend address. Fix: enter a URL such as http://127.0.0.1:8765")
        self.base_url = base_url.strip().rstrip("/")
        self.token = token or None
        self.timeout_s = timeout_s

    # -- plumbing -----------------------------------------------------------------------------
    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        url = f"{self.base_url}{API_PREFIX}{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def _open(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
              headers: dict[str, str] | None = None, timeout_s: float | None = None, slow_reason: str | None = None):
        request_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            request_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self._url(path, query), data=body, method=method, headers=request_headers)
        timeout = timeout_s or self.timeout_s
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            raise self._http_error(method, path, error) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise BackendTimeoutError(
                    f"The backend at {self.base_url} did not answer {method} {path} within {timeout:g} s "
                    f"({slow_reason or 'it may be busy, or the network is slow'}). Fix: try again; if it keeps "
                    "happening, check the backend's log and load."
                ) from None
            raise BackendUnavailableError(
                f"No DAKR backend answered at {self.base_url} ({reason}). "
                "Fix: start the local backend, or check the remote address and that the server runs."
            ) from None

    def _http_error(self, method: str, path: str, error: urllib.error.HTTPError) -> BackendError:
        raw = error.read()
        try:
            payload = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            payload = {"detail": raw.decode("utf-8", "replace")[:500]}
        if not isinstance(payload, dict):
            payload = {"detail": payload}
        detail = payload.get("detail", error.reason)
        status = error.code
        if status == 401 or status == 403:
            return BackendError(f"The backend refused the token ({status}). Fix: enter the token the server was started with.", status, payload)
        if status == 422:
            problems = problems_from_detail(detail)
            return ValidationFailedError("The backend rejected the request:\n" + "\n".join(problems), problems, payload)
        if status == 409 and payload.get("job_id"):
            return JobConflictError(str(detail), str(payload["job_id"]), payload)
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return BackendError(f"{method} {path} failed ({status}): {text}", status, payload)

    def _json(self, method: str, path: str, *, query: dict[str, Any] | None = None, payload: Any = None,
              timeout_s: float | None = None, slow_reason: str | None = None) -> Any:
        body = None
        headers = {}
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        with self._open(method, path, query=query, body=body, headers=headers, timeout_s=timeout_s,
                        slow_reason=slow_reason) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def _download(self, path: str, destination: Path, query: dict[str, Any] | None = None,
                  timeout_s: float | None = None, slow_reason: str | None = None,
                  cancelled: Callable[[], bool] | None = None) -> Path:
        with self._open_download(path, destination, query, timeout_s, slow_reason) as response:
            return _save(response, path, destination, cancelled)

    def _open_download(self, path: str, destination: Path, query: dict[str, Any] | None, timeout_s: float | None,
                       slow_reason: str | None):
        """Open a ``GET`` of a file to be saved at ``destination`` (whose folder is created); the caller closes it."""
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        return self._open("GET", path, query=query, headers={"Accept": "*/*"}, timeout_s=timeout_s, slow_reason=slow_reason)

    def _post_files(self, path: str, fields: list[tuple[str, str]], files: list[tuple[str, str, Path]], *,
                    query: dict[str, Any] | None = None, timeout_s: float | None = None,
                    slow_reason: str | None = None, on_progress: Callable[[int, int], None] | None = None):
        """Open a streamed ``multipart/form-data`` POST; ``on_progress(sent, total)`` is called per chunk
        sent, and an exception it raises aborts the upload. The caller reads and closes the response."""
        body, content_type, length = _multipart(fields, files)
        if on_progress is not None:
            body.on_progress = lambda sent: on_progress(sent, length)
        headers = {"Content-Type": content_type, "Content-Length": str(length)}
        return self._open("POST", path, query=query, body=body, headers=headers, timeout_s=timeout_s, slow_reason=slow_reason)

    # -- service ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``GET /info``, checked for a supported API version."""
        info = self._json("GET", "/info", timeout_s=min(self.timeout_s, 10.0))
        check_api_version(info)
        return info

    # -- sites --------------------------------------------------------------------------------
    def sites(self) -> list[dict[str, Any]]:
        return self._json("GET", "/sites")

    def site_cases(self, site: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/sites/{_quote(site)}/cases")

    def register_site(self, name: str, cases: list[UploadCase], label_names: dict[str, int] | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """``POST /sites`` multipart; the file names carry the case ids (``<case>_0000.nii.gz`` / ``<case>.nii.gz``).

        ``on_progress(sent, total)`` is called per chunk sent; an exception it raises aborts the upload."""
        fields: list[tuple[str, str]] = [("name", name)]
        if label_names:
            fields.append(("label_names", json.dumps(label_names)))
        files: list[tuple[str, str, Path]] = []
        for case in cases:
            files.append(("images", f"{case.case_id}_0000{_suffix(case.image)}", case.image))
            files.append(("labels", f"{case.case_id}{_suffix(case.label)}", case.label))
        with self._post_files("/sites", fields, files, timeout_s=max(self.timeout_s, 600.0), on_progress=on_progress) as response:
            return json.loads(response.read())

    def register_site_from_path(self, name: str, path: str) -> dict[str, Any]:
        """``POST /sites/from-path``: the server reads an nnU-Net raw folder itself (loopback servers only)."""
        return self._json("POST", "/sites/from-path", payload={"name": name, "path": str(path)}, timeout_s=max(self.timeout_s, 600.0))

    # -- jobs ---------------------------------------------------------------------------------
    def start_adapt(self, site: str, strategy: str, config: dict[str, Any]) -> str:
        """``POST /jobs`` for an adapt job; returns the job id."""
        answer = self._json("POST", "/jobs", payload={"kind": "adapt", "site": site, "strategy": strategy, "config": config})
        return str(answer["job_id"])

    def jobs(self) -> list[dict[str, Any]]:
        return self._json("GET", "/jobs")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{_quote(job_id)}", timeout_s=min(self.timeout_s, 10.0))

    def job_events(self, job_id: str, since: int) -> tuple[list[dict[str, Any]], int]:
        """New progress events of a job from index ``since`` on, and the index to ask from next time."""
        answer = self._json("GET", f"/jobs/{_quote(job_id)}/events", query={"since": since}, timeout_s=min(self.timeout_s, 10.0))
        return list(answer["events"]), int(answer["next"])

    def job_log(self, job_id: str, lines: int = 200) -> list[str]:
        return list(self._json("GET", f"/jobs/{_quote(job_id)}/log", query={"lines": lines})["lines"])

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{_quote(job_id)}/cancel")

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{_quote(job_id)}/resume")

    # -- models and evaluation ----------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/models")

    def activate_model(self, version: int) -> dict[str, Any]:
        return self._json("POST", f"/models/{int(version)}/activate")

    def evaluation_matrix(self) -> dict[str, Any]:
        return self._json("GET", "/evaluation/matrix")

    def case_dice(self, site: str, case_id: str, before: int, after: int) -> dict[str, float | None]:
        return self._json("GET", f"/sites/{_quote(site)}/cases/{_quote(case_id)}/dice", query={"before": before, "after": after})

    def site_audit_dice(self, site: str, before: int, after: int) -> list[dict[str, Any]]:
        """Per-structure Dice of every audit case of ``site`` under two versions (one dict per case)."""
        return self._json("GET", f"/sites/{_quote(site)}/audit-dice", query={"before": before, "after": after})

    def download_case_file(self, site: str, case_id: str, kind: str, destination: Path, version: int | None = None,
                           cancelled: Callable[[], bool] | None = None) -> Path:
        """Download a stored case's ``image``, ``label`` or ``prediction`` (of ``version``) as NIfTI.

        A prediction not computed yet is computed by the backend while the request waits, so it gets
        :data:`PREDICTION_TIMEOUT_S` and a timeout message that says so."""
        if kind not in ("image", "label", "prediction"):
            raise ValueError(f"kind must be image, label or prediction, got {kind!r}")
        if kind == "prediction" and version is None:
            raise ValueError("a prediction needs the model version")
        path = f"/sites/{_quote(site)}/cases/{_quote(case_id)}/{kind}"
        if kind == "prediction":
            return self._download(path, destination, {"version": version}, timeout_s=max(self.timeout_s, PREDICTION_TIMEOUT_S),
                                  slow_reason=f"it computes the prediction of v{version} for {case_id} on request when none is "
                                              "stored; on a CPU a large case can take minutes", cancelled=cancelled)
        return self._download(path, destination, cancelled=cancelled)

    def case_uncertainty(self, site: str, case_id: str, destination: Path, version: int | None = None,
                         cancelled: Callable[[], bool] | None = None) -> PredictionFile:
        """``GET /sites/{site}/cases/{case_id}/uncertainty``: the voxel-wise uncertainty (normalised entropy,
        0-1) of ``version`` (default: the active one) on a stored case, computed by the backend from the image it
        stores and saved at ``destination`` (NIfTI), and the case's shift verdict from the response headers."""
        path = f"/sites/{_quote(site)}/cases/{_quote(case_id)}/uncertainty"
        with self._open_download(path, destination, {"version": version}, max(self.timeout_s, PREDICTION_TIMEOUT_S),
                                 f"it runs the model on {case_id} in the request; on a CPU a large case can take "
                                 "minutes") as response:
            try:
                shift = ShiftFlag.from_headers(response.headers)
            except ValueError as error:
                raise BackendError(f"GET {path} answered without a usable shift verdict: {error}") from None
            return PredictionFile(_save(response, path, destination, cancelled), shift)

    # -- site shift ---------------------------------------------------------------------------
    def site_check(self, site: str) -> dict[str, Any]:
        """``GET /sites/{site}/check``: how far a registered site is from the known ones, the active
        model's Dice on it and the plain-words ``verdict``. The backend analyses every case of the site
        in the request, so it gets :data:`PREDICTION_TIMEOUT_S`; no model yet is a :class:`BackendError`
        with status 409."""
        return self._json("GET", f"/sites/{_quote(site)}/check", timeout_s=max(self.timeout_s, PREDICTION_TIMEOUT_S),
                          slow_reason=f"it runs the active model on every case of {site} on request; on a CPU that "
                                      "can take minutes")

    def rank_images(self, images: list[Path], seed: int = 0,
                    on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """``POST /rank``: unlabelled volumes of a new site in labelling order (``rank`` 1 first), each
        with its ``path`` (the uploaded file name), ``uncertainty``, ``novelty``, ``score`` and ``reason``.
        ``on_progress(sent, total)`` as for :meth:`register_site`."""
        names = [Path(image).name for image in images]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"more than one image is named {', '.join(repeated)}; the order names images by file name. "
                             "Fix: rename or leave out the duplicates")
        files = [("images", name, Path(image)) for name, image in zip(names, images)]
        with self._post_files("/rank", [], files, query={"seed": seed}, timeout_s=max(self.timeout_s, PREDICTION_TIMEOUT_S),
                              slow_reason="it runs the active model on every uploaded image in the request",
                              on_progress=on_progress) as response:
            return json.loads(response.read())


def _save(response, path: str, destination: Path, cancelled: Callable[[], bool] | None) -> Path:
    """Stream a response body to ``destination`` through a ``.part`` file, removed when the download
    fails or is cancelled (nothing half-written is left behind)."""
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".part")
    try:
        with partial.open("wb") as handle:
            while chunk := response.read(_CHUNK):
                if cancelled is not None and cancelled():
                    raise BackendError(f"Download of {path} cancelled.")
                handle.write(chunk)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination


def _quote(segment: str) -> str:
    return urllib.parse.quote(str(segment), safe="")


def _suffix(path: Path) -> str:
    name = Path(path).name.lower()
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix


class _StreamedBody:
    """An iterable request body that streams files instead of holding them in memory."""

    def __init__(self, parts: list[bytes | Path]) -> None:
        self.parts = parts
        #: Called with the bytes sent so far before each chunk goes out.
        self.on_progress: Callable[[int], None] | None = None

    def _chunks(self) -> Iterator[bytes]:
        for part in self.parts:
            if isinstance(part, Path):
                with part.open("rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        yield chunk
            else:
                yield part

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._chunks():
            if self.on_progress is not None:
                self.on_progress(sent)
            sent += len(chunk)
            yield chunk


def _multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, Path]]) -> tuple[_StreamedBody, str, int]:
    """A ``multipart/form-data`` body, its content type and its length in bytes."""
    boundary = f"dakr-{uuid.uuid4().hex}"
    parts: list[bytes | Path] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
        )
    for name, filename, path in files:
        parts.append(
            (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode("utf-8")
        )
        parts.append(Path(path))
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("utf-8"))
    length = sum(part.stat().st_size if isinstance(part, Path) else len(part) for part in parts)
    return _StreamedBody(parts), f"multipart/form-data; boundary={boundary}", length
