import io

import numpy as np
import pytest
from PIL import Image

from labelpilot.backends.images import ImageError, decode_image


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_png_decodes_to_bgr():
    data = encode(Image.new("RGB", (8, 4), (255, 0, 0)))
    array = decode_image(data)
    assert array.shape == (4, 8, 3) and array.dtype == np.uint8
    assert tuple(array[0, 0]) == (0, 0, 255)  # BGR


def test_grayscale_rgba_16bit_are_normalised():
    assert decode_image(encode(Image.new("L", (5, 5), 7))).shape == (5, 5, 3)
    rgba = decode_image(encode(Image.new("RGBA", (5, 5), (0, 0, 0, 0))))
    assert tuple(rgba[0, 0]) == (255, 255, 255)  # transparent → white background
    sixteen = Image.fromarray(np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    out = decode_image(encode(sixteen))
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    array = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert array.shape[:2] == (20, 10)


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"definitely not an image", "not an image format"),
    (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt or truncated"),
])
def test_bad_bytes_raise_clear_errors(data, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_image(data)


def test_huge_image_is_refused_before_decoding():
    data = encode(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(data, max_pixels=10_000_000)


def test_fast_and_pillow_paths_agree_and_truncated_jpeg_is_still_refused():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    png = encode(Image.fromarray(pixels))
    assert (decode_image(png) == pixels[:, :, ::-1]).all()  # lossless: exact BGR
    jpeg = encode(Image.fromarray(pixels), "JPEG", quality=95)
    fast = decode_image(jpeg)
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:, :, ::-1]
    assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 2
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(jpeg[: len(jpeg) // 2])


def test_exif_orientation_applies_on_the_fast_path_too():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise on display
    array = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert array.shape[:2] == (30, 10)
