"""Images from different spectra: 16-bit, float and multi-band TIFFs through a band mapping.

Generated TIFFs whose object is visible only after the right mapping (a square only in the
NIR band; a narrow 16-bit signal that one hot pixel hides from min-max), planar / interleaved /
one-band-per-page layouts, bad mappings and bad files with the errors they give."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from labelpilot.backends import bands as bands_module
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.images import ImageError, decode_image, decode_image_info

SIZE = 64
INSIDE = (slice(24, 40), slice(24, 40))  # the object: 16x16 of 64x64 (6 % of the pixels)


def tiff(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def contrast(image: np.ndarray) -> float:
    """How far the object stands out: the largest channel difference of mean inside/outside."""
    mask = np.zeros(image.shape[:2], bool)
    mask[INSIDE] = True
    pixels = image.astype(np.float64)
    return float(np.max(np.abs(pixels[mask].mean(0) - pixels[~mask].mean(0))))


def rgb_nir(seed: int = 0) -> np.ndarray:
    """(H, W, 4) uint16: R, G, B flat with noise around 1000; a bright square only in NIR."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(990, 1010, (SIZE, SIZE, 4)).astype(np.uint16)
    stack[(*INSIDE, 3)] = 3000
    return stack


def narrow_thermal(seed: int = 0) -> np.ndarray:
    """One 16-bit band: background 1000..1100, object 1150..1200, one hot pixel at 65535."""
    rng = np.random.default_rng(seed)
    band = rng.integers(1000, 1100, (SIZE, SIZE)).astype(np.uint16)
    band[INSIDE] = rng.integers(1150, 1200, (16, 16))
    band[0, 0] = 65535  # a dead/hot pixel: min-max spends the whole 8-bit range on it
    return band


# --- the mapping itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, bands, stretch, shown",
    [
        ("4,1,2", (4, 1, 2), (2.0, 98.0), "4,1,2 stretch 2,98"),
        (" 1 ", (1,), (2.0, 98.0), "1 stretch 2,98"),
        ("", (), (2.0, 98.0), "auto stretch 2,98"),
        ("auto stretch 0.5,99.5", (), (0.5, 99.5), "auto stretch 0.5,99.5"),
        ("3,2,1 stretch 0,100", (3, 2, 1), (0.0, 100.0), "3,2,1 stretch 0,100"),
    ],
)
def test_mappings_parse_and_print_back(text, bands, stretch, shown):
    mapping = BandMapping.parse(text)
    assert (mapping.bands, (mapping.low, mapping.high)) == (bands, stretch)
    assert str(mapping) == shown
    assert BandMapping.parse(str(mapping)) == mapping  # the version info parses back
    assert BandMapping.parse("auto").is_auto and not BandMapping.parse("1").is_auto
    assert BandMapping.parse("4,1,2", "1,99") == BandMapping((4, 1, 2), 1.0, 99.0)


