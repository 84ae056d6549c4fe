"""SAM backend in-process: embedding cache, prompts, decoders (torch vs ONNX), refs and errors.

Models are built with seeded random weights (`random:` refs): no weights exist offline. Their
masks are meaningless but deterministic, which is all these tests need.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from labelpilot.backends.embedding_cache import EmbeddingCache
from labelpilot.backends.errors import ModelLoadError, ModelNotFoundError
from labelpilot.backends.interactive import Interactor, PointPrompt, Prompt
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam import (
    PromptError,
    SamInteractor,
    SamModels,
    SamOptions,
    parse_sam_ref,
)
from labelpilot.backends.sam.decoder import OnnxDecoder, PromptDecoder, TorchDecoder
from labelpilot.backends.sam.engine import Embedding
from labelpilot.backends.sam.models import build_network
from labelpilot.backends.sam.transforms import Frame, encode_prompt, preprocess, upscale_mask
from labelpilot.backends.shapes import BBox

OFFLINE = ModelLocator(Path("models"), download=False)  # random: refs read no files


def photo() -> np.ndarray:
    """A real photo (ultralytics ships bus.jpg), BGR, 1080 x 810."""
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    return cv2.imread(str(path))


@pytest.fixture(scope="module")
def mobile() -> SamInteractor:
    cache: EmbeddingCache = EmbeddingCache(64 * 1024 * 1024, lambda e: e.nbytes)
    return SamInteractor.load(parse_sam_ref("random:mobile_sam", OFFLINE), device="cpu",
                              decoder="torch", cache=cache)


# --- embedding cache -------------------------------------------------------------------------

def test_cache_hits_misses_and_evicts_least_recently_used_under_the_byte_cap():
    cache: EmbeddingCache[bytes] = EmbeddingCache(250, len)
    assert cache.get_or_compute("a", lambda: b"x" * 100) == (b"x" * 100, False)
    assert cache.get_or_compute("a", lambda: b"never") == (b"x" * 100, True)
    cache.get_or_compute("b", lambda: b"y" * 100)
    cache.get_or_compute("a", lambda: b"never")  # a is now the most recent
    cache.get_or_compute("c", lambda: b"z" * 100)  # 300 > 250: evicts b, the least recent
    assert "a" in cache and "c" in cache and "b" not in cache
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.computes, stats.evictions) == (2, 3, 3, 1)
    assert stats.bytes == 200 <= stats.max_bytes
    assert cache.get_or_compute("huge", lambda: b"h" * 300)[1] is False
    assert "huge" not in cache and cache.stats().bytes == 200  # larger than the cap: not kept


def test_concurrent_first_requests_compute_once_and_errors_are_not_cached():
    cache: EmbeddingCache[int] = EmbeddingCache(1000, lambda _: 1)
    calls = []

    def slow() -> int:
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return 42

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute("k", slow), range(8)))
    assert len(calls) == 1 and {value for value, _ in results} == {42}
    assert cache.stats().computes == 1

    def failing() -> int:
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("bad", failing)
    assert cache.get_or_compute("bad", lambda: 7) == (7, False)


# --- prompts and geometry --------------------------------------------------------------------

def test_prompts_map_to_the_1024_frame_with_sam_onnx_labels():
    frame = Frame.for_image(height=768, width=1024 * 2)  # long side 2048 → scale 0.5
    assert (frame.input_height, frame.input_width) == (384, 1024)
    coords, labels = encode_prompt(Prompt(points=(PointPrompt(100, 200),
                                                  PointPrompt(2000, 700, positive=False))),
                                   frame)
    assert coords.shape == (1, 3, 2) and labels.tolist() == [[1, 0, -1]]  # padding point
    assert coords[0, :2].tolist() == [[50, 100], [1000, 350]]
    coords, labels = encode_prompt(Prompt(points=(PointPrompt(10, 10),),
                                          box=BBox(-50, 20, 400, 5000)), frame)
    assert labels.tolist() == [[1, 2, 3]]  # box corners, clipped to the image
    assert coords[0, 1:].tolist() == [[0, 10], [200, 384]]


@pytest.mark.parametrize("prompt, fragment", [
    (Prompt(points=(PointPrompt(-5, 10),)), "outside"),
    (Prompt(points=(PointPrompt(10, 900),)), "outside"),
    (Prompt(box=BBox(900, 10, 1200, 50)), "no area"),
])
def test_prompts_outside_the_image_are_refused(prompt, fragment):
    with pytest.raises(PromptError, match=fragment):
        encode_prompt(prompt, Frame.for_image(768, 800))


def test_preprocess_and_mask_upscale_keep_the_geometry():
    image = np.zeros((300, 600, 3), np.uint8)
    batch, frame = preprocess(image)
    assert batch.shape == (1, 3, 1024, 1024) and (frame.input_height, frame.input_width) == (
        512, 1024)
    assert np.all(batch[0, :, 512:, :] == 0)  # padding below the image
    low = np.full((256, 256), -1.0, np.float32)
    low[0:64, 128:256] = 1.0  # top-right quarter of the content area (rows 0..128 of 256)
    mask = upscale_mask(low, frame)
    assert mask.shape == (300, 600)
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 300) <= 3 and ys.min() == 0 and abs(ys.max() - 150) <= 3


# --- the interactor --------------------------------------------------------------------------

def test_interactor_matches_the_protocol_and_clicks_after_the_first_are_decoder_only(mobile):
    interactor: Interactor = mobile  # (mypy checks SamInteractor against the protocol too)
    assert callable(interactor.segment)
    assert mobile.model_version == "sam-mobile_sam-random"
    image = photo()
    prompt = Prompt(points=(PointPrompt(400, 600),))
    started = time.perf_counter()
    first, source = mobile.segment_with_info(image, prompt)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again, again_source = mobile.segment_with_info(image, Prompt(points=(
        PointPrompt(400, 600), PointPrompt(100, 100, positive=False)), box=BBox(50, 50, 700, 900)))
    again_s = time.perf_counter() - started
    assert (source, again_source) == ("encoded", "memory")
    assert first.mask.shape == image.shape[:2] and first.mask.dtype == bool
    assert 0.0 <= first.score <= 1.0 and 0.0 <= again.score <= 1.0
    assert again_s < first_s / 2, (first_s, again_s)
    same = mobile.segment(image.copy(), prompt)  # same content, another array: same key
    assert np.array_equal(same.mask, first.mask) and same.score == first.score
    assert mobile.cache.stats().computes == 1


def test_concurrent_first_clicks_on_one_image_encode_once(mobile):
    image = np.ascontiguousarray(photo()[:600, :700])
    before = mobile.cache.stats().computes
    encodes = []
    original = mobile.encode

    def counting(img: np.ndarray):  # type: ignore[no-untyped-def]
        encodes.append(1)
        return original(img)

    mobile.encode = counting  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: mobile.segment_with_info(
                image, Prompt(points=(PointPrompt(100 + 50 * i, 300),))), range(4)))
    finally:
        del mobile.encode
    assert len(encodes) == 1 and mobile.cache.stats().computes == before + 1
    assert sorted(source for _, source in answers).count("encoded") == 1


def test_prewarm_makes_the_first_click_a_hit(mobile):
    image = np.ascontiguousarray(photo()[200:900, 100:800])
    assert not mobile.is_cached(image)
    future = mobile.prewarm(image)
    assert future is not None
    future.result(timeout=120)
    assert mobile.is_cached(image)
    assert mobile.segment_with_info(image, Prompt(points=(PointPrompt(5, 5),)))[1] == "memory"


def test_memory_cap_evicts_embeddings(mobile):
    cache: EmbeddingCache = EmbeddingCache(int(1.5 * 4 * 1024 * 1024), lambda e: e.nbytes)
    sam = SamInteractor.__new__(SamInteractor)
    sam.__dict__.update(mobile.__dict__)
    sam.cache = cache
    # the encoder's *content* does not matter here, only its size: skip the 1-2 s encode
    sam.encode = lambda image: Embedding(torch.zeros(1, 256, 64, 64),  # type: ignore[method-assign]
                                         Frame.for_image(*image.shape[:2]))
    images = [np.full((64, 64, 3), value, np.uint8) for value in (10, 20)]
    for image in images:
        assert sam.embedding(image)[1] == "encoded"
    stats = cache.stats()
    assert stats.entries == 1 and stats.evictions == 1 and stats.bytes == 4 * 1024 * 1024
    assert sam.is_cached(images[1]) and not sam.is_cached(images[0])
    assert sam.embedding(images[0])[1] == "encoded"  # evicted: encoded again


# --- decoders --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mobile_sam", "vit_b"])
def test_onnx_decoder_matches_the_torch_decoder(kind):
    network = build_network(parse_sam_ref(f"random:{kind}", OFFLINE), "cpu")
    module = PromptDecoder(network)
    torch_decoder, onnx_decoder = TorchDecoder(module, "cpu"), OnnxDecoder(module)
    rng = np.random.default_rng(1)
    embedding = (rng.standard_normal((1, 256, 64, 64)) * 0.5).astype(np.float32)
    frame = Frame.for_image(768, 1024)
    prompts = [Prompt(points=(PointPrompt(500, 300),)),
               Prompt(points=(PointPrompt(500, 300), PointPrompt(100, 700, positive=False))),
               Prompt(box=BBox(100, 100, 600, 500)),
               Prompt(points=(PointPrompt(300, 300),), box=BBox(100, 100, 600, 500))]
    for prompt in prompts:
        coords, labels = encode_prompt(prompt, frame)
        t_masks, t_scores = torch_decoder(embedding, coords, labels)
        o_masks, o_scores = onnx_decoder(embedding, coords, labels)
        assert t_masks.shape == o_masks.shape == (1, 3, 256, 256)
        scale = float(np.abs(t_masks).max())
        assert np.abs(t_masks - o_masks).max() <= 1e-3 * scale + 1e-4
        assert np.allclose(t_scores, o_scores, atol=1e-4)
        best = int(np.argmax(t_scores[0]))
        assert best == int(np.argmax(o_scores[0]))
        a, b = upscale_mask(t_masks[0, best], frame), upscale_mask(o_masks[0, best], frame)
        assert (a != b).mean() < 1e-3


def test_point_embedding_equals_the_prompt_encoders_own():
    """Our SAM-ONNX-style point/box embedding is what SAM's prompt encoder computes."""
    network = build_network(parse_sam_ref("random:vit_b", OFFLINE), "cpu")
    module = PromptDecoder(network)
    frame = Frame.for_image(1024, 1024)
    for prompt in (Prompt(points=(PointPrompt(10, 20), PointPrompt(500, 600, False))),
                   Prompt(points=(PointPrompt(10, 20),), box=BBox(5, 6, 700, 800))):
        coords, labels = encode_prompt(prompt, frame)
        ours = module._embed_points(torch.from_numpy(coords), torch.from_numpy(labels))
        points = np.array([[p.x, p.y] for p in prompt.points], np.float32)[None]
        point_labels = np.array([[float(p.positive) for p in prompt.points]], np.float32)
        box = None if prompt.box is None else torch.tensor(
            [[prompt.box.x1, prompt.box.y1, prompt.box.x2, prompt.box.y2]])
        with torch.inference_mode():
            native, _ = network.prompt_encoder(
                points=(torch.from_numpy(points), torch.from_numpy(point_labels)), boxes=box,
                masks=None)
        assert torch.allclose(ours, native, atol=1e-5)


