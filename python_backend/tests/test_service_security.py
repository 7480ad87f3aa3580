"""Attacks on the HTTP service from a web page and from the network: cross-site requests, DNS
rebinding, unauthenticated uploads, and the start-up options that keep the token and traffic safe."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import dakr.service.app as app_module
from dakr import cli
from dakr.service import create_app, serve_main
from dakr.service.security import ServiceConfigError, allowed_host_names, check_tls, read_token
from dakr.store import Store
from test_service_support import add_tiny_version, local_client, store_with_base, upload_files, write_site

API = "/api/v1"
TOKEN = "a-test-token-of-sufficient-length"
EVIL = "https://evil.example"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Site A with versions 1 and 2 (2 active)."""
    store = store_with_base(tmp_path)
    add_tiny_version(store, "A", 1)
    return store


# -- cross-site requests -------------------------------------------------------------------------
def test_cross_origin_post_is_refused_and_changes_nothing(client: TestClient, store: Store) -> None:
    response = client.post(f"{API}/models/1/activate", headers={"Origin": EVIL})
    assert response.status_code == 403
    assert "--allow-origin" in response.json()["detail"]
    assert store.active_version().id == 2
    assert "access-control-allow-origin" not in response.headers
    for origin in ("null", "http://127.0.0.1:9999", "http://localhost"):
        assert client.post(f"{API}/models/1/activate", headers={"Origin": origin}).status_code == 403, origin
    assert store.active_version().id == 2


def test_same_origin_and_originless_posts_are_served(client: TestClient, store: Store) -> None:
    assert client.post(f"{API}/models/1/activate", headers={"Origin": "http://127.0.0.1"}).status_code == 200
    assert client.post(f"{API}/models/2/activate").status_code == 200
    assert store.active_version().id == 2


def test_cross_origin_read_gets_no_cors_headers(client: TestClient) -> None:
    response = client.get(f"{API}/models", headers={"Origin": EVIL})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_allowed_origin_is_served_with_cors(store: Store) -> None:
    trusted = "https://viewer.hospital.example"
    with local_client(create_app(store.path, allowed_origins=[trusted])) as client:
        response = client.post(f"{API}/models/1/activate", headers={"Origin": trusted})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == trusted
        assert client.post(f"{API}/models/2/activate", headers={"Origin": EVIL}).status_code == 403
    assert store.active_version().id == 1


# -- DNS rebinding -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["rebind.evil.example", "rebind.evil.example:8000", "127.0.0.1.evil.example", "testserver"])
def test_foreign_host_is_refused(client: TestClient, host: str) -> None:
    response = client.get(f"{API}/sites/A/cases", headers={"Host": host})
    assert response.status_code == 421
    assert "--allow-host" in response.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1234", "[::1]:8000", "localhost."])
def test_local_host_names_are_served(client: TestClient, host: str) -> None:
    assert client.get(f"{API}/sites", headers={"Host": host}).status_code == 200


def test_configured_host_names() -> None:
    assert allowed_host_names("0.0.0.0", ["Dakr.Hospital.Example."]) == {"localhost", "127.0.0.1", "::1", "dakr.hospital.example"}
    assert "10.1.2.3" in allowed_host_names("10.1.2.3")
    assert "::" not in allowed_host_names("::")


# -- token before the body -----------------------------------------------------------------------
def test_unauthenticated_upload_is_refused_before_its_body_is_read(store: Store) -> None:
    app = create_app(store.path, token=TOKEN)
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body of an unauthenticated request must not be read")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": f"{API}/sites", "raw_path": f"{API}/sites".encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"multipart/form-data; boundary=x"),
                    (b"content-length", b"20000000")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401


def test_unauthenticated_upload_never_touches_disk(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    files = upload_files(write_site(tmp_path / "upload"))
    files.append(("images", ("big_0000.nii.gz", os.urandom(3 * 2**20), "application/octet-stream")))
    before = sorted(path for path in store.path.rglob("*"))
    with local_client(create_app(store.path, token=TOKEN)) as client:
        response = client.post(f"{API}/sites", data={"name": "B"}, files=files)
    assert response.status_code == 401
    assert list(spool.iterdir()) == []
    assert sorted(path for path in store.path.rglob("*")) == before
    assert [site.name for site in store.sites()] == ["A"]


# -- start-up options ----------------------------------------------------------------------------
def test_token_on_the_command_line_is_refused(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", str(store.path), "--token", TOKEN]) == 1
    error = capsys.readouterr().err
    assert "--token is refused" in error and "--token-file" in error and "DAKR_TOKEN" in error


def test_token_file_and_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    assert read_token(token_file, {}) == TOKEN
    assert read_token(None, {"DAKR_TOKEN": TOKEN}) == TOKEN
    assert read_token(None, {}) is None
    if os.name != "nt":
        token_file.chmod(0o644)
        with pytest.raises(ServiceConfigError, match="chmod 600"):
            read_token(token_file, {})
    token_file.write_text("  \n")
    token_file.chmod(0o600)
    with pytest.raises(ServiceConfigError, match="empty"):
        read_token(token_file, {})
    with pytest.raises(ServiceConfigError, match="cannot be read"):
        read_token(tmp_path / "missing", {})


def test_tls_options(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    check_tls(True, None, None)
    check_tls(False, str(cert), str(key))
    with pytest.raises(ServiceConfigError, match="both"):
        check_tls(True, str(cert), None)
    with pytest.raises(ServiceConfigError, match="no such file"):
        check_tls(True, str(cert), str(tmp_path / "missing.pem"))
    with pytest.raises(ServiceConfigError, match="without TLS"):
        check_tls(False, None, None)


def test_serve_passes_tls_to_uvicorn_and_refuses_unreachable_binds(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(app_module.uvicorn, "run", lambda app, **options: calls.append(options))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    assert serve_main(store.path, host="0.0.0.0", port=1, token=TOKEN, **tls) == 2
    assert "--allow-host" in capsys.readouterr().err
    assert serve_main(store.path, host="0.0.0.0", port=1, token=TOKEN) == 2
    assert "without TLS" in capsys.readouterr().err
    assert calls == []
    assert serve_main(store.path, host="0.0.0.0", port=1, token=TOKEN, allow_hosts=["dakr.example"], **tls) == 0
    assert calls[0]["ssl_certfile"] == str(cert) and calls[0]["ssl_keyfile"] == str(key)
    assert "https://0.0.0.0:1" in capsys.readouterr().err
