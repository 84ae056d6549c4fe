"""The credentials each blueprint checks for itself (basic auth for LS, a bearer token for
admins). A blueprint installs its check with `Blueprint.before_request`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import Request

from labelpilot.adapters.http_errors import ApiError


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS, as in Label Studio's backends)."""

    user: str
    password: str

    def check(self, request: Request) -> None:
        given = request.authorization
        ok = (given is not None  # bytes: a non-ASCII str would make compare_digest raise
              and hmac.compare_digest((given.username or "").encode(), self.user.encode())
              and hmac.compare_digest((given.password or "").encode(), self.password.encode()))
        if not ok:
            raise ApiError(401, "HTTP basic auth required: set the backend's user/password in "
                                "the LS model settings",
                           headers={"WWW-Authenticate": 'Basic realm="labelpilot"'})


def basic_auth(user: str | None, password: str | None) -> BasicAuth | None:
    """Basic auth when both are set, else none."""
    return BasicAuth(user, password) if user and password else None


ADMIN_TOKEN_HEADER = "X-Labelpilot-Admin-Token"


@dataclass(frozen=True)
class BearerToken:
    """The admin endpoints' token: `Authorization: Bearer <token>`, or `X-Labelpilot-Admin-Token:
    <token>` (for clients and proxies whose Authorization header carries the basic auth)."""

    token: str

    def check(self, request: Request) -> None:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "").strip()
        if not given:
            header = request.headers.get("Authorization", "")
            given = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer "
                                f"<token>' or '{ADMIN_TOKEN_HEADER}: <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="labelpilot admin"'})
