"""Fetching task images the way Label Studio stores them, only from hosts the admin allows.

Handles `/data/upload/...`, `/data/local-files/?d=...` (relative or absolute; read from disk when
LOCAL_FILES_DOCUMENT_ROOT is set), cloud links (`s3://`, `gs://`, `azure-blob://`) resolved
through LS's presign endpoint, and plain http(s) URLs.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import urllib3

from labelpilot.adapters.label_studio.auth import LabelStudioAuthError
from labelpilot.adapters.label_studio.client import LabelStudioClient

_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:", "azure-spi:")
_MAX_REDIRECTS = 3


class ImageSourceError(Exception):
    """The image could not be fetched; the message says why and what to change."""


def _host(url: str) -> str:
    parts = urlsplit(url)
    return (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")


@dataclass
class ImageSource:
    """Where images come from for one Label Studio server (`client`: its address and token)."""

    client: LabelStudioClient | None = None
    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int = 50 * 1024 * 1024
    local_files_root: Path | None = None
    timeout: float = 15.0  # per connect / read
    download_seconds: float = 20.0  # the whole download, however slowly the bytes come
    media: str = "image"  # what is fetched, for the messages (videos have their own limits)
    pool: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(maxsize=16))

    def __post_init__(self) -> None:
        hosts = {h.lower() for h in self.allowed_hosts}
        if self.ls_url:
            hosts.add(_host(self.ls_url))
        self._hosts = frozenset(hosts)

    @property
    def ls_url(self) -> str | None:
        return self.client.url if self.client else None

    def host_allowed(self, url: str) -> bool:
        host = _host(url)
        bare = host.split(":")[0]
        return host in self._hosts or bare in self._hosts or "*" in self._hosts

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The image's bytes, or ImageSourceError."""
        if not isinstance(url, str) or not url.strip():
            raise ImageSourceError("the task has no image URL in its data")
        url = url.strip()
        if url.startswith(_CLOUD_PREFIXES):
            return self._fetch_cloud(url, task_id)
        local = self._local_file(url)
        if local is not None:
            return self._read_file(local)
        if url.startswith("/"):
            if not self.ls_url:
                raise ImageSourceError(
                    f"'{url}' is relative to Label Studio, but its address is unknown: set "
                    "LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) for the backend")
            url = self.ls_url + url
        if urlsplit(url).scheme not in ("http", "https"):
            raise ImageSourceError(f"unsupported image URL scheme in '{url[:80]}'")
        if not self.host_allowed(url):
            raise ImageSourceError(
                f"host '{_host(url)}' is not allowed; add it to LABELPILOT_ALLOWED_HOSTS "
                f"(allowed now: {', '.join(sorted(self._hosts)) or 'none'})")
        return self._download(url)

    @property
    def api(self) -> LabelStudioClient:
        """The client for API calls to this Label Studio (same address and token)."""
        if self.client is None:
            raise RuntimeError("Label Studio's address is unknown: set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY for the worker (or connect the backend "
                               "first)")
        return self.client

    def _fetch_cloud(self, uri: str, task_id: int | None) -> bytes:
        if not self.ls_url or task_id is None:
            raise ImageSourceError(
                f"cloud link '{uri[:80]}' is resolved through Label Studio: set LABEL_STUDIO_URL "
                "and send the task id")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return self._download(f"{self.ls_url}/tasks/{task_id}/presign/?fileuri={fileuri}",
                              trust_redirects=True)

    def _local_file(self, url: str) -> Path | None:
        """The disk path for a local-files URL when the document root is known here."""
        if self.local_files_root is None:
            return None
        parts = urlsplit(url)
        if not parts.path.rstrip("/").endswith("/data/local-files"):
            return None
        if parts.netloc and (not self.ls_url or _host(url) != _host(self.ls_url)):
            return None
        relative = unquote(parse_qs(parts.query).get("d", [""])[0])
        root = self.local_files_root.resolve()
        path = (root / relative).resolve()
        if not relative or not path.is_relative_to(root):
            raise ImageSourceError(f"local file '{relative}' is outside the document root")
        return path

    def _read_file(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageSourceError(self._too_big(size))
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageSourceError(f"local file '{path}' does not exist") from exc

    def _too_big(self, size: int) -> str:
        return (f"the {self.media} is {size} bytes, over the limit of {self.max_bytes} "
                f"(set LABELPILOT_MAX_{self.media.upper()}_BYTES to raise it)")

    def _headers_for(self, url: str) -> dict[str, str]:
        if self.client is None or not self.ls_url or _host(url) != _host(self.ls_url):
            return {}
        try:
            return self.client.headers()
        except LabelStudioAuthError as exc:
            raise ImageSourceError(str(exc)) from exc

    def _download(self, url: str, trust_redirects: bool = False) -> bytes:
        # urllib3 directly: the same pooled connections as requests at half its per-call CPU,
        # which counts when a 2-core worker fetches a batch of images next to the model.
        # A server trickling bytes passes every per-read timeout: the whole download (redirects
        # included) has a deadline too, and no single wait may run past it.
        deadline = time.monotonic() + self.download_seconds
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                wait = self._wait(deadline)
                response = self.pool.request(
                    "GET", url, headers=self._headers_for(url), preload_content=False,
                    redirect=False, retries=False,
                    timeout=urllib3.Timeout(connect=wait, read=wait))
            except urllib3.exceptions.HTTPError as exc:
                raise self._failed(url, exc, deadline) from exc
            try:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    target = urljoin(url, response.headers["Location"])
                    if not (trust_redirects or self.host_allowed(target)):
                        raise ImageSourceError(
                            f"{url} redirects to host '{_host(target)}', which is not allowed")
                    url = target
                    continue
                if response.status != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if response.status in (401, 403) else ""
                    raise ImageSourceError(
                        f"download of {url} failed: HTTP {response.status}{hint}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > self.max_bytes:
                    raise ImageSourceError(self._too_big(declared))
                return self._read_body(response, deadline)
            except urllib3.exceptions.HTTPError as exc:
                response.close()  # half-read: the connection must not be reused
                raise self._failed(url, exc, deadline) from exc
            except ImageSourceError:
                response.close()
                raise
            finally:
                response.release_conn()
        raise ImageSourceError(f"too many redirects fetching {url}")

    def _wait(self, deadline: float) -> float:
        """The longest a single connect or read may wait now; past the deadline, the error."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageSourceError(self._too_slow())
        return min(self.timeout, left)

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        """The body, read as it arrives (`read1`: no waiting for a full chunk), each socket
        wait cut to what is left before the deadline."""
        chunks: list[bytes] = []
        total = 0
        while True:
            wait = self._wait(deadline)
            sock = getattr(response.connection, "sock", None)
            if sock is not None:
                sock.settimeout(wait)
            chunk = response.read1(256 * 1024)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise ImageSourceError(self._too_big(total))
            chunks.append(chunk)

    def _too_slow(self) -> str:
        return (f"{self.media} download took longer than {self.download_seconds:g} s "
                f"(set LABELPILOT_{self.media.upper()}_DOWNLOAD_SECONDS to allow more)")

    def _failed(self, url: str, exc: Exception, deadline: float) -> ImageSourceError:
        if time.monotonic() >= deadline:
            return ImageSourceError(self._too_slow())
        return ImageSourceError(f"could not download {url}: {exc}")
