"""Image decoding with the checks every backend relies on.

Input is raw bytes from any source; output is an upright 8-bit BGR array (ultralytics' and
OpenCV's convention). Every failure is an `ImageError` whose message says what to fix.
16-bit, float and multi-band images (TIFF through tifffile: planar or interleaved bands,
multi-page stacks) become 8-bit through a `BandMapping` (see `labelpilot.backends.bands`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from labelpilot.backends.bands import BandError, BandMapping

DEFAULT_MAX_PIXELS = 64_000_000  # the default of LABELPILOT_MAX_IMAGE_PIXELS
MAX_VALUES_PER_PIXEL = 16  # a TIFF may hold this many bands of max_pixels each
_MAX_PAGES = 255  # further pages read as bands, at most
_FAST_MODES = ("RGB", "L")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"avif")  # ISO-BMFF images
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_AUTO = BandMapping()


class ImageError(ValueError):
    """The bytes are not an image the backends can use."""


@dataclass(frozen=True)
class DecodedImage:
    """The BGR uint8 image a model sees, and what the source file was."""

    image: np.ndarray
    bands: int  # bands in the source (alpha not counted): 1 gray, 3 colour, 4 RGB+NIR...
    bit_depth: int  # bits per sample in the source: 8, 16, 32 (float32)...


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, bands: BandMapping | None = None
) -> np.ndarray:
    """Decode, apply EXIF orientation, normalise 16-bit / grayscale / alpha / CMYK /
    multi-band to BGR (`bands`: the project's mapping; None: bands 1-3 and the default
    percentile stretch). Images over `max_pixels` are refused from their header."""
    return decode_image_info(data, max_pixels=max_pixels, bands=bands).image


def decode_image_info(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, bands: BandMapping | None = None
) -> DecodedImage:
    """`decode_image`, plus the source's band count and bit depth (for quality checks)."""
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    if data[:4] in _TIFF_MAGIC:
        return _decode_tiff(data, max_pixels, bands)
    return _decode_pillow(data, max_pixels, bands)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (set LABELPILOT_MAX_IMAGE_PIXELS to raise it)"
        )


def _mapped(stack: np.ndarray, mapping: BandMapping | None, bit_depth: int) -> DecodedImage:
    """(H, W, bands) → the mapped BGR image; a band the mapping lacks is an ImageError."""
    try:
        image = (mapping or _AUTO).to_bgr(stack)
    except BandError as exc:
        raise ImageError(str(exc)) from exc
    return DecodedImage(image, stack.shape[2], bit_depth)


def _decode_pillow(data: bytes, max_pixels: int, mapping: BandMapping | None) -> DecodedImage:
    explicit = mapping is not None and bool(mapping.bands)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            _check_size(*image.size, max_pixels)
            fast = _decode_fast(data, image)
            if fast is not None:
                count = 1 if image.mode == "L" else 3
                if not explicit:
                    return DecodedImage(fast, count, 8)
                return _mapped(fast[:, :, :1] if count == 1 else fast[:, :, ::-1], mapping, 8)
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, ImportError) as exc:
        # ImportError: ultralytics' Image.open patch tries a HEIF plugin on unknown bytes.
        video = _video_kind(data)
        if video is not None:
            raise ImageError(
                f"this is a video ({video}), not an image: use a <Video> tag for it"
            ) from exc
        raise ImageError("the data is not an image format Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"the image is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is corrupt or truncated: {exc}") from exc
    upright: Image.Image = ImageOps.exif_transpose(image) or image
    return _from_pillow(upright, mapping, explicit)


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
        header.format == "PNG" and tail.endswith(_PNG_END)
    )
    if not complete or header.mode not in _FAST_MODES:
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return array if array is not None and array.ndim == 3 else None


def _from_pillow(image: Image.Image, mapping: BandMapping | None, explicit: bool) -> DecodedImage:
    count = 1 if image.mode in _GRAY_MODES else 3
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        depth = 16 if image.mode.startswith("I;16") else 32
        return _mapped(array.reshape(*array.shape[:2], 1), mapping, depth)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"))
    if explicit:
        return _mapped(rgb[:, :, :1] if count == 1 else rgb, mapping, 8)
    return DecodedImage(np.ascontiguousarray(rgb[:, :, ::-1]), count, 8)


