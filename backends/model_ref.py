"""Turning a model reference (path or ultralytics name) into something loadable, and its version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from labelpilot.backends.errors import ModelNotFoundError

_WEIGHT_SUFFIXES = (".pt", ".onnx", ".torchscript", ".engine", ".yaml", ".yml")


def model_dir() -> Path:
    """`MODEL_DIR`, the same variable Label Studio's ML backends use."""
    return Path(os.environ.get("MODEL_DIR", "models")).expanduser().resolve()


def downloads_allowed() -> bool:
    """Whether ultralytics may download release weights by name (on by default)."""
    return os.environ.get("LABELPILOT_DOWNLOAD_WEIGHTS", "1").strip().lower() not in (
        "0", "false", "no")


def local_candidates(ref: str, base_dir: Path | None = None) -> list[Path]:
    """Where a model file named `ref` may be: itself if absolute, else under MODEL_DIR or the
    working directory (in that order)."""
    path = Path(ref).expanduser()
    return [path] if path.is_absolute() else [(base_dir or model_dir()) / path, Path.cwd() / path]


def resolve_model(ref: str, base_dir: Path | None = None) -> str:
    """A local path when the file exists (absolute, under MODEL_DIR, or relative to the cwd).

    A bare ultralytics name such as ``yolo11n.pt`` that is not on disk is returned as is:
    ultralytics downloads it on a connected machine. Anything else is an error that says where
    we looked.
    """
    base = base_dir or model_dir()
    path = Path(ref).expanduser()
    candidates = local_candidates(ref, base)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    if not path.is_absolute() and "/" not in ref and ref.endswith(_WEIGHT_SUFFIXES):
        if ref.endswith((".yaml", ".yml")) or downloads_allowed():
            return ref
        raise ModelNotFoundError(
            f"model '{ref}' is not on disk (looked in {base}) and weight downloads are off "
            "(LABELPILOT_DOWNLOAD_WEIGHTS=0): put the file in MODEL_DIR")
    looked = ", ".join(str(c) for c in candidates)
    raise ModelNotFoundError(f"model '{ref}' not found (looked in {looked}); put the weights "
                             f"in MODEL_DIR={base} or give an absolute path")


def model_version(ref: str, base_dir: Path | None = None) -> str:
    """A short, stable version string for a model: name plus a digest of the file's identity.

    Cheap (no hashing of the weights' bytes) so `/setup` stays well inside its 3 s budget;
    it changes whenever the file is replaced.
    """
    try:
        resolved = resolve_model(ref, base_dir)
    except ModelNotFoundError:
        resolved = ref
    stem = Path(resolved).stem
    path = Path(resolved)
    if path.is_file():
        stat = path.stat()
        identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        identity = resolved
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return f"{stem}-{digest}"
