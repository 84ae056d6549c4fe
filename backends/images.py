"""Image decoding with the checks every backend relies on.

Input is raw bytes from any source; output is an upright 8-bit BGR array (ultralytics' and
OpenCV's convention). Every failure is an `ImageError` whose message says what to fix.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # the default of LABELPILOT_MAX_IMAGE_PIXELS
_FAST_MODES = ("RGB", "L")
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"avif")  # ISO-BMFF images


class ImageError(ValueError):
    """The bytes are not an image the backends can use."""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode, apply EXIF orientation, normalise 16-bit / grayscale / alpha / CMYK to BGR.

    Images over `max_pixels` are refused from their header, before decoding."""
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (set LABELPILOT_MAX_IMAGE_PIXELS to raise it)"
                )
            fast = _decode_fast(data, image)
            if fast is not None:
                return fast
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, ImportError) as exc:
        # ImportError: ultralytics' Image.open patch tries a HEIF plugin on unknown bytes.
        video = _video_kind(data)
        if video is not None:
            raise ImageError(f"this is a video ({video}), not an image: use a <Video> tag for it"
                             ) from exc
        raise ImageError("the data is not an image format Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"the image is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is corrupt or truncated: {exc}") from exc
    upright: Image.Image = ImageOps.exif_transpose(image) or image
    return _to_bgr(upright)


def _video_kind(data: bytes) -> str | None:
    """The video container the bytes start with (MP4, MOV, WebM/MKV, AVI), if any."""
    if data[4:8] == b"ftyp" and data[8:12] not in _STILL_BRANDS:
        return "MOV" if data[8:12] == b"qt  " else "MP4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM" if b"webm" in data[:64] else "MKV"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "AVI"
    return None


def _decode_fast(data: bytes, header: Image.Image) -> np.ndarray | None:
    """OpenCV for complete 8-bit RGB/gray JPEG and PNG (faster than Pillow); else None.

    Only files whose end marker is present take this path, because OpenCV decodes a truncated
    JPEG silently; cv2.IMREAD_COLOR applies the EXIF orientation itself.
    """
    tail = data[-16:]
    complete = (header.format == "JPEG" and _JPEG_END in tail) or (
        header.format == "PNG" and tail.endswith(_PNG_END))
    if not complete or header.mode not in _FAST_MODES:
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return array if array is not None and array.ndim == 3 else None


def _to_bgr(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = ((array - low) * scale).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
