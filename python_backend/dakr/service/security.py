"""Who may use the service: binding rules, Host/Origin checks, the bearer token and safe names.

The checks that guard every request run as ASGI middleware, before any route and before the
request body is read:

- :class:`HostOriginGuard` refuses a ``Host`` the server does not answer to (DNS rebinding)
  and a state-changing request from a foreign web page (``Origin`` present and not allowed);
- :class:`BearerTokenGuard` refuses a request without the server's token, so an
  unauthenticated upload is never received, let alone written to disk.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from dakr.data.names import validate_name

#: Shortest token accepted; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_LENGTH = 16
#: Environment variable that may hold the token instead of ``--token-file``.
TOKEN_ENV = "DAKR_TOKEN"
#: Host names every server answers to (it can always be reached from its own machine).
LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
#: Methods that change state; a foreign ``Origin`` on them is refused.
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN_HINT = "generate one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""


class ServiceConfigError(ValueError):
    """The server cannot start with the given options; the message says which option to change."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def check_bind(loopback: bool, token: str | None) -> None:
    """Refuse an unsafe configuration: a non-loopback bind without a token, or a short token."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ServiceConfigError(f"the token must have at least {MIN_TOKEN_LENGTH} characters; {_TOKEN_HINT}")
    if not loopback and token is None:
        raise ServiceConfigError(
            "refusing to listen on a non-loopback address without a token: anyone on the network could read "
            f"patient images and start jobs. Fix: pass --token-file FILE (or set {TOKEN_ENV}), {_TOKEN_HINT}; "
            "or bind to 127.0.0.1 and use an SSH tunnel"
        )


def check_tls(loopback: bool, certfile: str | None, keyfile: str | None) -> None:
    """Refuse half a TLS configuration, unreadable files, and a non-loopback bind without TLS."""
    if (certfile is None) != (keyfile is None):
        raise ServiceConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ServiceConfigError(f"{option} {path}: no such file. Fix: give the PEM file of the server's certificate/key")
    if not loopback and certfile is None:
        raise ServiceConfigError(
            "refusing to listen on a non-loopback address without TLS: the token and patient images would cross "
            "the network in clear text. Fix: pass --ssl-certfile CERT.pem --ssl-keyfile KEY.pem, or bind to "
            "127.0.0.1 behind a TLS reverse proxy or an SSH tunnel"
        )


def check_reachable(bind_host: str, allowed_hosts: Iterable[str]) -> None:
    """Refuse a wildcard bind (``0.0.0.0``, ``::``) whose clients would all be refused for their ``Host``."""
    if _is_wildcard(bind_host) and set(allowed_hosts) <= set(LOCAL_HOST_NAMES):
        raise ServiceConfigError(
            f"--host {bind_host} listens on every interface, but requests are only served when they address the "
            "server by a name it knows. Fix: add --allow-host NAME for each name or address clients use "
            "(e.g. --allow-host dakr.hospital.example)"
        )


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names served: the local names, a specific bind address and ``extra`` names.

    A wildcard bind (``0.0.0.0``, ``::``) adds nothing: name the addresses clients use in ``extra``.
    """
    names = {*LOCAL_HOST_NAMES, *(name.strip().lower().rstrip(".") for name in extra)}
    if not _is_wildcard(bind_host):
        names.add(bind_host.strip("[]").lower())
    return frozenset(name.strip("[]") for name in names if name)


def read_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` or the :data:`TOKEN_ENV` variable (``None`` when neither is set).

    A token file readable by other users is refused on POSIX (like ``ssh`` refuses an open key).
    """
    environ = os.environ if environ is None else environ
    if token_file is None:
        token = environ.get(TOKEN_ENV, "").strip()
        return token or None
    path = Path(token_file)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServiceConfigError(
            f"--token-file {path}: cannot be read ({exc.strerror}). "
            "Fix: write the token (16 or more characters) into that file, readable only by you (chmod 600)"
        ) from exc
    if os.name != "nt" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServiceConfigError(f"--token-file {path} can be read by other users. Fix: chmod 600 {path}")
    if not token:
        raise ServiceConfigError(f"--token-file {path} is empty; {_TOKEN_HINT}")
    return token


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``Example.org.:443`` -> ``example.org``)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class HostOriginGuard:
    """Refuse requests to a foreign ``Host`` (421) and state-changing ones from a foreign ``Origin`` (403).

    ``Host`` must name this server (:func:`allowed_host_names`), which defeats DNS rebinding:
    a page on ``rebind.evil.example`` that resolves to 127.0.0.1 still sends its own name. A
    POST/PUT/PATCH/DELETE that carries an ``Origin`` must come from the server's own origin or
    one of ``allowed_origins`` (``--allow-origin``), so a web page the user opens cannot drive
    the backend. Clients that are not browsers (the Slicer module, curl) send no ``Origin``.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = frozenset(allowed_hosts)
        self.allowed_origins = frozenset(origin.rstrip("/").lower() for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if _host_name(host) not in self.allowed_hosts:
            message = (
                f"this server does not answer to the host name {host!r}. Fix: address it as "
                f"{' or '.join(sorted(self.allowed_hosts))}, or restart it with --allow-host NAME"
            )
            await JSONResponse({"detail": message}, status_code=status.HTTP_421_MISDIRECTED_REQUEST)(scope, receive, send)
            return
        origin = headers.get("origin")
        if scope.get("method") in STATE_CHANGING_METHODS and origin is not None and not self._origin_allowed(origin, scope, host):
            message = (
                f"requests from the web page origin {origin!r} are refused. Fix: restart the server with "
                "--allow-origin ORIGIN if that page is trusted"
            )
            await JSONResponse({"detail": message}, status_code=status.HTTP_403_FORBIDDEN)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, scope: Scope, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        own = f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
        return origin == own or origin in self.allowed_origins


class BearerTokenGuard:
    """Refuse every request without ``Authorization: Bearer <token>`` (401) before its body is read."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("authorization", "").encode("utf-8")
        if not hmac.compare_digest(given, self.expected):
            message = (
                "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                "with the token the server was started with"
            )
            response = JSONResponse(
                {"detail": message}, status_code=status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def safe_name(name: str | None, kind: str) -> str:
    """``name`` if it is a valid site/case/file name, else HTTP 400 explaining the rule."""
    try:
        return validate_name(name or "", kind)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
