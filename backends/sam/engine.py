"""`SamInteractor`: encode each image once (cached), answer every prompt with the decoder only;
`SamModels`: the SAM models of one process, created once by the composition layer."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from labelpilot.backends.device import select_device
from labelpilot.backends.embedding_cache import EmbeddingCache
from labelpilot.backends.interactive import Interactor, MaskResult, Prompt
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam.crop import CropPolicy, segment_cropped
from labelpilot.backends.sam.refs import SamSpec, chosen_ref, parse_sam_ref
from labelpilot.backends.sam.shared_store import RedisEmbeddingStore
from labelpilot.backends.sam.transforms import Frame, encode_prompt, preprocess, upscale_mask

if TYPE_CHECKING:  # torch loads with the first SAM model: a worker without SAM never imports it
    import torch

    from labelpilot.backends.sam.decoder import DecoderChoice, OnnxDecoder, TorchDecoder

log = logging.getLogger(__name__)
ENCODE_WAIT_SECONDS = 120.0  # how long a click waits for another worker's encode of its image


@dataclass(frozen=True, eq=False)
class Embedding:
    tensor: torch.Tensor  # 1 x 256 x 64 x 64 on the model's device
    frame: Frame

    @property
    def nbytes(self) -> int:
        return self.tensor.element_size() * self.tensor.numel()


@dataclass(frozen=True)
class SamOptions:
    """How SAM runs in a process (the LABELPILOT_SAM_* settings; same defaults)."""

    default_ref: str = ""  # LABELPILOT_SAM_MODEL: the model when a request names none
    decoder: DecoderChoice = "auto"
    cache_mb: float = 512  # embeddings kept in memory, all models together (4 MiB each)
    max_models: int = 2
    prewarm_queue: int = 32  # embeddings waiting to be computed ahead of clicks, per model
    device: str = ""  # LABELPILOT_DEVICE; empty: CUDA when present, else CPU


def embedding_cache(megabytes: float) -> EmbeddingCache[Embedding]:
    """An embedding cache of `megabytes` (for all models: keys carry the model version)."""
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

    crop_policy: CropPolicy = CropPolicy()  # clicks on huge images: the window around them

    def __init__(self, spec: SamSpec, network: Any, device: str,
                 cache: EmbeddingCache[Embedding] | None = None,
                 decoder: DecoderChoice = "auto", store: RedisEmbeddingStore | None = None,
                 prewarm_queue: int = SamOptions.prewarm_queue):
        self.spec = spec
        self._version = spec.version  # stats the checkpoint: once, not per click
        self.device = device
        self.encoder = network.image_encoder
        from labelpilot.backends.sam.decoder import PromptDecoder, choose_decoder

        self.decoder: TorchDecoder | OnnxDecoder = choose_decoder(PromptDecoder(network), device,
                                                                  decoder)
        self.cache = cache if cache is not None else embedding_cache(SamOptions.cache_mb)
        self.store = store
        self.prewarm_queue = prewarm_queue
        self._prewarm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-prewarm")
        self._prewarm_pending = 0
        self._prewarm_lock = threading.Lock()

    @classmethod
    def load(cls, spec: SamSpec, device: str = "", decoder: DecoderChoice = "auto",
             cache: EmbeddingCache[Embedding] | None = None,
             store: RedisEmbeddingStore | None = None,
             prewarm_queue: int = SamOptions.prewarm_queue) -> SamInteractor:
        device = select_device(device)
        started = time.perf_counter()
        from labelpilot.backends.sam.models import build_network

        network = build_network(spec, device)
        if spec.checkpoint is None:
            log.warning("SAM %s has RANDOM weights (ref %s): for tests and benchmarks only",
                        spec.kind, spec.key)
        interactor = cls(spec, network, device, cache, decoder, store, prewarm_queue)
        log.info("loaded SAM %s on %s in %.1f s (decoder: %s)", spec.key, device,
                 time.perf_counter() - started, interactor.decoder.name)
        return interactor

    @property
    def model_version(self) -> str:
        return self._version

    def encode(self, image: np.ndarray) -> Embedding:
        """Run the image encoder (no cache): the expensive step."""
        import torch

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
        """Compute the embedding in the background; None when the prewarm queue is full, or
        when clicks on this image are answered on windows (huge: no window is known yet)."""
        if max(image.shape[:2]) > self.crop_policy.above:
            return None
        with self._prewarm_lock:
            if self._prewarm_pending >= self.prewarm_queue:
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
        """`segment`, plus where the embedding came from (see `embedding`). On a huge image
        (`crop_policy`), the window around the prompt is encoded instead (backends/sam/crop.py)."""
        cropped = segment_cropped(self._segment_whole, image, prompt, self.crop_policy)
        return cropped if cropped is not None else self._segment_whole(image, prompt)

    def _segment_whole(self, image: np.ndarray, prompt: Prompt) -> tuple[MaskResult, str]:
        embedding, source = self.embedding(image)
        return self.decode(embedding, prompt), source

    def segment(self, image: np.ndarray, prompt: Prompt) -> MaskResult:
        return self.segment_with_info(image, prompt)[0]


def _as_interactor(sam: SamInteractor) -> Interactor:
    return sam  # mypy proves SamInteractor satisfies the Interactor protocol


class SamModels:
    """The SAM models of one process, created once at start-up and passed to what needs them.

    Each ref loads once (thread-safe; at most `options.max_models`, least recently used dropped
    first); all of them share one embedding cache (`embeddings`, capped by `options.cache_mb`)
    and the Redis tier `shared` (None: no Redis tier).
    """

    def __init__(self, options: SamOptions, locator: ModelLocator,
                 shared: RedisEmbeddingStore | None = None):
        self.options = options
        self.locator = locator
        self.shared = shared
        self.embeddings: EmbeddingCache[Embedding] = embedding_cache(options.cache_mb)
        self._models: ModelCache[SamInteractor] = ModelCache(self._load,
                                                              capacity=options.max_models)
        self._specs: dict[str, SamSpec] = {}  # key → spec: loading needs no second parse

    def spec(self, ref: str | None = None, *, untrusted: bool = False) -> SamSpec:
        """The checked spec of `ref` (None: `options.default_ref`) without loading it; a
        `ModelNotFoundError` says what to set when there is no ref at all. `untrusted`: `ref`
        comes from a label config (confined to MODEL_DIR; the default ref never is)."""
        return parse_sam_ref(chosen_ref(ref, self.options.default_ref), self.locator,
                             untrusted=untrusted and bool(ref))

    def get(self, ref: str | None = None, *, untrusted: bool = False) -> SamInteractor:
        """The interactor for `ref` (None: `options.default_ref`), loaded on first use."""
        spec = self.spec(ref, untrusted=untrusted)
        self._specs.setdefault(spec.key, spec)
        return self._models.get(spec.key)

    def loaded(self) -> list[str]:
        """Keys of the SAM models loaded so far."""
        return self._models.loaded()

    def _load(self, key: str) -> SamInteractor:
        """(A downloadable checkpoint is not on disk before its first load: a second parse of
        its key would not find it.)"""
        options = self.options
        return SamInteractor.load(self._specs[key], device=options.device,
                                  decoder=options.decoder, cache=self.embeddings,
                                  store=self.shared, prewarm_queue=options.prewarm_queue)
