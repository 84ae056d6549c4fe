"""gunicorn's worker class for `labelpilot serve`: uvicorn's (see labelpilot.asgi), except that
a request its HTTP parser rejects (an invalid chunk size, a malformed request line or header)
gets a JSON 400 like every other error of the API, not uvicorn's plain-text one. The worker
keeps serving: only that connection is closed."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn_worker import UvicornWorker


def bad_request(reason: str) -> bytes:
    """A complete HTTP/1.1 400 response with a JSON body, closing the connection."""
    body = json.dumps({"status": "error", "error": f"{reason} The request is not valid HTTP/1.1 "
                       "(request line, headers or chunked body): fix the client or the proxy "
                       "in front."}).encode()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return head + body


class JsonErrorsProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol (h11, or httptools when installed) with a JSON 400."""

    transport: Any

    def send_400_response(self, msg: str) -> None:
        self.transport.write(bad_request(msg))
        self.transport.close()


class Worker(UvicornWorker):
    """`gunicorn -k labelpilot.http_worker.Worker`."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**UvicornWorker.CONFIG_KWARGS,
                                               "http": JsonErrorsProtocol}
