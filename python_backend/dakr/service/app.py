"""The FastAPI application of the HTTP API v1 and the ``dakr serve`` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from dakr import __version__
from dakr.config import ConfigError
from dakr.data.errors import DataError, SiteValidationError
from dakr.service import (
    routes_audit,
    routes_governance,
    routes_info,
    routes_jobs,
    routes_models,
    routes_shift,
    routes_sites,
)
from dakr.service.context import ServiceContext
from dakr.service.docs import add_offline_docs
from dakr.service.jobs import JobConflict, JobRunner, JobStateError
from dakr.service.uploads import UploadLimitMiddleware
from dakr.service.security import ServiceConfigError, bearer_token_dependency, check_bind, is_loopback
from dakr.store import Store, StoreError
from dakr.threads import use_torch_threads

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OPENAPI_URL = "/openapi.json"
#: Largest request body (all uploaded files together) accepted by default.
DEFAULT_MAX_UPLOAD_MB = 2048.0
#: Seconds a cancelled worker gets to checkpoint and exit before its process group is killed.
DEFAULT_CANCEL_GRACE_S = 20.0


def create_app(
    store_path: str | Path,
    *,
    token: str | None = None,
    loopback: bool = True,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
) -> FastAPI:
    """The API app serving the store at ``store_path``.

    ``loopback`` says the server listens only on this machine; otherwise a ``token`` is
    required (:class:`ServiceConfigError`). With a token every request must carry
    ``Authorization: Bearer <token>`` and the interactive docs are off; without one ``/docs``
    and ``/redoc`` are served from packaged assets. Jobs left running by
    a previous server whose worker is gone are marked ``interrupted`` at startup.
    """
    check_bind(loopback, token)
    if max_upload_mb <= 0:
        raise ServiceConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    store = Store.open(store_path)
    runner = JobRunner(store, store.path, cancel_grace_s=cancel_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_middleware(UploadLimitMiddleware, max_mb=max_upload_mb)
    app.state.context = ServiceContext(store=store, runner=runner, loopback=loopback)
    dependencies = [Depends(bearer_token_dependency(token))] if token is not None else []
    for module in (routes_info, routes_sites, routes_jobs, routes_models, routes_governance, routes_audit, routes_shift):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=dependencies)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": "<what went wrong and what to do>"}``."""

    def detail(status_code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            return JSONResponse({"detail": str(exc)}, status_code=status_code)

        return handler

    async def conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobConflict)
        return JSONResponse({"detail": str(exc), "job_id": exc.job_id}, status_code=409)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(JobConflict, conflict)
    app.add_exception_handler(JobStateError, detail(409))
    app.add_exception_handler(SiteValidationError, detail(422))
    app.add_exception_handler(DataError, detail(400))
    app.add_exception_handler(ConfigError, detail(400))
    app.add_exception_handler(StoreError, detail(400))


def serve_main(
    store_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> int:
    """Run the API server until interrupted; returns the exit code (2 for a refused configuration).

    Binding to an address other than loopback needs a ``token``. The server's own predictions use
    half the usable cores (one at a time), leaving the rest to the job workers it starts.
    """
    try:
        app = create_app(store_path, token=token, loopback=is_loopback(host), max_upload_mb=max_upload_mb)
    except (ServiceConfigError, StoreError) as exc:
        print(f"dakr serve: {exc}", file=sys.stderr)
        return 2
    use_torch_threads(concurrent=2)
    auth = "token required" if token else "no token (loopback only)"
    print(f"dakr serve: store {Path(store_path).resolve()} on http://{host}:{port}{API_PREFIX} ({auth})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
