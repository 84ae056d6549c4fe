"""The prompt → mask half of SAM, as one torch module and as the same graph in onnxruntime.

`PromptDecoder` embeds points the way segment-anything's `SamOnnxModel` does (labels -1..3, so a
box travels as two corner points) and runs the mask decoder with multimask output. The torch and
ONNX paths therefore compute the same function; `tests/test_sam.py` checks they agree.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
DecoderChoice = Literal["auto", "torch", "onnx"]  # LABELPILOT_SAM_DECODER


class PromptDecoder(nn.Module):
    """(embedding 1x256x64x64, coords 1xNx2, labels 1xN) → (3 low-res masks, 3 IoU scores)."""

    def __init__(self, network: Any, input_size: int = 1024):
        super().__init__()
        self.prompt_encoder = network.prompt_encoder
        self.mask_decoder = network.mask_decoder
        self.input_size = input_size

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer._pe_encoding((coords + 0.5) / self.input_size)
        labels = labels.unsqueeze(-1).expand_as(embedding)
        embedding = embedding * (labels != -1)
        embedding = embedding + encoder.not_a_point_embed.weight * (labels == -1)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            1, -1, image_embeddings.shape[-2], image_embeddings.shape[-1])
        masks, scores = self.mask_decoder(
            image_embeddings=image_embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=True)
        return masks, scores


class TorchDecoder:
    name = "torch"

    def __init__(self, module: PromptDecoder, device: str):
        self.module = module
        self.device = device

    def __call__(self, embedding: np.ndarray | torch.Tensor, coords: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            emb = torch.as_tensor(embedding).to(self.device)
            masks, scores = self.module(emb, torch.from_numpy(coords).to(self.device),
                                        torch.from_numpy(labels).to(self.device))
        return masks.float().cpu().numpy(), scores.float().cpu().numpy()


class OnnxDecoder:
    name = "onnx"

    def __init__(self, module: PromptDecoder):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # follows OMP_NUM_THREADS
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            export_onnx(module), options, providers=["CPUExecutionProvider"])

    def __call__(self, embedding: np.ndarray | torch.Tensor, coords: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = embedding.cpu().numpy() if isinstance(embedding, torch.Tensor) else embedding
        inputs = {"image_embeddings": emb.astype(np.float32, copy=False),
                  "point_coords": coords, "point_labels": labels}
        masks, scores = self.session.run(None, inputs)
        return masks, scores


def export_onnx(module: PromptDecoder) -> bytes:
    """The decoder as ONNX (opset 17, legacy exporter; the dynamo one fails on it), in memory."""
    import warnings

    module = _exportable(module)
    dummy = (torch.randn(1, 256, 64, 64), torch.randint(0, 1024, (1, 5, 2)).float(),
             torch.randint(-1, 4, (1, 5)).float())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, dummy, cast(Any, buffer), input_names=["image_embeddings", "point_coords",
                                                "point_labels"],
            output_names=["masks", "scores"], opset_version=17, dynamo=False,
            dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}})
    return buffer.getvalue()


class _LayerNorm2d(nn.Module):
    """segment-anything's LayerNorm2d: ultralytics' copy passes a traced shape to layer_norm,
    which the ONNX exporter cannot handle. Same weights, same function."""

    def __init__(self, original: Any):
        super().__init__()
        self.weight: torch.Tensor = original.weight
        self.bias: torch.Tensor = original.bias
        self.eps: float = original.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _exportable(module: PromptDecoder) -> PromptDecoder:
    """A CPU copy of the decoder with export-friendly layer norms."""
    import copy

    clone = copy.deepcopy(module).cpu().eval()
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "LayerNorm2d":
                setattr(parent, name, _LayerNorm2d(child))
    return clone


def choose_decoder(module: PromptDecoder, device: str,
                   choice: DecoderChoice = "auto") -> TorchDecoder | OnnxDecoder:
    """torch, onnx, or auto (time both on CPU, keep the faster; torch on a GPU)."""
    torch_decoder = TorchDecoder(module, device)
    if choice == "torch" or (choice == "auto" and not device.startswith("cpu")):
        return torch_decoder
    try:
        onnx_decoder = OnnxDecoder(module)
    except Exception as exc:
        if choice == "onnx":
            raise
        log.warning("ONNX SAM decoder unavailable, using torch: %s", exc)
        return torch_decoder
    if choice == "onnx":
        return onnx_decoder
    onnx_s, torch_s = _time_decoder(onnx_decoder), _time_decoder(torch_decoder)
    fast: TorchDecoder | OnnxDecoder = onnx_decoder if onnx_s <= torch_s else torch_decoder
    log.info("SAM decoder: %s (onnx %.0f ms, torch %.0f ms per click)", fast.name,
             1000 * onnx_s, 1000 * torch_s)
    return fast


def _time_decoder(decode: TorchDecoder | OnnxDecoder, repeats: int = 3) -> float:
    embedding = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords = np.array([[[512.0, 400.0], [0.0, 0.0]]], dtype=np.float32)
    labels = np.array([[1.0, -1.0]], dtype=np.float32)
    decode(embedding, coords, labels)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        decode(embedding, coords, labels)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
