"""How to reach the Label Studio server of each project: the settings first, else what /setup
told us.

`/setup` reaches one gunicorn worker, `/predict` may reach another: what /setup says is kept in
Redis (best effort) as well as in memory, so every worker can use it. The address and label
config stay for 30 days; the access token (LS sends the project owner's API key) is a secret
and is kept apart with a short lifetime: `SourcePolicy.token_seconds` after the last /setup,
longer only while a training of the project is queued or running (`hold_token`, released by
`release_token` when the job ends), never when LABEL_STUDIO_API_KEY is set (then it is not
needed). It never goes into job arguments or logs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.image_source import ImageSource

log = logging.getLogger(__name__)
_RECHECK_S = 5.0  # how long a worker trusts its copy before looking for a newer /setup
_KEY = "labelpilot:ls:project:{}"
_TOKEN_KEY = "labelpilot:ls:token:{}"


@dataclass(frozen=True)
class ProjectConnection:
    hostname: str | None = None
    access_token: str | None = field(default=None, repr=False)
    label_config: str | None = None


@dataclass(frozen=True)
class SourcePolicy:
    """Where images may come from and how (LABEL_STUDIO_URL / _API_KEY override what /setup
    says; LABELPILOT_ALLOWED_HOSTS, LABELPILOT_MAX_IMAGE_BYTES, LOCAL_FILES_DOCUMENT_ROOT,
    LABELPILOT_IMAGE_DOWNLOAD_SECONDS)."""

    url: str | None = None
    token: str | None = None
    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int = 50 * 2**20
    local_files_root: Path | None = None
    download_seconds: float = 20.0  # deadline of one whole image download
    token_seconds: int = 3600  # LABELPILOT_LS_TOKEN_TTL: /setup's token in Redis after /setup


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
        self._checked: dict[int, float] = {}  # when each project was last read from Redis
        self._lock = threading.Lock()

    def remember(self, project_id: int | None, conn: ProjectConnection) -> None:
        """Store what /setup said; fields it left out keep their earlier values. The token
        only when the settings give none (LABEL_STUDIO_API_KEY wins anyway)."""
        if project_id is None:
            return
        known = self.get(project_id)
        hostname = conn.hostname or known.hostname
        # a token is only ever sent back to the host it came with: a /setup that names another
        # host without a token of its own does not inherit the old one
        moved = hostname != known.hostname and known.hostname is not None
        kept = None if moved else known.access_token
        token = None if self.policy.token else conn.access_token or kept
        conn = ProjectConnection(hostname, token, conn.label_config or known.label_config)
        with self._lock:
            self._projects[project_id] = conn
            self._checked[project_id] = time.monotonic()
        try:
            self._redis.set(_KEY.format(project_id), json.dumps(
                {"hostname": conn.hostname, "label_config": conn.label_config}), ex=30 * 86400)
            if token:
                store_token(self._redis, project_id, token, self.policy.token_seconds)
            elif moved:
                self._redis.delete(_TOKEN_KEY.format(project_id))
        except redis.RedisError as exc:
            log.warning("could not store project %s connection in Redis: %s", project_id, exc)

    def get(self, project_id: int | None) -> ProjectConnection:
        if project_id is None:
            return ProjectConnection()
        with self._lock:
            known = self._projects.get(project_id)
            fresh = time.monotonic() - self._checked.get(project_id, -_RECHECK_S) < _RECHECK_S
        if known is not None and (self.policy.token or (known.access_token and fresh)):
            return known
        try:  # unknown here, known without a token, or a while ago: another worker's /setup
            raw, token = self._redis.mget(_KEY.format(project_id), _TOKEN_KEY.format(project_id))
        except redis.RedisError:
            return known or ProjectConnection()
        if not raw:
            return known or ProjectConnection()
        data = json.loads(raw)
        if "access_token" in data:  # written by an older version, for 30 days: move it
            healed = self._heal(project_id, data, None if token else data.get("access_token"))
            data.pop("access_token")
            token = token or healed
        hostname = data.get("hostname")
        if not token and known is not None and known.hostname == hostname:
            token = known.access_token  # Redis's copy expired: this worker's own still serves
        conn = ProjectConnection(hostname, None if self.policy.token else _text(token),
                                 data.get("label_config"))
        with self._lock:
            self._projects[project_id] = conn
            self._checked[project_id] = time.monotonic()
        return conn

    def _heal(self, project_id: int, data: dict[str, str | None], token: str | None
              ) -> str | None:
        """Rewrite an entry that holds the token without it; the token (unless a newer one is
        known) gets the short lifetime."""
        try:
            self._redis.set(_KEY.format(project_id), json.dumps(
                {k: v for k, v in data.items() if k != "access_token"}), keepttl=True)
            if token and not self.policy.token:
                store_token(self._redis, project_id, token, self.policy.token_seconds)
        except redis.RedisError:
            pass
        return token

    def require_token(self, project_id: int) -> None:
        """ValueError saying how to get one when no LS token is known for the project (a
        training calls LS's API; /setup's token lives `policy.token_seconds` in Redis)."""
        if self.policy.token or self.get(project_id).access_token:
            return
        raise ValueError(
            f"no Label Studio token for project {project_id}: the one LS sends to /setup is "
            f"kept {self.policy.token_seconds} s after the last /setup (LABELPILOT_LS_TOKEN_TTL) "
            "and while a training waits; open the project's Model settings in Label Studio "
            "(LS then calls /setup) and start the training again, or set LABEL_STUDIO_API_KEY")

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
            max_bytes=self.policy.max_bytes, local_files_root=self.policy.local_files_root,
            download_seconds=self.policy.download_seconds)
        with self._lock:
            self._sources[key] = source
            while len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        return source


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def store_token(connection: redis.Redis, project_id: int, token: str, seconds: int) -> None:
    """Keep /setup's token for `seconds`, or longer when a training holds it already."""
    key = _TOKEN_KEY.format(project_id)
    remaining = connection.ttl(key)
    connection.set(key, token, ex=max(seconds, remaining if remaining > 0 else 0))


def hold_token(connection: redis.Redis, project_id: int, seconds: int) -> None:
    """A training of the project is queued: keep its token (if any) at least `seconds`."""
    key = _TOKEN_KEY.format(project_id)
    remaining = connection.ttl(key)
    if 0 <= remaining < seconds:
        connection.expire(key, seconds)


def release_token(connection: redis.Redis, project_id: int, seconds: int) -> None:
    """No training of the project is pending any more: the token lives at most `seconds` more
    (its lifetime after a /setup)."""
    key = _TOKEN_KEY.format(project_id)
    if connection.ttl(key) > seconds:
        connection.expire(key, seconds)


def token_ttl(connection: redis.Redis, project_id: int) -> int:
    """Seconds /setup's token of the project has left in Redis (-2: none there)."""
    return int(connection.ttl(_TOKEN_KEY.format(project_id)))
