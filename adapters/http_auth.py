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
        ok = (given is not None
              and hmac.compare_digest(given.username or "", self.user)
              and hmac.compare_digest(given.password or "", self.password))
        if not ok:
            raise ApiError(401, "HTTP basic auth required: set the backend's user/password in "
                                "the LS model settings",
                           headers={"WWW-Authenticate": 'Basic realm="labelpilot"'})


def basic_auth(user: str | None, password: str | None) -> BasicAuth | None:
    """Basic auth when both are set, else none."""
    return BasicAuth(user, password) if user and password else None


@dataclass(frozen=True)
class BearerToken:
    """`Authorization: Bearer <token>` (the admin endpoints)."""

    token: str

    def check(self, request: Request) -> None:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given, self.token):
            raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer "
                                "<token>'")