def _decode_tiff(data: bytes, max_pixels: int, mapping: BandMapping | None) -> DecodedImage:
    """TIFF through tifffile: any bit depth, planar or interleaved bands, one band per page.
    Palette / YCbCr / CMYK TIFFs, 8-bit RGBA (composited on white as other formats) and
    compressions tifffile cannot decode without imagecodecs (LZW, JPEG) go to Pillow."""
    explicit = mapping is not None and bool(mapping.bands)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            page = tif.pages.first
            axes, shape = series.axes, series.shape
            if "Y" not in axes or "X" not in axes:
                raise ImageError(f"the TIFF holds no image plane (axes {axes})")
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            _check_size(width, height, max_pixels)
            photometric = int(page.photometric)
            alpha = photometric == tifffile.PHOTOMETRIC.RGB and any(
                int(e) in (1, 2) for e in page.extrasamples
            )
            if photometric not in _TIFF_PLAIN or (
                alpha and page.dtype == np.uint8 and not explicit
            ):
                return _decode_pillow(data, max_pixels, mapping)
            pages = _band_pages(tif, series)
            values = int(np.prod(shape)) * (1 + len(pages))
            if values > MAX_VALUES_PER_PIXEL * max_pixels:
                raise ImageError(
                    f"the TIFF holds {values} values ({width}x{height} pixels, "
                    f"{values // (width * height)} bands or pages), over the limit of "
                    f"{MAX_VALUES_PER_PIXEL} x LABELPILOT_MAX_IMAGE_PIXELS ({max_pixels})"
                )
            stack = _band_stack(series.asarray(), axes)
            if pages:
                stack = np.concatenate([stack, *(p.asarray()[:, :, None] for p in pages)], axis=2)
            orientation = tif.pages.first.tags.get(274)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises many kinds (IndexError, zlib.error, ...)
        if "imagecodecs" in str(exc):
            return _tiff_with_pillow(data, max_pixels, mapping, str(exc))
        raise ImageError(f"the TIFF is corrupt or truncated: {exc}") from exc
    if stack.dtype.kind not in "uifb":
        raise ImageError(
            f"the TIFF holds {stack.dtype} samples; labelpilot reads integer and float images"
        )
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        if stack.dtype.kind == "b":  # 1-bit bilevel: white is 0
            stack = ~stack
        else:
            stack = np.iinfo(stack.dtype).max - stack if stack.dtype.kind in "ui" else -stack
    if alpha and not explicit:
        stack = stack[:, :, :3]  # 16-bit / float RGBA: alpha is no band
    stack = _orient(stack, int(orientation.value) if orientation is not None else 1)
    return _mapped(stack, mapping, stack.dtype.itemsize * 8 if stack.dtype.kind != "b" else 1)


_TIFF_PLAIN = (
    int(tifffile.PHOTOMETRIC.MINISBLACK),
    int(tifffile.PHOTOMETRIC.MINISWHITE),
    int(tifffile.PHOTOMETRIC.RGB),
)


def _band_pages(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> list[tifffile.TiffPage]:
    """Further pages that are bands of a single-band first page (one band per page, as some
    multispectral cameras write): same size and type; tifffile gives each its own series."""
    if series.ndim != 2 or len(tif.pages) < 2:
        return []
    first = tif.pages.first
    found = []
    for page in tif.pages[1:]:
        if (
            isinstance(page, tifffile.TiffPage)
            and page.shape == first.shape
            and page.dtype == first.dtype
        ):
            found.append(page)
            if len(found) >= _MAX_PAGES:
                break
    return found


def _band_stack(array: np.ndarray, axes: str) -> np.ndarray:
    """A tifffile series (axes like YX, YXS, SYX, IYX, TZCYX) → (H, W, bands): the sample
    axis, else the channel axis, else the first other axis longer than 1 are the bands; the
    first index of any further axis (time, depth...) is taken."""
    y, x = axes.index("Y"), axes.index("X")
    rest = [i for i in range(array.ndim) if i not in (y, x) and array.shape[i] > 1]
    band = next((i for i in rest if axes[i] == "S"), None)
    if band is None:
        band = next((i for i in rest if axes[i] == "C"), rest[0] if rest else None)
    keep = [y, x] + ([band] if band is not None else [])
    moved = np.moveaxis(array, keep, list(range(len(keep))))
    moved = moved[(slice(None),) * len(keep) + (0,) * (moved.ndim - len(keep))]
    return moved if moved.ndim == 3 else moved[:, :, None]


def _orient(stack: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the TIFF Orientation tag (the same values as EXIF's)."""
    if orientation == 2:
        return stack[:, ::-1]
    if orientation == 3:
        return stack[::-1, ::-1]
    if orientation == 4:
        return stack[::-1]
    if orientation == 5:
        return stack.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(stack, -1)
    if orientation == 7:
        return stack.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(stack, 1)
    return stack


def _tiff_with_pillow(
    data: bytes, max_pixels: int, mapping: BandMapping | None, why: str
) -> DecodedImage:
    """A TIFF compressed in a way tifffile needs imagecodecs for: Pillow reads single-band
    pages (stacked as bands) and 8-bit colour; anything else says what to install."""
    try:
        image = Image.open(io.BytesIO(data))
        frames: list[np.ndarray] = []
        count = min(int(getattr(image, "n_frames", 1)), _MAX_PAGES)
        width, height = image.size
        if count * width * height > MAX_VALUES_PER_PIXEL * max_pixels:
            raise ImageError(
                f"the TIFF holds {count} pages of {width}x{height}, over the limit of "
                f"{MAX_VALUES_PER_PIXEL} x LABELPILOT_MAX_IMAGE_PIXELS ({max_pixels})")
        if image.mode in _GRAY_MODES and count > 1:
            size = image.size
            for index in range(count):
                image.seek(index)
                if image.size == size and image.mode in _GRAY_MODES:
                    frames.append(np.asarray(image))
        if len(frames) > 1 and len({f.dtype for f in frames}) == 1:
            stack = np.stack(frames, axis=2)
            return _mapped(stack, mapping, stack.dtype.itemsize * 8)
        return _decode_pillow(data, max_pixels, mapping)
    except (ImageError, OSError, ValueError) as exc:
        raise ImageError(
            f"this TIFF cannot be decoded ({why}); install imagecodecs "
            "(pip install imagecodecs) or save it uncompressed or with Deflate"
        ) from exc
