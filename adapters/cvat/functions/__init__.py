"""labelpilot's models as `cvat_sdk.auto_annotation` function modules (``create(**params)``).

- `detection`: ``cvat-cli task auto-annotate TASK --function-module
  labelpilot.adapters.cvat.functions.detection -p model=str:/models/best.pt`` (CVAT Community), and
  ``cvat-cli function create-native`` / ``run-agent`` (Enterprise/Online);
- `interaction`: SAM for agents (``function create-native`` / ``run-agent``);
- `tracking`: the template tracker for agents.

Each function object serves both runners: ``spec`` is a frozen cvat-sdk spec object, and the
methods follow cvat-sdk's ``DetectionFunction`` / ``InteractionFunction`` /
``TrackingFunction`` protocols, using the same cores as the nuclio facade.
"""

from __future__ import annotations

import numpy as np
import PIL.Image


def pil_to_bgr(image: PIL.Image.Image) -> np.ndarray:
    """cvat-sdk hands frames over as PIL images; the backends want BGR uint8."""
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
