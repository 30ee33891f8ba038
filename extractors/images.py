"""Reading and decoding catalog images defensively.

Every way an image can be bad (missing, empty, corrupt, truncated, too large, an odd mode)
ends in an :class:`ItemError` with a reason, never in a crashed worker. Images that can be
used are brought to 8-bit RGB the way a product catalog needs:

* EXIF orientation is applied (phone photos are often stored rotated);
* transparency (RGBA, LA, a palette, greyscale or RGB image with a transparent key colour) is
  composited on white, where a plain ``convert("RGB")`` would turn transparent backgrounds black;
* 16-bit greyscale keeps its top 8 bits (a plain convert clips everything above 255 to white),
  however dark the image is; Pillow's 32-bit ``I`` mode (e.g. a 16-bit PPM) declares no range,
  so it is taken as 16-bit only when a value exceeds 255;
* CMYK and other modes go through Pillow's own conversion.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np

from itemlens.extractors.base import ItemError
from itemlens.extractors.media import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, read_bytes

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: default limit on decoded size (width x height); larger images are decompression-bomb errors
DEFAULT_MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
#: default limit on an image file's size
DEFAULT_MAX_IMAGE_BYTES = DEFAULT_MAX_BYTES

_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes to an 8-bit RGB PIL image, or raise ItemError("decode", ...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # The size check below is ours; Pillow's own bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ItemError("decode", f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ItemError(
                    "decode",
                    f"image too large: {width}x{height} = {width * height:,} pixels "
                    f"> max_image_pixels {max_pixels:,} (decompression-bomb guard)",
                )
            img.load()
            return upright_rgb(img)
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise ItemError("decode", "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ItemError("decode", f"image too large (decompression-bomb guard): {exc}") from None
    except Exception as exc:  # truncated data, broken headers, unsupported codecs
        raise ItemError("decode", f"{type(exc).__name__}: {exc}") from None


def check_preprocessed_size(
    size: tuple[int, int],
    encoder,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> None:
    """Refuse, as a ``decode`` error, an image whose preprocessing would exceed the bounds: an
    aspect ratio above ``max_aspect_ratio``, or more than ``max_pixels`` once the encoder's own
    resize has run (:meth:`Encoder.preprocessed_size`). Checked before the transform, which
    would otherwise allocate the upscaled image (gigabytes for a 1-pixel-high strip)."""
    width, height = size
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > max_aspect_ratio:
        raise ItemError(
            "decode",
            f"image of {width}x{height} has an aspect ratio of {ratio:,.0f}:1 > max_aspect_ratio {max_aspect_ratio:g}",
        )
    resized = encoder.preprocessed_size(width, height)
    if resized is not None and resized[0] * resized[1] > max_pixels:
        raise ItemError(
            "decode",
            f"image of {width}x{height} would become {resized[0]}x{resized[1]} = "
            f"{resized[0] * resized[1]:,} pixels in the encoder's preprocessing "
            f"> max_image_pixels {max_pixels:,}",
        )


def resized_size(size: int | tuple[int, int], mode: str, width: int, height: int) -> tuple[int, int]:
    """The size a resize to ``size`` gives an image of ``width`` x ``height``: ``shortest`` (the
    shorter side becomes ``size``, as CLIP-style transforms do), ``longest`` (the longer side
    does) or ``squash`` (exactly ``size``)."""
    if mode == "squash":
        return (size, size) if isinstance(size, int) else (size[1], size[0])
    target = size if isinstance(size, int) else max(size)
    scale = target / (min(width, height) if mode == "shortest" else max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def hf_preprocessed_size(size: dict | None, width: int, height: int) -> tuple[int, int] | None:
    """:func:`resized_size` for a transformers image processor's ``size`` dict
    (``{"shortest_edge": S}``, ``{"longest_edge": L}``, ``{"height": H, "width": W}``), or None
    for a form it does not know."""
    size = dict(size or {})
    if "height" in size and "width" in size:
        return int(size["width"]), int(size["height"])
    if "shortest_edge" in size:
        return resized_size(int(size["shortest_edge"]), "shortest", width, height)
    if "longest_edge" in size:
        return resized_size(int(size["longest_edge"]), "longest", width, height)
    return None


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened image as the pipeline encodes it: turned by its EXIF orientation, then 8-bit RGB
    (``Lens.search`` and ``Lens.encode`` give PIL images the same treatment)."""
    from PIL import ImageOps

    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB by the rules above (16-bit, transparency, CMYK ...)."""
    from PIL import Image

    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        sixteen_bit = mode in _SIXTEEN_BIT_MODES or arr.max(initial=0) > 255
        arr = np.clip(arr, 0, 65535) >> 8 if sixteen_bit else np.clip(arr, 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "1", "L", "RGB") and "transparency" in img.info:
        # a transparent key colour (PNG tRNS; optimisers write RGBA with only clear or opaque
        # pixels this way): composited on white like any transparency
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(
    uri: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Read and decode one image (used for online queries; the pipeline splits the two steps)."""
    return decode_image(read_bytes(uri, max_bytes, what="max_image_bytes"), max_pixels)
