"""HTTP API v1 for the Slicer module: a FastAPI app over a store, with jobs in worker subprocesses.

- :func:`create_app` builds the app (used by tests and by :func:`serve_main`);
- :func:`serve_main` is ``dakr serve STORE [--host H] [--port P] [--token-file F] [--ssl-certfile C --ssl-keyfile K] ...``;
- :func:`worker_main` is the hidden ``dakr worker STORE JOB_ID`` that runs one job.
"""

from dakr.service.app import create_app, serve_main
from dakr.service.worker import worker_main

__all__ = ["create_app", "serve_main", "worker_main"]
