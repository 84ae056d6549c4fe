"""`SamInteractor`: encode each image once (cached), answer every prompt with the decoder only."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from labelpilot.backends.device import default_device
from labelpilot.backends.embedding_cache import EmbeddingCache
from labelpilot.backends.interactive import Interactor, MaskResult, Prompt
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.sam.decoder import OnnxDecoder, PromptDecoder, TorchDecoder, choose_decoder
from labelpilot.backends.sam.models import build_network
from labelpilot.backends.sam.refs import SamSpec, parse_sam_ref
from labelpilot.backends.sam.shared_store import RedisEmbeddingStore, shared_store
from labelpilot.backends.sam.transforms import Frame, encode_prompt, preprocess, upscale_mask

log = logging.getLogger(__name__)
ENV_CACHE_MB = "LABELPILOT_SAM_CACHE_MB"
ENV_MAX_MODELS = "LABELPILOT_SAM_MAX_MODELS"
ENV_PREWARM_QUEUE = "LABELPILOT_SAM_PREWARM_QUEUE"
ENCODE_WAIT_SECONDS = 120.0  # how long a click waits for another worker's encode of its image


@dataclass(frozen=True, eq=False)
class Embedding:
    tensor: torch.Tensor  # 1 x 256 x 64 x 64 on the model's device
    frame: Frame

    @property
    def nbytes(self) -> int:
        return self.tensor.element_size() * self.tensor.numel()


@cache
def embedding_cache() -> EmbeddingCache[Embedding]:
    """The process-wide embedding cache (all models; keys carry the model version)."""
    megabytes = float(os.environ.get(ENV_CACHE_MB, "512"))
    return EmbeddingCache(int(megabytes * 1024 * 1024), lambda e: e.nbytes)


_DIGESTS: dict[int, tuple[weakref.ref[np.ndarray], str]] = {}
_DIGESTS_LOCK = threading.Lock()


def image_digest(image: np.ndarray) -> str:
    """Content hash of the decoded pixels (same picture re-uploaded → same key).

    Read-only arrays (the adapters' decoded-image cache hands those out) cannot change, so
    their digest is remembered while they live: a click on a cached image hashes nothing.
    """
    if image.flags.writeable:
        return _hash_pixels(image)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(id(image))
    if known is not None and known[0]() is image:
        return known[1]
    digest = _hash_pixels(image)
    ident = id(image)
    with _DIGESTS_LOCK:
        _DIGESTS[ident] = (weakref.ref(image, lambda _: _DIGESTS.pop(ident, None)), digest)
    return digest


def _hash_pixels(image: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data.cast("B"))
    return digest.hexdigest()


class SamInteractor:
    """One loaded SAM; thread-safe. Implements `labelpilot.backends.interactive.Interactor`."""

    def __init__(self, spec: SamSpec, network: Any, device: str,
                 cache: EmbeddingCache[Embedding] | None = None, decoder: str | None = None,
                 store: RedisEmbeddingStore | None = None):
        self.spec = spec
        self._version = spec.version  # stats the checkpoint: once, not per click
        self.device = device
        self.encoder = network.image_encoder
        self.decoder: TorchDecoder | OnnxDecoder = choose_decoder(PromptDecoder(network), device,
                                                                  decoder)
        self.cache = cache if cache is not None else embedding_cache()
        self.store = store
        self._prewarm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-prewarm")
        self._prewarm_pending = 0
        self._prewarm_lock = threading.Lock()

    @classmethod
    def load(cls, spec: SamSpec, device: str | None = None, decoder: str | None = None,
             cache: EmbeddingCache[Embedding] | None = None,
             store: RedisEmbeddingStore | None = None) -> SamInteractor:
        device = device or default_device()
        started = time.perf_counter()
        network = build_network(spec, device)
        if spec.checkpoint is None:
            log.warning("SAM %s has RANDOM weights (ref %s): for tests and benchmarks only",
                        spec.kind, spec.key)
        interactor = cls(spec, network, device, cache, decoder, store)
        log.info("loaded SAM %s on %s in %.1f s (decoder: %s)", spec.key, device,
                 time.perf_counter() - started, interactor.decoder.name)
        return interactor

    @property
    def model_version(self) -> str:
        return self._version

    def encode(self, image: np.ndarray) -> Embedding:
        """Run the image encoder (no cache): the expensive step."""
        batch, frame = preprocess(image)
        with torch.inference_mode():
            tensor = self.encoder(torch.from_numpy(batch).to(self.device))
        return Embedding(tensor.detach(), frame)

    def embedding(self, image: np.ndarray) -> tuple[Embedding, str]:
        """(embedding, where it came from), computed once per (image content, model version).

        Sources: "memory" (this process's LRU), "redis" (another worker encoded it), "waited"
        (another thread or worker was encoding it right then), "encoded" (this call ran it).
        """
        key = (image_digest(image), self.model_version)
        source = ["waited"]

        def compute() -> Embedding:
            found = self.store.get(key) if self.store else None
            if found is not None:
                source[0] = "redis"
                return Embedding(found[0].to(self.device), found[1])
            claimed = self.store is not None and self.store.claim(key)
            if self.store is not None and not claimed:
                found = self.store.wait(key, timeout=ENCODE_WAIT_SECONDS)
                if found is not None:
                    return Embedding(found[0].to(self.device), found[1])
            source[0] = "encoded"
            try:
                embedding = self.encode(image)
                if self.store is not None:
                    self.store.put(key, embedding.tensor, embedding.frame)
            finally:
                if self.store is not None and claimed:
                    self.store.release(key)
            return embedding

        embedding, hit = self.cache.get_or_compute(key, compute)
        return embedding, "memory" if hit else source[0]

    def is_cached(self, image: np.ndarray) -> bool:
        return (image_digest(image), self.model_version) in self.cache

    def prewarm(self, image: np.ndarray) -> Future[None] | None:
        """Compute the embedding in the background; None when the prewarm queue is full."""
        limit = int(os.environ.get(ENV_PREWARM_QUEUE, "32"))
        with self._prewarm_lock:
            if self._prewarm_pending >= limit:
                return None
            self._prewarm_pending += 1
        return self._prewarm_pool.submit(self._prewarm_one, image)

    def _prewarm_one(self, image: np.ndarray) -> None:
        try:
            self.embedding(image)
        except Exception:
            log.exception("SAM prewarm failed")
        finally:
            with self._prewarm_lock:
                self._prewarm_pending -= 1

    def decode(self, embedding: Embedding, prompt: Prompt) -> MaskResult:
        """Decoder only: the best of SAM's three candidate masks, score = its predicted IoU."""
        coords, labels = encode_prompt(prompt, embedding.frame)
        masks, scores = self.decoder(embedding.tensor, coords, labels)
        best = int(np.argmax(scores[0]))
        mask = upscale_mask(masks[0, best], embedding.frame)
        return MaskResult(mask, float(np.clip(scores[0, best], 0.0, 1.0)))

    def segment_with_info(self, image: np.ndarray, prompt: Prompt) -> tuple[MaskResult, str]:
        """`segment`, plus where the embedding came from (see `embedding`)."""
        embedding, source = self.embedding(image)
        return self.decode(embedding, prompt), source

    def segment(self, image: np.ndarray, prompt: Prompt) -> MaskResult:
        return self.segment_with_info(image, prompt)[0]


def _as_interactor(sam: SamInteractor) -> Interactor:
    return sam  # mypy proves SamInteractor satisfies the Interactor protocol


def _load(key: str) -> SamInteractor:
    return SamInteractor.load(parse_sam_ref(key), store=shared_store())


@cache
def _models() -> ModelCache[SamInteractor]:
    return ModelCache(_load, capacity=int(os.environ.get(ENV_MAX_MODELS, "2")))


def loaded_models() -> list[str]:
    """Keys of the SAM models this process has loaded."""
    return _models().loaded()


def get_interactor(ref: str | None = None) -> SamInteractor:
    """The process-wide interactor for `ref` (default: LABELPILOT_SAM_MODEL), loaded once."""
    return _models().get(parse_sam_ref(ref).key)
