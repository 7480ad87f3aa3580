"""Who may use the service: loopback binding, the bearer token and safe client-given names."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Callable

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dakr.data.names import validate_name

#: Shortest token accepted; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_LENGTH = 16
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


def check_bind(loopback: bool, token: str | None) -> None:
    """Refuse an unsafe configuration: a non-loopback bind without a token, or a short token."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ServiceConfigError(f"the token must have at least {MIN_TOKEN_LENGTH} characters; {_TOKEN_HINT}")
    if not loopback and token is None:
        raise ServiceConfigError(
            "refusing to listen on a non-loopback address without a token: anyone on the network could read "
            f"patient images and start jobs. Fix: pass --token-file FILE (or --token T), {_TOKEN_HINT}; "
            "or bind to 127.0.0.1 and use an SSH tunnel"
        )


def bearer_token_dependency(expected: str) -> Callable[..., None]:
    """A FastAPI dependency that accepts only ``Authorization: Bearer <expected>``."""
    scheme = HTTPBearer(auto_error=False, description="The token the server was started with (--token / --token-file).")
    expected_bytes = expected.encode("utf-8")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if not hmac.compare_digest(given, expected_bytes):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                "with the token the server was started with",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


def safe_name(name: str | None, kind: str) -> str:
    """``name`` if it is a valid site/case/file name, else HTTP 400 explaining the rule."""
    try:
        return validate_name(name or "", kind)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
