"""Segment Anything (SAM ViT-B/L/H, MobileSAM) as an `Interactor`, with an embedding cache.

Usage (CVAT interactor, LS adapter, benches)::

    from labelpilot.backends.model_ref import ModelLocator
    from labelpilot.backends.sam import SamModels, SamOptions
    from labelpilot.backends.interactive import PointPrompt, Prompt
    from labelpilot.backends.shapes import BBox

    models = SamModels(SamOptions(default_ref="mobile_sam.pt"), ModelLocator(Path("models")))
    sam = models.get()                 # the default ref; or models.get("vit_b:/w/sam.pth")
    result = sam.segment(image_bgr, Prompt(points=(PointPrompt(120, 80),
                                                   PointPrompt(10, 10, positive=False)),
                                           box=BBox(50, 40, 300, 260)))
    result.mask    # bool H x W at the image's size;  result.score: SAM's predicted IoU (0..1)
    sam.model_version                  # e.g. "sam-vit_b-sam_vit_b_01ec64-1a2b3c4d"
    sam.prewarm(image_bgr)             # compute the embedding in the background (returns a Future)

A `SamModels` is created once per process by the composition layer (from the settings) and
passed to what needs it; it is thread-safe: each model ref loads once, all threads share it and
one embedding cache (keyed by image content hash + model version, capped by
`SamOptions.cache_mb`; concurrent first clicks on one image run the encoder once), plus the
Redis tier (`RedisEmbeddingStore`) shared by all worker processes when it is given.

Model refs (argument, a label config's `sam_model="..."`, or `SamOptions.default_ref`):

- a checkpoint path (absolute, under the locator's MODEL_DIR, or relative to the cwd); the
  kind comes from the file name (``sam_vit_b_01ec64.pth`` → vit_b, ``mobile_sam.pt`` →
  mobile_sam, ``sam_l.pt`` → vit_l) or from an explicit prefix: ``vit_b:``, ``vit_l:``,
  ``vit_h:``, ``mobile_sam:``;
- ``random:<kind>`` (e.g. ``random:mobile_sam``, ``random:vit_b``): seeded RANDOM weights, for
  tests and benchmarks only. Masks are meaningless; nothing ever falls back to this silently.

No weights ship with labelpilot. The bare names of ultralytics' release assets (mobile_sam.pt,
sam_b.pt, sam_l.pt) are downloaded into MODEL_DIR on first load unless the locator's
`download` is off (as yolo11n.pt is); any other missing checkpoint raises
`ModelNotFoundError` (a missing ref too), a checkpoint that does not fit its kind raises
`ModelLoadError`, a prompt outside the image raises `PromptError` (all `BackendError`s).

`SamOptions` also says the device (cuda:0 when present, else cpu), the decoder (auto | torch |
onnx; auto picks the faster one at load) and how many models stay loaded (2).
"""

from __future__ import annotations

from labelpilot.backends.sam.engine import SamInteractor, SamModels, SamOptions
from labelpilot.backends.sam.refs import PromptError, SamSpec, parse_sam_ref
from labelpilot.backends.sam.shared_store import RedisEmbeddingStore

__all__ = ["PromptError", "RedisEmbeddingStore", "SamInteractor", "SamModels", "SamOptions",
           "SamSpec", "parse_sam_ref"]
