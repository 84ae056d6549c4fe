"""LabelStudioClient against a real local HTTP server: retries, and one header for every path."""

from __future__ import annotations

import base64
import http.server
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import ClassVar

import pytest

from labelpilot.adapters.label_studio.client import LabelStudioApiError, LabelStudioClient
from tests.helpers import serve_handler


def jwt(claims: dict) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


ACCESS = jwt({"token_type": "access", "exp": time.time() + 86400})  # long: a suite runs for minutes
REFRESH = jwt({"token_type": "refresh", "exp": time.time() + 86400})


class FakeLabelStudio(http.server.BaseHTTPRequestHandler):
    """503 twice then 200 on /flaky/<key>; 503 always on /down; a PAT refresh endpoint."""

    hits: ClassVar[Counter[str]] = Counter()
    headers_seen: ClassVar[list[tuple[str, str | None]]] = []

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = f"{self.command} {self.path.split('?')[0]}"
        FakeLabelStudio.hits[key] += 1
        FakeLabelStudio.headers_seen.append((key, self.headers.get("Authorization")))
        if self.path == "/api/token/refresh/":
            self._answer(200, {"access": ACCESS})
        elif self.path.startswith("/flaky/") and FakeLabelStudio.hits[key] <= 2:
            self._answer(503, {"detail": "busy"})
        elif self.path.startswith("/flaky/"):
            self._answer(200, {"ok": True})
        else:
            self._answer(503, {"detail": "down"})

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_handler(FakeLabelStudio) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    FakeLabelStudio.hits.clear()
    FakeLabelStudio.headers_seen.clear()


def client(url: str, token: str = "legacykey") -> LabelStudioClient:
    return LabelStudioClient(url, token, retries=3, backoff=0.01, timeout=5)


def test_an_idempotent_call_is_retried_through_503s(server):
    assert client(server).get("/flaky/get") == {"ok": True}
    assert FakeLabelStudio.hits["GET /flaky/get"] == 3
    assert client(server).put("/flaky/put", {"x": 1}) == {"ok": True}
    assert FakeLabelStudio.hits["PUT /flaky/put"] == 3


def test_a_post_is_sent_once_even_when_label_studio_answers_503(server):
    with pytest.raises(LabelStudioApiError, match="503 for POST /flaky/post") as caught:
        client(server).post("/flaky/post", {"title": "x"})
    assert caught.value.status == 503
    assert FakeLabelStudio.hits["POST /flaky/post"] == 1


def test_retries_end_and_the_last_status_is_reported(server):
    with pytest.raises(LabelStudioApiError, match="503 for GET /down") as caught:
        client(server).get("/down")
    assert caught.value.status == 503
    assert FakeLabelStudio.hits["GET /down"] == 4  # the call and 3 retries


def test_the_sdk_sends_the_same_header_and_never_repeats_a_post(server):
    from label_studio_sdk.core.api_error import ApiError

    legacy = client(server)
    with pytest.raises(ApiError):
        legacy.sdk.projects.create(title="x", label_config="<View/>")
    assert FakeLabelStudio.hits["POST /api/projects/"] == 1
    assert FakeLabelStudio.headers_seen == [("POST /api/projects/", "Token legacykey")]


def test_a_personal_access_token_is_exchanged_once_for_json_and_sdk_calls(server):
    from label_studio_sdk.core.api_error import ApiError

    pat = client(server, REFRESH)
    assert pat.get("/flaky/pat") == {"ok": True}
    with pytest.raises(ApiError):
        pat.sdk.projects.create(title="x", label_config="<View/>")
    assert FakeLabelStudio.hits["POST /api/token/refresh/"] == 1
    sent = {header for key, header in FakeLabelStudio.headers_seen if "token" not in key}
    assert sent == {f"Bearer {ACCESS}"}


def test_an_unreachable_label_studio_is_named_in_the_error():
    from labelpilot.embedded_redis import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioApiError, match="could not reach Label Studio"):
        client(closed).get("/api/projects")
    with pytest.raises(ValueError, match="starts with '/'"):
        client(closed).get("api/projects")
