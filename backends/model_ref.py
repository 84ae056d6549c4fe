"""Turning a model reference (path or ultralytics name) into something loadable, and its version.

`ModelLocator` carries where model files live (`MODEL_DIR`, Label Studio's name for it),
whether ultralytics may download release weights by name, and whether refs from label configs
may name files outside `MODEL_DIR`; the composition layer builds it once from the settings and
hands it to whatever resolves refs.

Refs come from two places. The admin's settings (LABELPILOT_MODEL_<TASK>, LABELPILOT_SAM_MODEL,
LABELPILOT_CVAT_FUNCTIONS) are trusted: any path. A label config (a control's `model_path` or
`sam_model`) can be edited by anyone with access to a Label Studio project, and ultralytics
unpickles what it loads, so such refs are `untrusted`: confined to files under `MODEL_DIR` and
ultralytics release names unless `allow_custom_paths` (ALLOW_CUSTOM_MODEL_PATH, Label Studio's
own backends' name) is set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from labelpilot.backends.errors import ModelNotFoundError, ModelRefRefused

_WEIGHT_SUFFIXES = (".pt", ".onnx", ".torchscript", ".engine", ".yaml", ".yml")
# ultralytics release assets and model YAMLs (yolo11n.pt, yolov8s-seg.pt, yolo11n-pose.yaml,
# rtdetr-l.pt, sam_b.pt, mobile_sam.pt, FastSAM-s.pt, ...): bare names ultralytics downloads
# or builds itself
_RELEASE_NAME = re.compile(r"^(yolo|rtdetr|sam|mobile_sam|fastsam)[\w.-]*\.(pt|ya?ml)$",
                           re.IGNORECASE)
ALLOW_HINT = ("set ALLOW_CUSTOM_MODEL_PATH=true on the backend to let label configs name "
              "other files")


@dataclass(frozen=True)
class ModelLocator:
    """Where model files are looked up, and whether bare release names may be downloaded."""

    model_dir: Path
    download: bool = True
    allow_custom_paths: bool = False  # untrusted refs may name any file (ALLOW_CUSTOM_MODEL_PATH)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir).expanduser().resolve())

    def local_candidates(self, ref: str, *, untrusted: bool = False) -> list[Path]:
        """Where a model file named `ref` may be: itself if absolute, else under `model_dir` or
        the working directory (in that order). `untrusted` (a label config's ref): only under
        `model_dir`, and `ModelRefRefused` for what would leave it (see `confine`)."""
        if untrusted and not self.allow_custom_paths:
            return [self.confine(ref)]
        path = Path(ref).expanduser()
        return [path] if path.is_absolute() else [self.model_dir / path, Path.cwd() / path]

    def confine(self, ref: str) -> Path:
        """`model_dir / ref`, or `ModelRefRefused` when `ref` is absolute, has a `..` part, or
        leads out of `model_dir` through a symlink. The one check of untrusted refs."""
        text = ref.strip()
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if (not text or len(text) > 1024 or "\x00" in text or text.startswith(("/", "~", "\\"))
                or PureWindowsPath(text).drive or ".." in parts):
            raise ModelRefRefused(self._refusal(ref, "is not a relative path inside it"))
        candidate = self.model_dir / text
        if not candidate.resolve().is_relative_to(self.model_dir):
            raise ModelRefRefused(self._refusal(ref, "leads out of it (a symlink)"))
        return candidate

    def _refusal(self, ref: str, why: str) -> str:
        return (f"model '{ref[:200]}' from the label config is refused: label configs may name "
                f"files under MODEL_DIR={self.model_dir} (relative paths) and ultralytics "
                f"release names only, and this one {why}; {ALLOW_HINT}")

    def resolve(self, ref: str, *, untrusted: bool = False) -> str:
        """A local path when the file exists (absolute, under `model_dir`, or relative to the cwd).

        A bare ultralytics name such as ``yolo11n.pt`` that is not on disk is returned as is:
        ultralytics downloads it on a connected machine (unless `download` is off). Anything else
        is an error that says where we looked. `untrusted`: `ref` comes from a label config
        (only files under `model_dir` and release names; `ModelRefRefused` otherwise).
        """
        confined = untrusted and not self.allow_custom_paths
        path = Path(ref).expanduser()
        candidates = self.local_candidates(ref, untrusted=untrusted)
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate.resolve())
        bare = not path.is_absolute() and "/" not in ref and ref.endswith(_WEIGHT_SUFFIXES)
        if bare and (not confined or _RELEASE_NAME.match(ref)):
            if ref.endswith((".yaml", ".yml")) or self.download:
                return ref
            raise ModelNotFoundError(
                f"model '{ref}' is not on disk (looked in {self.model_dir}) and weight downloads "
                "are off (LABELPILOT_DOWNLOAD_WEIGHTS=0): put the file in MODEL_DIR")
        looked = ", ".join(str(c) for c in candidates)
        where = (f"put the weights in MODEL_DIR={self.model_dir} ({ALLOW_HINT})" if confined
                 else f"put the weights in MODEL_DIR={self.model_dir} or give an absolute path")
        raise ModelNotFoundError(f"model '{ref}' not found (looked in {looked}); {where}")

    def version(self, ref: str, *, untrusted: bool = False) -> str:
        """`model_version` of what `ref` resolves to (the ref itself when it does not);
        `ModelRefRefused` for an untrusted ref that is not allowed."""
        try:
            resolved = self.resolve(ref, untrusted=untrusted)
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