# --- model refs ------------------------------------------------------------------------------

def test_refs_name_kinds_and_missing_checkpoints_say_what_to_do(tmp_path):
    offline = ModelLocator(tmp_path, download=False)  # tests: downloads are off
    with pytest.raises(ModelNotFoundError, match="LABELPILOT_SAM_MODEL"):
        SamModels(SamOptions(default_ref=""), offline).spec(None)  # no default, no ref
    with pytest.raises(ModelNotFoundError, match=r"not found.*downloaded by name"):
        parse_sam_ref("sam_vit_b_01ec64.pth", offline)
    with pytest.raises(ModelNotFoundError, match=r"not found"):
        parse_sam_ref("mobile_sam.pt", offline)
    connected = ModelLocator(tmp_path, download=True)  # a user's connected machine:
    spec = parse_sam_ref("mobile_sam.pt", connected)  # ultralytics' asset, fetched on load
    assert spec.kind == "mobile_sam" and spec.checkpoint == tmp_path / "mobile_sam.pt"
    assert SamModels(SamOptions(default_ref="mobile_sam.pt"), connected).spec(None) == spec
    with pytest.raises(ModelNotFoundError, match="unknown SAM kind"):
        parse_sam_ref("random:vit_x", offline)
    for name, kind in [("sam_vit_b_01ec64.pth", "vit_b"), ("sam_vit_h_4b8939.pth", "vit_h"),
                       ("sam_l.pt", "vit_l"), ("mobile_sam.pt", "mobile_sam")]:
        (tmp_path / name).write_bytes(b"x")
        spec = parse_sam_ref(name, offline)
        assert spec.kind == kind and spec.checkpoint == tmp_path / name
        assert spec.version.startswith(f"sam-{kind}-") and "random" not in spec.version
    (tmp_path / "finetuned.pth").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="prefix the ref"):
        parse_sam_ref("finetuned.pth", offline)
    assert parse_sam_ref(f"vit_h:{tmp_path / 'finetuned.pth'}", offline).kind == "vit_h"
    assert parse_sam_ref("random:vit_b", offline).checkpoint is None


def test_checkpoints_load_and_a_wrong_kind_is_a_clear_error(tmp_path, mobile):
    path = tmp_path / "mobile_sam.pt"
    network = build_network(parse_sam_ref("random:mobile_sam", OFFLINE), "cpu")
    for tensor in network.state_dict().values():
        if tensor.is_floating_point():
            tensor.add_(0.5)  # weights that differ from the seeded random ones
    torch.save(network.state_dict(), path)
    loaded = build_network(parse_sam_ref(str(path), OFFLINE), "cpu")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, network.state_dict()[name]), name
    wrong = tmp_path / "sam_vit_b_fake.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, wrong)
    with pytest.raises(ModelLoadError, match="does not fit a vit_b"):
        build_network(parse_sam_ref(str(wrong), OFFLINE), "cpu")
    garbage = tmp_path / "mobile_sam_broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="could not read"):
        build_network(parse_sam_ref(str(garbage), OFFLINE), "cpu")
