"""A stand-in for ``PythonSlicer`` (a POSIX shell script): records its command lines and runs
``-m dakr init`` / ``-m dakr serve`` as a test asks, e.g. a tiny server that answers ``/info``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fake_http import INFO

SCRIPT = """#!/bin/sh
# "$1 $2 $3" is "-m dakr <verb>"
echo "$@" >> "{calls}"
echo "PYTHONPATH=$PYTHONPATH" >> "{calls}"
case "$3" in
  init) {init} ;;
  serve) {serve} ;;
esac
"""

INFO_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
token = open(args[args.index("--token-file") + 1]).read().strip()
answers = {{"/api/v1/info": {info}, "/api/v1/models": [], "/api/v1/sites": [], "/api/v1/jobs": []}}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer " + token and self.path in answers
        body = json.dumps(answers[self.path] if ok else {{"detail": "refused"}}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def stand_in_python(folder: Path, init: str = "exit 0", serve: str = "echo 'dakr serve: port in use' >&2; exit 3") -> Path:
    """Write the stand-in into ``folder``; its calls are appended to ``folder/calls.txt``."""
    path = folder / "PythonSlicer"
    path.write_text(SCRIPT.format(calls=folder / "calls.txt", init=init, serve=serve))
    path.chmod(0o755)
    return path


def info_server_command(folder: Path) -> str:
    """A ``serve`` action that answers ``/info`` (and empty lists) with the token from ``--token-file``."""
    script = folder / "info_server.py"
    script.write_text(INFO_SERVER.format(info=json.dumps(INFO).replace("null", "None").replace("false", "False")))
    return f'exec "{sys.executable}" "{script}" "$@"'
