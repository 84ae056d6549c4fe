"""SAM model references: which architecture, which checkpoint (or explicit random weights)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from labelpilot.backends.errors import BackendError, ModelNotFoundError
from labelpilot.backends.model_ref import ALLOW_HINT, ModelLocator, model_version

SamKind = Literal["mobile_sam", "vit_b", "vit_l", "vit_h"]
KINDS: tuple[SamKind, ...] = ("mobile_sam", "vit_b", "vit_l", "vit_h")
RANDOM_PREFIX = "random:"

# File-name hints, most specific first: official SAM names, ultralytics names, MobileSAM.
_NAME_HINTS: tuple[tuple[str, SamKind], ...] = (
    (r"mobile", "mobile_sam"), (r"vit[_-]?b|sam[_-]b\b", "vit_b"),
    (r"vit[_-]?l|sam[_-]l\b", "vit_l"), (r"vit[_-]?h|sam[_-]h\b", "vit_h"),
)


# ultralytics release assets: on a connected machine these bare names download into MODEL_DIR
# on first load (like yolo11n.pt), unless LABELPILOT_DOWNLOAD_WEIGHTS=0.
DOWNLOADABLE: dict[str, SamKind] = {"mobile_sam.pt": "mobile_sam", "sam_b.pt": "vit_b",
                                    "sam_l.pt": "vit_l"}


class PromptError(BackendError):
    """The prompt cannot be used on this image (outside it, empty box, …)."""


@dataclass(frozen=True)
class SamSpec:
    kind: SamKind
    checkpoint: Path | None  # None: random weights (explicitly asked for with `random:`)

    @property
    def key(self) -> str:
        """Canonical ref: the same model always gets the same key."""
        if self.checkpoint is None:
            return f"{RANDOM_PREFIX}{self.kind}"
        return f"{self.kind}:{self.checkpoint}"

    @property
    def version(self) -> str:
        if self.checkpoint is None:
            return f"sam-{self.kind}-random"
        return f"sam-{self.kind}-{model_version(str(self.checkpoint))}"


def chosen_ref(ref: str | None, default: str) -> str:
    """`ref`, else the configured default; an error that says what to set when neither is."""
    text = (ref or default).strip()
    if not text:
        raise ModelNotFoundError(
            "no SAM model configured: set LABELPILOT_SAM_MODEL to a checkpoint (e.g. "
            "sam_vit_b_01ec64.pth or mobile_sam.pt in MODEL_DIR), or add sam_model=\"...\" to "
            "the smart control of the label config")
    return text


def parse_sam_ref(ref: str, locator: ModelLocator, *, untrusted: bool = False) -> SamSpec:
    """Parse and check a ref (see labelpilot.backends.sam); the checkpoint must exist on disk
    (`locator` says where to look), except an ultralytics asset that may be downloaded.
    `untrusted`: the ref comes from a label config (confined to MODEL_DIR, see
    `ModelLocator.confine`)."""
    text = chosen_ref(ref, "")
    if text.startswith(RANDOM_PREFIX):
        kind = text[len(RANDOM_PREFIX):]
        return SamSpec(_check_kind(kind, text), None)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in KINDS:
        return SamSpec(cast(SamKind, prefix), _find_checkpoint(rest, locator, untrusted))
    if text in DOWNLOADABLE and locator.download and not any(
            c.is_file() for c in locator.local_candidates(text, untrusted=untrusted)):
        return SamSpec(DOWNLOADABLE[text], locator.model_dir / text)  # downloaded when loaded
    path = _find_checkpoint(text, locator, untrusted)
    return SamSpec(_kind_from_name(path), path)


def _check_kind(kind: str, ref: str) -> SamKind:
    if kind not in KINDS:
        raise ModelNotFoundError(f"unknown SAM kind in '{ref}': use one of {', '.join(KINDS)}")
    return cast(SamKind, kind)


def _find_checkpoint(ref: str, locator: ModelLocator, untrusted: bool = False) -> Path:
    base = locator.model_dir
    candidates = locator.local_candidates(ref, untrusted=untrusted)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    confined = untrusted and not locator.allow_custom_paths
    where = f"({ALLOW_HINT})" if confined else "or give an absolute path"
    raise ModelNotFoundError(
        f"SAM checkpoint '{ref}' not found (looked in {looked}): put the file in "
        f"MODEL_DIR={base} {where} (only {', '.join(DOWNLOADABLE)} are "
        "downloaded by name, and only while LABELPILOT_DOWNLOAD_WEIGHTS is not 0)")


def _kind_from_name(path: Path) -> SamKind:
    name = path.name.lower()
    for pattern, kind in _NAME_HINTS:
        if re.search(pattern, name):
            return kind
    raise ModelNotFoundError(
        f"cannot tell the SAM kind from the file name '{path.name}': prefix the ref with one "
        f"of {', '.join(k + ':' for k in KINDS)} (e.g. vit_b:{path})")
