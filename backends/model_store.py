"""Model versions on disk + the current-version pointer in Redis (with a file fallback).

Layout: ``<MODEL_DIR>/store/<key>/<version>/{weights.pt, version.json}``. A version directory is
written under a temporary name and renamed into place, so a killed writer never leaves a version
that looks complete. Promotion sets ``labelpilot:model:<key>:current`` and publishes on
``labelpilot:model-updates``; every serving process listens and hot-swaps (see `hot_swap`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from labelpilot.backends.model_ref import ModelLocator

log = logging.getLogger(__name__)
UPDATES_CHANNEL = "labelpilot:model-updates"
_POINTER = "labelpilot:model:{}:current"
_VERSION_RE = re.compile(r"^v(\d+)$")
EXPORTS_DIR = "exports"
HOLDOUT_FILE = "holdout.zip"


@dataclass(frozen=True)
class ModelVersion:
    key: str
    version: str  # "v3"
    path: Path  # the version directory

    @property
    def weights(self) -> Path:
        return self.path / "weights.pt"

    @property
    def model_version(self) -> str:
        """What Label Studio sees as model_version."""
        return f"{self.key}-{self.version}"

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "version.json").read_text()))

    @property
    def holdout(self) -> Path:
        """The holdout the version was evaluated on (zip; absent for versions written before
        training kept it): what an export's parity check runs on."""
        return self.path / HOLDOUT_FILE

    def exports(self) -> dict[str, ExportRecord]:
        """The version's exports by format (``exports/<format>/export.json``)."""
        root = self.path / EXPORTS_DIR
        if not root.is_dir():
            return {}
        found = {}
        for directory in sorted(root.iterdir()):
            record = directory / "export.json"
            if directory.name.startswith(".") or not record.is_file():
                continue
            info = dict(json.loads(record.read_text()))
            found[directory.name] = ExportRecord(directory.name, directory, info)
        return found


@dataclass(frozen=True)
class ExportRecord:
    """One exported runtime of a version: the files under `path` and what export.json says
    (the model file, class names, input size, parity figures)."""

    format: str
    path: Path  # <version>/exports/<format>
    info: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / str(self.info["file"])


