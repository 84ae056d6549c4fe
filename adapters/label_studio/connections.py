"""How to reach the Label Studio server of each project: the settings first, else what /setup
told us.

`/setup` reaches one gunicorn worker, `/predict` may reach another: what /setup says is kept in
Redis (best effort) as well as in memory, so every worker can use it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.image_source import ImageSource

log = logging.getLogger(__name__)
_KEY = "labelpilot:ls:project:{}"


@dataclass(frozen=True)
class ProjectConnection:
    hostname: str | None = None
    access_token: str | None = None
    label_config: str | None = None


@dataclass(frozen=True)
class SourcePolicy:
    """Where images may come from and how (LABEL_STUDIO_URL / _API_KEY override what /setup
    says; LABELPILOT_ALLOWED_HOSTS, LABELPILOT_MAX_IMAGE_BYTES, LOCAL_FILES_DOCUMENT_ROOT)."""

    url: str | None = None
    token: str | None = None
    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int = 50 * 2**20
    local_files_root: Path | None = None


class Connections:
    """Per-project LS address/token/config, and the `ImageSource` built from them.
    `connection`: the Redis shared by every worker (what /setup said is kept there)."""

    def __init__(self, connection: redis.Redis, policy: SourcePolicy | None = None,
                 max_sources: int = 32):
        self._redis = connection
        self.policy = policy or SourcePolicy()
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
            self._redis.set(_KEY.format(project_id), json.dumps(asdict(conn)), ex=30 * 86400)
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
            raw = self._redis.get(_KEY.format(project_id))
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
        url = self.policy.url or conn.hostname
        token = self.policy.token or conn.access_token
        key = (url, token)
        with self._lock:
            source = self._sources.get(key)
            if source is not None:
                self._sources.move_to_end(key)
                return source
        source = ImageSource(
            client=LabelStudioClient(url, token) if url else None,
            allowed_hosts=frozenset(h.lower() for h in self.policy.allowed_hosts),
            max_bytes=self.policy.max_bytes, local_files_root=self.policy.local_files_root)
        with self._lock:
            self._sources[key] = source
            while len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        return source
