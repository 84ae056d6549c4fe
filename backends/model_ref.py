"""Turning a model reference (path or ultralytics name) into something loadable, and its version.

`ModelLocator` carries where model files live (`MODEL_DIR`, Label Studio's name for it) and
whether ultralytics may download release weights by name; the composition layer builds it once
from the settings and hands it to whatever resolves refs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from labelpilot.backends.errors import ModelNotFoundError

_WEIGHT_SUFFIXES = (".pt", ".onnx", ".torchscript", ".engine", ".yaml", ".yml")


@dataclass(frozen=True)
class ModelLocator:
    """Where model files are looked up, and whether bare release names may be downloaded."""

    model_dir: Path
    download: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir).expanduser().resolve())

    def local_candidates(self, ref: str) -> list[Path]:
        """Where a model file named `ref` may be: itself if absolute, else under `model_dir` or
        the working directory (in that order)."""
        path = Path(ref).expanduser()
        return [path] if path.is_absolute() else [self.model_dir / path, Path.cwd() / path]

    def resolve(self, ref: str) -> str:
        """A local path when the file exists (absolute, under `model_dir`, or relative to the cwd).

        A bare ultralytics name such as ``yolo11n.pt`` that is not on disk is returned as is:
        ultralytics downloads it on a connected machine (unless `download` is off). Anything else
        is an error that says where we looked.
        """
        path = Path(ref).expanduser()
        candidates = self.local_candidates(ref)
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate.resolve())
        if not path.is_absolute() and "/" not in ref and ref.endswith(_WEIGHT_SUFFIXES):
            if ref.endswith((".yaml", ".yml")) or self.download:
                return ref
            raise ModelNotFoundError(
                f"model '{ref}' is not on disk (looked in {self.model_dir}) and weight downloads "
                "are off (LABELPILOT_DOWNLOAD_WEIGHTS=0): put the file in MODEL_DIR")
        looked = ", ".join(str(c) for c in candidates)
        raise ModelNotFoundError(f"model '{ref}' not found (looked in {looked}); put the weights "
                                 f"in MODEL_DIR={self.model_dir} or give an absolute path")

    def version(self, ref: str) -> str:
        """`model_version` of what `ref` resolves to (the ref itself when it does not)."""
        try:
            resolved = self.resolve(ref)
        except ModelNotFoundError:
            resolved = ref
        return model_version(resolved)


def model_version(resolved: str) -> str:
    """A short, stable version string for a model file (or name): name plus a digest of the
    file's identity.

    Cheap (no hashing of the weights' bytes) so `/setup` stays well inside its 3 s budget;
    it changes whenever the file is replaced.
    """
    path = Path(resolved)
    if path.is_file():
        stat = path.stat()
        identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        identity = resolved
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}"
