"""The FastAPI application of the HTTP API v1 and the ``dakr serve`` entry point."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from dakr import __version__
from dakr.config import ConfigError
from dakr.data.errors import DataError, ImageGridError, SiteValidationError
from dakr.memory_budget import default_job_memory_mb
from dakr.service import (
    routes_audit,
    routes_governance,
    routes_info,
    routes_jobs,
    routes_models,
    routes_shift,
    routes_sites,
)
from dakr.service.context import ServiceContext, clean_temp_area, public_message
from dakr.service.docs import add_offline_docs
from dakr.service.failures import storage_failure
from dakr.service.jobs import JobConflict, JobRunner
from dakr.service.parent_watch import watch_parent
from dakr.service.schemas import ErrorOut
from dakr.service.uploads import UploadLimitMiddleware
from dakr.service.security import (
    LOCAL_HOST_NAMES,
    BearerTokenGuard,
    HostOriginGuard,
    ServiceConfigError,
    allowed_host_names,
    check_bind,
    check_reachable,
    check_tls,
    is_loopback,
)
from dakr.store import SitePurgedError, Store, StoreError
from dakr.store.lock import StoreBusy
from dakr.threads import use_torch_threads

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OPENAPI_URL = "/openapi.json"
#: Largest request body (all uploaded files together) accepted by default.
DEFAULT_MAX_UPLOAD_MB = 2048.0
#: Every route answers an invalid request with 422 and one message (not FastAPI's list of errors).
_INVALID_REQUEST: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "invalid request; the message says which field"}
}
#: Seconds a cancelled worker gets to checkpoint and exit before its process group is killed.
DEFAULT_CANCEL_GRACE_S = 20.0


def create_app(
    store_path: str | Path,
    *,
    token: str | None = None,
    loopback: bool = True,
    allowed_hosts: Iterable[str] = LOCAL_HOST_NAMES,
    allowed_origins: Iterable[str] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_job_memory_mb: float | None = None,
    cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
) -> FastAPI:
    """The API app serving the store at ``store_path``.

    ``loopback`` says the server listens only on this machine; otherwise a ``token`` is
    required (:class:`ServiceConfigError`). With a token every request must carry
    ``Authorization: Bearer <token>`` and the interactive docs are off; without one ``/docs``
    and ``/redoc`` are served from packaged assets. Requests must name one of ``allowed_hosts``
    in their ``Host`` header; state-changing requests from a web page must come from the
    server's own origin or one of ``allowed_origins`` (which also get CORS). Jobs left running
    by a previous server whose worker is gone are marked ``interrupted`` at startup. An adapt job
    whose settings need more than ``max_job_memory_mb`` (default: half this machine's memory,
    :func:`default_job_memory_mb`) is refused before it starts.
    """
    check_bind(loopback, token)
    if max_upload_mb <= 0:
        raise ServiceConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    job_memory_mb = default_job_memory_mb() if max_job_memory_mb is None else max_job_memory_mb
    if job_memory_mb <= 0:
        raise ServiceConfigError(f"--max-job-memory-mb must be positive, got {job_memory_mb}")
    store = Store.open(store_path)
    runner = JobRunner(store, store.path, cancel_grace_s=cancel_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clean_temp_area(store)
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(
        title="DAKRSegmentation backend",
        version=__version__,
        summary="Continual multi-site segmentation: sites, adapt jobs, model versions, audit and prediction.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if token is None else None,
    )
    if token is None:
        add_offline_docs(app, OPENAPI_URL)
    origins = list(allowed_origins)
    # Added innermost first: the Host/Origin guard runs first, the upload limit last.
    app.add_middleware(UploadLimitMiddleware, max_mb=max_upload_mb)
    if token is not None:
        app.add_middleware(BearerTokenGuard, token=token)
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["Authorization", "Content-Type"]
        )
    app.add_middleware(HostOriginGuard, allowed_hosts=allowed_hosts, allowed_origins=origins)
    app.state.context = ServiceContext(
        store=store, runner=runner, loopback=loopback, max_job_memory_bytes=int(job_memory_mb * 2**20)
    )
    for module in (routes_info, routes_sites, routes_jobs, routes_models, routes_governance, routes_audit, routes_shift):
        app.include_router(module.router, prefix=API_PREFIX, responses=_INVALID_REQUEST)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": "<what went wrong and what to do>"}``, never a bare 500 for bad input.

    A full disk answers 507 and a storage I/O error 503, whatever exception carries them.
    Messages name the store by its folder name, never by its absolute path.
    """

    def reply(request: Request, status_code: int, message: str, **extra: Any) -> Response:
        body = {"detail": public_message(request.app.state.context.store, message), **extra}
        return JSONResponse(body, status_code=status_code)

    def detail(status_code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            failure = storage_failure(exc, request.app.state.context.store.name)
            if failure is not None:
                return reply(request, failure.status, failure.message)
            return reply(request, status_code, str(exc))

        return handler

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = reply(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobConflict)
        return reply(request, 409, str(exc), job_id=exc.job_id)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
        return reply(request, 422, f"invalid request: {problems}")

    async def storage(request: Request, exc: Exception) -> Response:
        failure = storage_failure(exc, request.app.state.context.store.name)
        if failure is None:
            raise exc
        return reply(request, failure.status, failure.message)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(JobConflict, conflict)
    app.add_exception_handler(SiteValidationError, detail(422))
    app.add_exception_handler(ImageGridError, detail(422))
    app.add_exception_handler(DataError, detail(400))
    app.add_exception_handler(ConfigError, detail(400))
    app.add_exception_handler(StoreBusy, detail(409))
    app.add_exception_handler(SitePurgedError, detail(410))
    app.add_exception_handler(StoreError, detail(400))
    app.add_exception_handler(OSError, storage)
    app.add_exception_handler(sqlite3.Error, storage)


def serve_main(
    store_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    allow_hosts: Iterable[str] = (),
    allow_origins: Iterable[str] = (),
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_job_memory_mb: float | None = None,
    parent_pid: int | None = None,
) -> int:
    """Run the API server until interrupted; returns the exit code (2 for a refused configuration).

    Binding to an address other than loopback needs a ``token`` and TLS (``ssl_certfile`` and
    ``ssl_keyfile``); requests must address the server by a local name, the bound address or
    one of ``allow_hosts``. The server's own predictions use half the usable cores (one at a
    time), leaving the rest to the job workers it starts. With ``parent_pid`` the server shuts
    down when that process ends.
    """
    loopback = is_loopback(host)
    hosts = allowed_host_names(host, allow_hosts)
    try:
        app = create_app(
            store_path,
            token=token,
            loopback=loopback,
            allowed_hosts=hosts,
            allowed_origins=allow_origins,
            max_upload_mb=max_upload_mb,
            max_job_memory_mb=max_job_memory_mb,
        )
        check_tls(loopback, ssl_certfile, ssl_keyfile)
        check_reachable(host, hosts)
    except (ServiceConfigError, StoreError) as exc:
        print(f"dakr serve: {exc}", file=sys.stderr)
        return 2
    use_torch_threads(concurrent=2)
    auth = "token required" if token else "no token (loopback only)"
    scheme = "https" if ssl_certfile else "http"
    print(
        f"dakr serve: store {Path(store_path).name!r} on {scheme}://{host}:{port}{API_PREFIX} ({auth}); "
        f"answers to host names {', '.join(sorted(hosts))}",
        file=sys.stderr,
    )
    if parent_pid is not None:
        watch_parent(parent_pid)
    uvicorn.run(app, host=host, port=port, log_level="info", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    return 0