@pytest.mark.parametrize(
    "text, stretch, fragment",
    [
        ("4,x,2", None, "'x' is not a band number"),
        ("4,1", None, "give 3 bands for R,G,B (e.g. '4,1,2') or 1 band shown as gray"),
        ("0,1,2", None, "band numbers start at 1"),
        ("1,2,3", "98,2", "low below high"),
        ("1,2,3", "2,101", "from 0 to 100"),
        ("1", "a,b", "give two percentiles"),
        ("1", "50", "give two percentiles"),
        ("1,2,3 please", None, "write e.g. '4,1,2'"),
    ],
)
def test_bad_mappings_say_what_to_write(text, stretch, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        BandMapping.parse(text, stretch)


def test_a_band_the_image_lacks_is_a_clear_image_error():
    data = tiff(rgb_nir())
    with pytest.raises(ImageError, match="band 5 does not exist: the image has 4 bands"):
        decode_image(data, bands=BandMapping.parse("5,1,2"))
    with pytest.raises(ImageError, match="band 4 does not exist: the image has 3 bands"):
        decode_image(
            cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
            bands=BandMapping.parse("4,1,2"),
        )


# --- objects that only the right mapping shows ----------------------------------------------


def test_a_square_only_in_nir_shows_only_with_a_nir_mapping():
    data = tiff(rgb_nir())
    plain = decode_image(data)  # bands 1-3: R, G, B
    false_colour = decode_image(data, bands=BandMapping.parse("4,1,2"))  # NIR as red
    assert contrast(plain) < 15, "R, G, B do not show the square"
    assert contrast(false_colour) > 150
    red = false_colour[:, :, 2]  # BGR: red is the NIR band
    assert red[INSIDE].min() == 255 and np.median(red) < 60


def test_percentile_stretch_shows_a_narrow_16_bit_signal_that_min_max_hides():
    data = tiff(narrow_thermal())
    min_max = decode_image(data, bands=BandMapping.parse("1", "0,100"))  # today's behaviour
    stretched = decode_image(data)  # default: 2nd..98th percentile
    assert contrast(min_max) < 3, "the hot pixel takes the whole range"
    assert contrast(stretched) > 100
    assert (stretched[:, :, 0] == stretched[:, :, 2]).all(), "one band: gray"
    info = decode_image_info(data)
    assert (info.bands, info.bit_depth, info.image.shape) == (1, 16, (SIZE, SIZE, 3))


def test_16_bit_png_gets_the_percentile_stretch_too():
    band = narrow_thermal()
    data = cv2.imencode(".png", band)[1].tobytes()
    image = decode_image(data)
    assert contrast(image) > 100 and image.dtype == np.uint8


def test_float32_with_nan_and_inf_decodes_and_shows_its_object():
    band = np.random.default_rng(1).normal(0.2, 0.01, (SIZE, SIZE)).astype(np.float32)
    band[INSIDE] = 0.5
    band[0, :4] = (np.nan, np.inf, -np.inf, 1e30)
    info = decode_image_info(tiff(band))
    assert (info.bands, info.bit_depth) == (1, 32)
    assert contrast(info.image) > 150
    assert info.image[0, 0, 0] == 0 and info.image[0, 1, 0] == 255  # NaN dark, +inf bright


# --- layouts --------------------------------------------------------------------------------


def test_planar_interleaved_and_page_per_band_tiffs_decode_alike():
    stack = rgb_nir()
    mapping = BandMapping.parse("4,1,2")
    interleaved = tiff(stack, photometric="minisblack", planarconfig="contig")
    planar = tiff(np.moveaxis(stack, 2, 0), photometric="minisblack", planarconfig="separate")
    pages = io.BytesIO()
    with tifffile.TiffWriter(pages) as writer:
        for index in range(4):
            writer.write(stack[:, :, index], photometric="minisblack")
    stacked = tiff(np.moveaxis(stack, 2, 0), photometric="minisblack")  # shaped: 4 pages
    compressed = tiff(stack, photometric="minisblack", planarconfig="contig", compression="zlib")
    flagged_rgba = tiff(stack, photometric="rgb")  # tifffile marks a 4th sample as alpha
    reference = decode_image(interleaved, bands=mapping)
    for data in (planar, pages.getvalue(), stacked, compressed, flagged_rgba):
        info = decode_image_info(data, bands=mapping)
        assert info.bands == 4 and info.bit_depth == 16
        assert (info.image == reference).all()


def test_more_than_three_bands_without_a_mapping_take_1_to_3_and_warn_once(caplog):
    six = np.random.default_rng(2).integers(0, 4000, (SIZE, SIZE, 6)).astype(np.uint16)
    bands_module._warned.discard(6)
    with caplog.at_level(logging.WARNING, logger="labelpilot.backends.bands"):
        first = decode_image_info(tiff(six, photometric="minisblack", planarconfig="contig"))
        decode_image(tiff(six, photometric="minisblack", planarconfig="contig"))
    warnings = [r for r in caplog.records if "6 bands" in r.getMessage()]
    assert len(warnings) == 1 and "--bands" in warnings[0].getMessage()
    assert first.bands == 6
    assert (first.image == decode_image(tiff(six[:, :, :3], photometric="rgb"))).all()


def test_8_bit_rgb_tiff_orientation_and_alpha_match_pillow():
    pixels = np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        data = tiff(pixels, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        assert (decode_image(data) == expected[:, :, ::-1]).all(), orientation
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent: white, as for PNG
    assert (decode_image(tiff(rgba, photometric="rgb")) == 255).all()


def test_plain_rgb_jpeg_is_untouched_by_an_auto_mapping_and_swapped_by_an_explicit_one():
    pixels = np.random.default_rng(4).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    png = cv2.imencode(".png", pixels)[1].tobytes()
    assert (decode_image(png) == pixels).all()
    assert (decode_image(png, bands=BandMapping()) == pixels).all()
    swapped = decode_image(png, bands=BandMapping.parse("3,2,1"))
    assert (swapped == pixels[:, :, ::-1]).all()
    gray = decode_image(png, bands=BandMapping.parse("2"))  # green as gray
    assert (gray == pixels[:, :, 1:2]).all()
    info = decode_image_info(cv2.imencode(".jpg", pixels)[1].tobytes())
    assert (info.bands, info.bit_depth) == (3, 8)
    assert decode_image_info(cv2.imencode(".png", pixels[:, :, 0])[1].tobytes()).bands == 1


def test_lzw_pages_decode_through_pillow_without_imagecodecs():
    frames = [Image.fromarray(rgb_nir()[:, :, i]) for i in range(4)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    info = decode_image_info(buffer.getvalue(), bands=BandMapping.parse("4,1,2"))
    assert info.bands == 4 and contrast(info.image) > 150


# --- bad files ------------------------------------------------------------------------------


def test_huge_tiffs_are_refused_from_the_header():
    data = tiff(np.zeros((2000, 3000), np.uint16))
    with pytest.raises(ImageError, match="over the limit of 1000000"):
        decode_image(data, max_pixels=1_000_000)
    many = tiff(
        np.zeros((40, 100, 100), np.uint8), photometric="minisblack", planarconfig="separate"
    )
    with pytest.raises(ImageError, match="40 bands or pages"):
        decode_image(many, max_pixels=20_000)


@pytest.mark.parametrize(
    "cut, fragment",
    [
        (0.5, "the TIFF is corrupt or truncated"),
        (0.02, "the TIFF is corrupt or truncated"),
    ],
)
def test_corrupt_tiffs_are_clear_image_errors(cut, fragment):
    data = tiff(rgb_nir())
    with pytest.raises(ImageError, match=fragment):
        decode_image(data[: int(len(data) * cut)])
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(b"II*\x00" + b"\xff" * 40)


def test_a_one_bit_miniswhite_tiff_decodes_white_as_white() -> None:
    """tifffile reads bilevel TIFFs as bool: white-is-zero flips them (no TypeError, no 500)."""
    import io

    import tifffile

    from labelpilot.backends.images import decode_image

    bits = np.zeros((40, 40), bool)
    bits[10:20, 10:20] = True  # ink (black) in a white page
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, bits, photometric="miniswhite")
    image = decode_image(buffer.getvalue())
    assert image.shape == (40, 40, 3)
    assert image[15, 15].max() == 0 and image[30, 30].min() == 255
