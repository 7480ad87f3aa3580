"""The README's "API at a glance" curl examples, run as written against a live loopback server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import SimpleITK as sitk

from dakr.store import Store
from test_service_e2e import free_port
from test_service_support import TINY_CONFIG, wait_for, write_site

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### API at a glance"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]


def readme_api_blocks() -> list[str]:
    """The bash code blocks of the README section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return re.findall(r"```bash\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


def test_the_section_covers_the_main_flow() -> None:
    script = "\n".join(readme_api_blocks())
    for route in ('"$API/sites"', '"$API/jobs"', "/events?since=", '"$API/models"', "/activate", '"$API/predict"', "/prediction?version=",
                  "/uncertainty?version="):
        assert route in script, route


def test_readme_curl_examples_run_against_a_live_server(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    site = write_site(tmp_path / "site")
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "dakr", "serve", str(store.path), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(lambda: _ready(api, server, log_path), 60, "the server to answer")
        env = {**os.environ, "API": api, "SITE": str(site), "CONFIG": json.dumps(TINY_CONFIG)}
        work = tmp_path / "work"
        work.mkdir()
        script = "set -euo pipefail\n" + "\n".join(readme_api_blocks())
        done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout, done.stderr, log_path.read_text())
    finally:
        server.kill()
        server.wait()
    assert '"state":"succeeded"' in done.stdout.replace(" ", ""), done.stdout
    assert store.active_version().id == 1 and store.site("first").n_audit == 1
    image = sitk.ReadImage(str(next((site / "imagesTr").iterdir())))
    assert sitk.ReadImage(str(work / "prediction.nii.gz")).GetSize() == image.GetSize()
    for name in ("audit_image", "audit_label", "audit_prediction", "audit_uncertainty"):
        assert sitk.ReadImage(str(work / f"{name}.nii.gz")).GetDimension() == 3
    assert "x-dakr-out-of-distribution:" in done.stdout.lower()
    assert '"before"' in done.stdout and '"after"' in done.stdout


def _ready(api: str, server: subprocess.Popen, log_path: Path) -> bool:
    assert server.poll() is None, log_path.read_text()
    try:
        return httpx.get(f"{api}/info", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
