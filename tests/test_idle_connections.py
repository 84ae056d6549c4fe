"""A backend a whole annotation team reaches stays responsive while connections idle.

Real gunicorn as `labelpilot serve` runs it, on loopback; 200 sockets held open, half of
them stopped in the middle of their headers (slowloris), while /health must answer within 1 s.
"""

from __future__ import annotations

import socket
import time

import pytest
import requests

pytestmark = pytest.mark.slow
HELD = 200


def test_health_answers_while_200_connections_idle_or_send_half_a_header(backend) -> None:
    host, port = backend.url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for i in range(HELD):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: ")  # never finished
            held.append(sock)
        deadline = time.monotonic() + 8  # past gunicorn's keep-alive and worker timeouts
        answers = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = requests.get(f"{backend.url}/health", timeout=1.0)
            answers.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(0.5)
        assert len(answers) >= 10 and max(answers) < 1.0, answers
    finally:
        for sock in held:
            sock.close()
