"""A tiny scripted HTTP server for tests of how the module handles backend answers and errors.

Each test declares the answers it needs, ``{("GET", "/api/v1/info"): (200, {...})}``, optionally with
response headers as a third item; a value may also be a function of the recorded request. Every request is recorded for assertions.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Route = Answer | Callable[[Request], Answer]


class FakeBackend:
    """Serve ``routes`` on a free loopback port until :meth:`close`."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = dict(routes)
        self.requests: list[Request] = []
        #: Seconds every answer is delayed by (a slow or distant backend).
        self.delay_s = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parsed.path, urllib.parse.parse_qs(parsed.query),
                                  dict(self.headers), self.rfile.read(length) if length else b"")
                fake.requests.append(request)
                time.sleep(fake.delay_s)
                route = fake.routes.get((self.command, parsed.path))
                answer = (404, {"detail": f"no route {self.command} {parsed.path}"}) if route is None else (
                    route(request) if callable(route) else route)
                status, body, headers = (*answer, {})[:3]
                data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


INFO = {
    "product": "dakr",
    "version": "0.1.0",
    "api_version": "1.0",
    "device": {"type": "cpu", "name": "CPU", "cuda_available_but_unused": False},
    "label_names": {"background": 0, "shell": 1, "core": 2},
    "active_version": None,
    "running_job": None,
}

#: ``GET /api/v1/sites/B/check`` as the backend answers it (the contract test rebuilds it with the backend's own code).
SITE_CHECK = {
    "site": "B",
    "version": 1,
    "known_sites": ["A"],
    "threshold": 1.2,
    "median_shift": 0.8,
    "mmd": {"A": 0.01},
    "nearest_site": "A",
    "unlike_known": False,
    "dice": 0.81,
    "dice_per_structure": {"shell": 0.85, "core": 0.77},
    "known_sites_dice": 0.84,
    "adapt_recommended": False,
    "cases": [{"case_id": "b1", "split": "train", "shift_score": 0.8, "nearest_site": "A", "dice": 0.81,
               "dice_per_structure": {"shell": 0.85, "core": 0.77}}],
    "verdict": "looks like site A (median shift 0.80, threshold 1.20); current model Dice 81.0 vs 84.0 on known sites "
               "— adaptation optional",
}


def shift_headers(score: float, threshold: float, nearest_site: str = "A") -> dict[str, str]:
    """The shift headers of a prediction (``POST /api/v1/predict``, ``GET .../cases/{case_id}/uncertainty``),
    formatted as the backend formats them."""
    return {"X-DAKR-Shift-Score": f"{score:.4f}", "X-DAKR-Shift-Threshold": f"{threshold:.4f}",
            "X-DAKR-Out-Of-Distribution": "true" if score > threshold else "false", "X-DAKR-Nearest-Site": nearest_site}
