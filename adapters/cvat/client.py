"""A cvat-sdk client for CVAT's address and credentials (`CvatAccess`, from the settings:
``CVAT_URL`` plus ``CVAT_ACCESS_TOKEN`` or ``CVAT_USER`` + ``CVAT_PASSWORD``; ``CVAT_ORG``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any


class CvatConfigError(RuntimeError):
    """CVAT's address or credentials are missing."""


@dataclass(frozen=True)
class CvatAccess:
    url: str | None = None
    token: str | None = None  # a personal access token
    user: str | None = None
    password: str | None = None
    organization: str | None = None

    def with_url(self, url: str | None) -> CvatAccess:
        return replace(self, url=url) if url else self

    @property
    def has_credentials(self) -> bool:
        return bool(self.token or (self.user and self.password))


def cvat_client(access: CvatAccess) -> Any:
    from cvat_sdk import make_client

    if not access.url:
        raise CvatConfigError("CVAT's address is unknown: set CVAT_URL (e.g. "
                              "http://cvat.example:8080) for the worker")
    if access.token:
        client = make_client(access.url, access_token=access.token)
    elif access.user and access.password:
        client = make_client(access.url, credentials=(access.user, access.password))
    else:
        raise CvatConfigError("no CVAT credentials: set CVAT_ACCESS_TOKEN, or CVAT_USER and "
                              "CVAT_PASSWORD, for the worker")
    if access.organization:
        client.organization_slug = access.organization
    return client


def json_body(response: Any) -> Any:
    """The JSON of a cvat-sdk call made with `_parse_response=False` (raw JSON is robust
    across CVAT versions, where the SDK's models insist on every field of their own)."""
    return json.loads(response.data)


def json_pages(call: Any, **filters: Any) -> list[dict[str, Any]]:
    """Every result of a paginated CVAT list endpoint (`call`: e.g. `api.jobs_api.list`)."""
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        _, response = call(page=page, page_size=100, _parse_response=False, **filters)
        body = json_body(response)
        out.extend(body.get("results") or [])
        if not body.get("next"):
            return out
        page += 1
