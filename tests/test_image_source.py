"""ImageSource against a real local HTTP server: allowlist, redirects, limits, auth scoping."""

import http.server
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from labelpilot.adapters.label_studio.auth import TokenAuth, jwt_claims
from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from tests.helpers import serve_handler

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        Recorder.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/redirect-out"):
            self.send_response(302)
            self.send_header("Location", "http://other.invalid/x.png")
            self.end_headers()
            return
        if self.path.startswith("/unsized-big"):  # no Content-Length: the limit must still hold
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"z" * 5000)
            return
        if self.path.startswith("/big"):
            body = b"y" * 5000
        elif self.path.startswith("/missing"):
            self.send_response(404)
            self.end_headers()
            return
        else:
            body = PNG
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_handler(Recorder) as url:
        yield url


def source(url: str | None, **kw) -> ImageSource:
    return ImageSource(LabelStudioClient(url, "legacykey") if url else None, **kw)


def test_relative_urls_go_to_label_studio_with_the_token(server):
    Recorder.seen.clear()
    assert source(server).fetch("/data/upload/1/a.png") == PNG
    assert Recorder.seen == [("/data/upload/1/a.png", "Token legacykey")]


def test_other_hosts_need_the_allowlist_and_never_get_the_token(server):
    ls_like = "http://localhost:1"  # LS is elsewhere; the image server is only allowlisted
    with pytest.raises(ImageSourceError, match="not allowed.*LABELPILOT_ALLOWED_HOSTS"):
        source(ls_like).fetch(f"{server}/img.png")
    Recorder.seen.clear()
    allowed = source(ls_like, allowed_hosts=frozenset({"127.0.0.1"}))
    assert allowed.fetch(f"{server}/img.png") == PNG
    assert Recorder.seen == [("/img.png", None)]


def test_redirect_to_a_host_outside_the_allowlist_is_refused(server):
    with pytest.raises(ImageSourceError, match="redirects to host 'other.invalid'"):
        source(server).fetch("/redirect-out")


def test_size_limit_and_http_errors_are_clear(server):
    with pytest.raises(ImageSourceError, match="over the limit.*LABELPILOT_MAX_IMAGE_BYTES"):
        source(server, max_bytes=1000).fetch("/big.png")
    with pytest.raises(ImageSourceError, match="over the limit"):
        source(server, max_bytes=1000).fetch("/unsized-big.png")
    with pytest.raises(ImageSourceError, match="HTTP 404"):
        source(server).fetch("/missing.png")
    from labelpilot.embedded_redis import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ImageSourceError, match="could not download"):
        source(closed).fetch("/data/upload/1/a.png")


def test_relative_url_without_label_studio_address_says_what_to_set():
    with pytest.raises(ImageSourceError, match="LABEL_STUDIO_URL"):
        source(None).fetch("/data/upload/1/a.png")
    with pytest.raises(ImageSourceError, match="no image URL"):
        source(None).fetch("")
    with pytest.raises(ImageSourceError, match="unsupported image URL scheme"):
        source(None).fetch("ftp://x/y.png")


def test_cloud_links_go_through_the_presign_endpoint(server):
    Recorder.seen.clear()
    source(server).fetch("s3://bucket/a.png", task_id=7)
    assert Recorder.seen[0][0] == "/tasks/7/presign/?fileuri=czM6Ly9idWNrZXQvYS5wbmc="
    with pytest.raises(ImageSourceError, match="task id"):
        source(server).fetch("gs://bucket/a.png")


def test_local_files_are_read_from_disk_inside_the_document_root(tmp_path: Path, server):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(PNG)
    src = source(server, local_files_root=tmp_path)
    Recorder.seen.clear()
    assert src.fetch("/data/local-files/?d=images/a.png") == PNG
    assert src.fetch(f"{server}/data/local-files/?d=images%2Fa.png") == PNG
    assert Recorder.seen == []  # no HTTP at all
    with pytest.raises(ImageSourceError, match="outside the document root"):
        src.fetch("/data/local-files/?d=../../etc/passwd")
    with pytest.raises(ImageSourceError, match="does not exist"):
        src.fetch("/data/local-files/?d=images/nope.png")


def test_token_kinds_are_told_apart():
    import base64
    import json

    def jwt(claims: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"

    assert jwt_claims("0123456789abcdef") is None
    assert TokenAuth("http://ls", "0123456789abcdef").header() == {
        "Authorization": "Token 0123456789abcdef"}
    assert TokenAuth("http://ls", jwt({"token_type": "refresh"})).kind == "refresh"
    access = jwt({"token_type": "access", "exp": 9e9})
    assert TokenAuth("http://ls", access).header() == {"Authorization": f"Bearer {access}"}


def test_bare_model_names_are_not_downloaded_when_downloads_are_off(tmp_path):
    from labelpilot.backends.errors import ModelNotFoundError
    from labelpilot.backends.model_ref import ModelLocator

    with pytest.raises(ModelNotFoundError, match="downloads are off"):
        ModelLocator(tmp_path, download=False).resolve("yolo11n.pt")
    connected = ModelLocator(tmp_path, download=True)
    assert connected.resolve("yolo11n.pt") == "yolo11n.pt"  # ultralytics would fetch it
    (tmp_path / "mine.pt").write_bytes(b"x")
    assert connected.resolve("mine.pt") == str(tmp_path / "mine.pt")
