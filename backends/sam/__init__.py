"""Segment Anything (SAM ViT-B/L/H, MobileSAM) as an `Interactor`, with an embedding cache.

Usage (CVAT interactor, LS adapter, benches)::

    from labelpilot.backends.sam import get_interactor
    from labelpilot.backends.interactive import PointPrompt, Prompt
    from labelpilot.backends.shapes import BBox

    sam = get_interactor()            # LABELPILOT_SAM_MODEL; or get_interactor("vit_b:/w/sam.pth")
    result = sam.segment(image_bgr, Prompt(points=(PointPrompt(120, 80),
                                                   PointPrompt(10, 10, positive=False)),
                                           box=BBox(50, 40, 300, 260)))
    result.mask    # bool H x W at the image's size;  result.score: SAM's predicted IoU (0..1)
    sam.model_version                  # e.g. "sam-vit_b-sam_vit_b_01ec64-1a2b3c4d"
    sam.prewarm(image_bgr)             # compute the embedding in the background (returns a Future)

`get_interactor` is process-wide and thread-safe: each model ref loads once per process, all
threads share it and one embedding cache (keyed by image content hash + model version, capped by
LABELPILOT_SAM_CACHE_MB; concurrent first clicks on one image run the encoder once).

Model refs (argument, a label config's `sam_model="..."`, or env LABELPILOT_SAM_MODEL):

- a checkpoint path (absolute, under MODEL_DIR, or relative to the cwd); the kind comes from the
  file name (``sam_vit_b_01ec64.pth`` → vit_b, ``mobile_sam.pt`` → mobile_sam, ``sam_l.pt`` →
  vit_l) or from an explicit prefix: ``vit_b:``, ``vit_l:``, ``vit_h:``, ``mobile_sam:``;
- ``random:<kind>`` (e.g. ``random:mobile_sam``, ``random:vit_b``): seeded RANDOM weights, for
  tests and benchmarks only. Masks are meaningless; nothing ever falls back to this silently.

No weights ship with labelpilot. The bare names of ultralytics' release assets (mobile_sam.pt,
sam_b.pt, sam_l.pt) are downloaded into MODEL_DIR on first load unless
LABELPILOT_DOWNLOAD_WEIGHTS=0 (as yolo11n.pt is); any other missing checkpoint raises
`ModelNotFoundError` (a missing ref too), a checkpoint that does not fit its kind raises
`ModelLoadError`, a prompt outside the image raises `PromptError` (all `BackendError`s).

Other env: LABELPILOT_DEVICE (cuda:0 when present, else cpu), LABELPILOT_SAM_DECODER
(auto | torch | onnx; auto picks the faster one at load), LABELPILOT_SAM_MAX_MODELS (2).
"""

from __future__ import annotations

from labelpilot.backends.sam.engine import (
           SamInteractor,
           embedding_cache,
           get_interactor,
           loaded_models,
)
from labelpilot.backends.sam.refs import PromptError, SamSpec, parse_sam_ref

__all__ = ["PromptError", "SamInteractor", "SamSpec", "embedding_cache", "get_interactor",
           "loaded_models", "parse_sam_ref"]
