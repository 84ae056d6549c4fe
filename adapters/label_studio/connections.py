"""How to reach the Label Studio server of each project: env first, else what /setup told us.

`/setup` reaches one gunicorn worker, `/predict` may reach another: what /setup says is kept in
Redis (best effort) as well as in memory, so every worker can use it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from labelpilot.adapters.label_studio.auth import TokenAuth
from labelpilot.adapters.label_studio.image_source import ImageSource

from labelpilot.redis_conn import get_redis

log = logging.getLogger(__name__)
_KEY = "labelpilot:ls:project:{}"


@dataclass(frozen=True)
class ProjectConnection:
    hostname: str | None = None
    access_token: str | None = None
    label_config: str | None = None


class Connections:
    """Per-project LS address/token/config, and the `ImageSource` built from them."""

    def __init__(self, max_sources: int = 32):
        self._projects: dict[int, ProjectConnection] = {}
        self._sources: OrderedDict[tuple[str | None, str | None], ImageSource] = OrderedDict()
        self._max_sources = max_sources
        self._lock = threading.Lock()

    def remember(self, project_id: int | None, conn: ProjectConnection) -> None:
        """Store what /setup said; fields it left out keep their earlier values."""
        if project_id is None:
            return
        known = self.get(project_id)
        conn = ProjectConnection(conn.hostname or known.hostname,
                                 conn.access_token or known.access_token,
                                 conn.label_config or known.label_config)
        with self._lock:
            self._projects[project_id] = conn
        try:
            get_redis().set(_KEY.format(project_id), json.dumps(asdict(conn)), ex=30 * 86400)
        except redis.RedisError as exc:
            log.warning("could not store project %s connection in Redis: %s", project_id, exc)

    def get(self, project_id: int | None) -> ProjectConnection:
        if project_id is None:
            return ProjectConnection()
        with self._lock:
            known = self._projects.get(project_id)
        if known is not None:
            return known
        try:
            raw = get_redis().get(_KEY.format(project_id))
        except redis.RedisError:
            raw = None
        if not raw:
            return ProjectConnection()
        conn = ProjectConnection(**json.loads(raw))
        with self._lock:
            self._projects[project_id] = conn
        return conn

    def image_source(self, project_id: int | None) -> ImageSource:
        conn = self.get(project_id)
        url = (os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST")
               or conn.hostname)
        token = (os.environ.get("LABEL_STUDIO_API_KEY")
                 or os.environ.get("LABEL_STUDIO_ACCESS_TOKEN") or conn.access_token)
        key = (url, token)
        with self._lock:
            source = self._sources.get(key)
            if source is not None:
                self._sources.move_to_end(key)
                return source
        source = _build_source(url, token)
        with self._lock:
            self._sources[key] = source
            while len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        return source


def _build_source(url: str | None, token: str | None) -> ImageSource:
    allowed = frozenset(h.strip().lower() for h in
                        os.environ.get("LABELPILOT_ALLOWED_HOSTS", "").split(",") if h.strip())
    root = (os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
            or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"))
    return ImageSource(
        ls_url=url,
        auth=TokenAuth(url, token) if url and token else None,
        allowed_hosts=allowed,
        max_bytes=int(os.environ.get("LABELPILOT_MAX_IMAGE_BYTES", str(50 * 1024 * 1024))),
        local_files_root=Path(root) if root else None,
    )
