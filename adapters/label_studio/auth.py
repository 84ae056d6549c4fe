"""Authorization headers for calls to Label Studio: legacy tokens and JWT personal access tokens."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import requests


class LabelStudioAuthError(RuntimeError):
    """The token could not be used (refresh refused, LS unreachable)."""


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT without verifying it, or None when `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, json.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


class TokenAuth:
    """Builds the header for one LS server and token.

    A legacy key gives ``Token <key>``. A personal access token (a refresh JWT) is exchanged at
    ``/api/token/refresh/`` for a short-lived access JWT, reused until shortly before it expires.
    """

    REFRESH_MARGIN_S = 30.0

    def __init__(self, base_url: str, token: str, session: requests.Session | None = None,
                 timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.token = token.strip()
        self._session = session or requests.Session()
        self._timeout = timeout
        self._access: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        claims = jwt_claims(self.token)
        self.kind = "legacy" if claims is None else (
            "refresh" if claims.get("token_type") == "refresh" else "access")

    def header(self) -> dict[str, str]:
        if self.kind == "legacy":
            return {"Authorization": f"Token {self.token}"}
        if self.kind == "access":
            return {"Authorization": f"Bearer {self.token}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def _access_token(self) -> str:
        with self._lock:
            if self._access and time.time() < self._expires_at - self.REFRESH_MARGIN_S:
                return self._access
            url = f"{self.base_url}/api/token/refresh/"
            try:
                response = self._session.post(url, json={"refresh": self.token},
                                              timeout=self._timeout)
            except requests.RequestException as exc:
                raise LabelStudioAuthError(f"could not reach {url}: {exc}") from exc
            if response.status_code != 200:
                raise LabelStudioAuthError(
                    f"Label Studio refused the personal access token ({response.status_code} at "
                    f"{url}): create a new one in Account & Settings and set LABEL_STUDIO_API_KEY"
                )
            access = response.json().get("access", "")
            claims = jwt_claims(access) or {}
            self._access = access
            self._expires_at = float(claims.get("exp", time.time() + 300))
            return access
