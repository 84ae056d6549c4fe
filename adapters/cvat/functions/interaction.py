"""Segment Anything as a cvat-sdk interaction function (for CVAT agents).

    cvat-cli --server-host URL --auth USER function create-native "labelpilot SAM" \\
        --function-module labelpilot.adapters.cvat.functions.interaction \\
        -p model=str:vit_b:/models/sam.pth
    cvat-cli --server-host URL --auth USER function run-agent FUNCTION_ID \\
        --function-module labelpilot.adapters.cvat.functions.interaction \\
        -p model=str:vit_b:/models/sam.pth

``model`` is a SAM reference as `labelpilot.backends.sam` reads it (required: an agent reads no
server settings); a checkpoint file is looked up under ``model_dir`` (default ``models``) and
the working directory; ``download=bool:false`` forbids downloading ultralytics' SAM assets;
``device`` and ``decoder`` (auto | torch | onnx) as the server's settings.
`preprocess_image` starts the image embedding (SAM's encoder) so that it is cached by the
time the prompts arrive; `detect` is decoder-only on a cache hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import PIL.Image
from cvat_sdk import models

from labelpilot.adapters.cvat.functions import pil_to_bgr
from labelpilot.adapters.cvat.interactor import load_interactor, mask_shape, prompt_from
from labelpilot.backends.interactive import Interactor
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam.decoder import DecoderChoice

# clicks, negative clicks and a box are all optional (at least a click or a box is needed)
SPEC = cvataa.InteractionFunctionSpec(min_pos_points=0, min_neg_points=0, min_bounding_boxes=0)


@dataclass(frozen=True)
class SamInteractionFunction:
    """cvat-sdk's InteractionFunction protocol over a labelpilot `Interactor`."""

    interactor: Interactor
    spec: cvataa.InteractionFunctionSpec = SPEC

    def preprocess_image(self, context: cvataa.InteractionFunctionContext,
                         image: PIL.Image.Image) -> np.ndarray:
        bgr = pil_to_bgr(image)
        prewarm = getattr(self.interactor, "prewarm", None)
        if prewarm is not None:
            prewarm(bgr)
        return bgr

    def detect(self, context: cvataa.InteractionFunctionContext, pp_image: np.ndarray,
               prompts: cvataa.InteractionPrompts) -> list[cvataa.InteractionResultShape]:
        prompt = prompt_from(prompts.pos_points, prompts.neg_points, prompts.bounding_box)
        shape = mask_shape(self.interactor.segment(pp_image, prompt))
        if shape is None:
            return []
        return [cvataa.InteractionResultShape(
            type="mask", points=shape["points"],
            attributes=[models.AttributeValRequest(spec_id=a["spec_id"], value=a["value"])
                        for a in shape["attributes"]])]


def create(model: str = "", model_dir: str = "models", download: bool = True,
           device: str = "", decoder: str = "auto") -> SamInteractionFunction:
    """The factory cvat-cli calls with the ``-p`` parameters."""
    from labelpilot.backends.offline import configure_ultralytics
    from labelpilot.backends.sam import SamModels, SamOptions

    configure_ultralytics()
    ref = model.strip()
    if not ref:
        raise ValueError("which SAM? pass -p model=str:<checkpoint or kind:path>")
    if decoder not in get_args(DecoderChoice):
        raise ValueError(f"decoder '{decoder}': use one of {', '.join(get_args(DecoderChoice))}")
    options = SamOptions(default_ref=ref, decoder=cast(DecoderChoice, decoder), device=device,
                         max_models=1)
    sam = SamModels(options, ModelLocator(Path(model_dir), download))
    return SamInteractionFunction(load_interactor(ref, sam))
