"""A cvat-sdk client from the environment.

``CVAT_URL`` (e.g. ``http://cvat.example:8080``) plus either ``CVAT_ACCESS_TOKEN`` (a personal
access token) or ``CVAT_USER`` + ``CVAT_PASSWORD``; ``CVAT_ORG`` selects an organization.
"""

from __future__ import annotations

import os
from typing import Any


class CvatConfigError(RuntimeError):
    """CVAT's address or credentials are missing."""


def cvat_client(url: str | None = None, token: str | None = None, user: str | None = None,
                password: str | None = None) -> Any:
    from cvat_sdk import make_client

    url = url or os.environ.get("CVAT_URL")
    token = token or os.environ.get("CVAT_ACCESS_TOKEN")
    user = user or os.environ.get("CVAT_USER")
    password = password or os.environ.get("CVAT_PASSWORD")
    if not url:
        raise CvatConfigError("CVAT's address is unknown: set CVAT_URL (e.g. "
                              "http://cvat.example:8080) for the worker")
    if token:
        client = make_client(url, access_token=token)
    elif user and password:
        client = make_client(url, credentials=(user, password))
    else:
        raise CvatConfigError("no CVAT credentials: set CVAT_ACCESS_TOKEN, or CVAT_USER and "
                              "CVAT_PASSWORD, for the worker")
    if os.environ.get("CVAT_ORG"):
        client.organization_slug = os.environ["CVAT_ORG"]
    return client