class ModelStore:
    """Versions under `root` (``MODEL_DIR/store``); `connection`: the Redis holding the
    pointers and the updates channel."""

    def __init__(self, root: Path, connection: redis.Redis):
        self.root = root
        self.connection = connection

    def versions(self, key: str) -> list[ModelVersion]:
        directory = self.root / key
        if not directory.is_dir():
            return []
        found = [ModelVersion(key, p.name, p) for p in directory.iterdir()
                 if _VERSION_RE.match(p.name) and (p / "version.json").exists()]
        return sorted(found, key=lambda v: int(v.version[1:]))

    def get(self, key: str, version: str) -> ModelVersion:
        candidate = ModelVersion(key, version, self.root / key / version)
        if not (candidate.path / "version.json").exists():
            raise KeyError(f"no version {version} of model '{key}' in {self.root}")
        return candidate

    def write_version(self, key: str, weights: Path, info: Mapping[str, Any],
                      extra_files: Mapping[str, Path] | None = None) -> ModelVersion:
        """Copy weights and metadata into the next version number, atomically.
        `extra_files`: more files of the version, by plain file name (e.g. the drift
        reference, "reference.npz")."""
        directory = self.root / key
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".partial-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            shutil.copyfile(weights, staging / "weights.pt")
            for name, source in (extra_files or {}).items():
                if Path(name).name != name or name in ("weights.pt", "version.json", ""):
                    raise ValueError(f"'{name}' cannot be an extra file of a version")
                shutil.copyfile(source, staging / name)
            while True:
                existing = [int(v.version[1:]) for v in self.versions(key)]
                number = max(existing, default=0) + 1
                version = f"v{number}"
                body = {**info, "key": key, "version": version, "written_at": time.time()}
                (staging / "version.json").write_text(json.dumps(body, indent=2, default=str))
                try:
                    staging.rename(directory / version)  # atomic; fails if taken meanwhile
                    return ModelVersion(key, version, directory / version)
                except OSError:
                    if not (directory / version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def write_export(self, version: ModelVersion, fmt: str, files: Path,
                     info: Mapping[str, Any]) -> ExportRecord:
        """Move the exported files in the directory `files` into ``exports/<fmt>`` of
        `version` with an export.json of `info`, atomically: a staging directory renamed into
        place (an earlier export of the format is replaced only once the new one is whole)."""
        root = version.path / EXPORTS_DIR
        root.mkdir(exist_ok=True)
        staging = root / f".partial-{uuid.uuid4().hex}"
        old = root / f".old-{uuid.uuid4().hex}"
        target = root / fmt
        try:
            shutil.copytree(files, staging)
            body = {**info, "format": fmt, "exported_at": time.time()}
            (staging / "export.json").write_text(json.dumps(body, indent=2, default=str))
            if target.exists():
                target.rename(old)
            try:
                staging.rename(target)
            except OSError:
                if old.exists():  # put the earlier export back
                    old.rename(target)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        log.info("exported %s %s to %s", version.model_version, fmt, target)
        return version.exports()[fmt]

    def current(self, key: str) -> ModelVersion | None:
        """The promoted version: Redis pointer, else the pointer file (Redis down, or a Redis
        that lost its data: promotion writes both)."""
        version: str | None = None
        try:
            raw = self.connection.get(_POINTER.format(key))
            version = raw.decode() if isinstance(raw, bytes) else raw
        except redis.RedisError:
            pass
        if not version:
            pointer = self.root / key / "CURRENT"
            version = pointer.read_text().strip() if pointer.exists() else None
        if not version:
            return None
        try:
            return self.get(key, version)
        except KeyError:
            log.error("current version %s of %s is missing on disk", version, key)
            return None

    def promote(self, key: str, version: str, *, by: str = "system") -> ModelVersion:
        """Point `key` at `version` (also used for rollback) and tell every server."""
        target = self.get(key, version)
        pointer = self.root / key / "CURRENT"
        tmp = pointer.with_name(f".CURRENT-{uuid.uuid4().hex}")
        tmp.write_text(version)
        os.replace(tmp, pointer)
        client = self.connection
        client.set(_POINTER.format(key), version)
        client.rpush(f"labelpilot:model:{key}:history", json.dumps(
            {"version": version, "by": by, "at": time.time()}))
        client.publish(UPDATES_CHANNEL, json.dumps({"key": key, "version": version}))
        log.info("promoted %s to %s (by %s)", key, version, by)
        return target

    def rollback(self, key: str, *, by: str = "system") -> ModelVersion:
        """Promote the version that was current before the present one."""
        current = self.current(key)
        previous = [h["version"] for h in self.history(key)
                    if current is None or h["version"] != current.version]
        if not previous:
            raise KeyError(f"'{key}' has no earlier promoted version to roll back to")
        return self.promote(key, previous[-1], by=by)

    def history(self, key: str) -> list[dict[str, Any]]:
        raw = self.connection.lrange(f"labelpilot:model:{key}:history", 0, -1)
        return [json.loads(r) for r in raw]

    def model_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())


def serving_weights(store: ModelStore, keys: Sequence[str], locator: ModelLocator,
                    default_ref: str) -> tuple[str, str]:
    """(weights, model_version) that serve now: the promoted version of the first of `keys`
    that has one, else `default_ref` as `locator` resolves it (`ModelNotFoundError` when it
    cannot be) — the same pair the Label Studio predictor reports for a control."""
    for key in keys:
        current = store.current(key)
        if current is not None:
            return str(current.weights), current.model_version
    return locator.resolve(default_ref), locator.version(default_ref)
