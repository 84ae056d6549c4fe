"""Building SAM networks: segment-anything for ViT-B/L/H, ultralytics' builder for MobileSAM.

Both give a module with `image_encoder`, `prompt_encoder` and `mask_decoder` of the same shapes
(1024 px input, 256 x 64 x 64 embedding), so the rest of labelpilot.backends.sam treats them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from labelpilot.backends.errors import ModelLoadError, ModelNotFoundError
from labelpilot.backends.sam.refs import SamSpec

RANDOM_SEED = 0  # random weights are seeded: every worker process builds the same model


def build_network(spec: SamSpec, device: str) -> Any:
    """The network in eval mode on `device`, weights loaded (or seeded random)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = _architecture(spec)
    if spec.checkpoint is not None:
        _load_weights(net, spec)
    return net.eval().to(device)


def _architecture(spec: SamSpec) -> Any:
    if spec.kind == "mobile_sam":
        from labelpilot.backends.offline import configure_ultralytics

        configure_ultralytics()
        from ultralytics.models.sam.build import build_mobile_sam

        return build_mobile_sam(checkpoint=None)
    from segment_anything import sam_model_registry

    return sam_model_registry[spec.kind](checkpoint=None)


def _download(path: Path) -> None:
    """An ultralytics release asset named in `labelpilot.backends.sam.refs.DOWNLOADABLE`."""
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics()
    from ultralytics.utils.downloads import attempt_download_asset

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        attempt_download_asset(str(path))
    except Exception as exc:
        raise ModelNotFoundError(f"could not download SAM weights {path.name}: {exc}; put "
                                 f"the file at {path}") from exc
    if not path.is_file():
        raise ModelNotFoundError(f"could not download SAM weights {path.name}: put the file "
                                 f"at {path}")


def _load_weights(net: Any, spec: SamSpec) -> None:
    path = spec.checkpoint
    assert path is not None
    if not path.is_file():
        _download(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not read SAM checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # ultralytics-style wrapper
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds no state dict (a {type(state).__name__})")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(
            f"{path} does not fit a {spec.kind} SAM ({first}); if it is another kind, prefix "
            "the ref with it, e.g. vit_h:/path/to/sam_vit_h.pth") from exc
