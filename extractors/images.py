"""Reading and decoding catalog images defensively.

Every way an image can be bad (missing, empty, corrupt, truncated, too large, an odd mode)
ends in an :class:`ItemError` with a reason, never in a crashed worker. Images that can be
used are brought to 8-bit RGB the way a product catalog needs:

* EXIF orientation is applied (phone photos are often stored rotated);
* transparency (RGBA, LA, palette with a transparent colour) is composited on white,
  where a plain ``convert("RGB")`` would turn transparent backgrounds black;
* 16-bit greyscale keeps its top 8 bits (a plain convert clips everything above 255 to white);
* CMYK and other modes go through Pillow's own conversion.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from itemlens.extractors.base import ItemError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: default limit on decoded size (width x height); larger images are decompression-bomb errors
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: default limit on an image file's size
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024

_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def has_scheme(uri: str) -> bool:
    """True for ``s3://...``, ``file://...``; False for plain paths (also Windows drives)."""
    scheme = urlparse(uri).scheme
    return len(scheme) > 1


def resolve_uri(value: str, base: str | None) -> str:
    """A catalog cell as a path or URI; relative paths resolve against ``base`` (the catalog's folder)."""
    if has_scheme(value) or os.path.isabs(value) or not base:
        return value
    if has_scheme(base):
        return base.rstrip("/") + "/" + value
    return os.path.normpath(os.path.join(base, value))


def media_key(uri: str) -> str | None:
    """A cheap key of a file's current content, without reading it: its URI, size and
    modification time (object stores: the ETag where they give one). None when it cannot be
    had (a missing file): the caller then reads it, and meets the error there."""
    try:
        if has_scheme(uri) and not uri.startswith("file://"):
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
            info = fs.info(path)
            stamp = (info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
                     or info.get("updated") or info.get("last_modified"))
            if stamp is None:
                return None                       # no change stamp: only the bytes can tell
            return f"{uri}\0{info.get('size')}\0{stamp}"
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        st = os.stat(path)
        return f"{uri}\0{st.st_size}\0{st.st_mtime_ns}"
    except Exception:  # missing, permissions, network: the read will say what is wrong
        return None


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The file's bytes; ItemError("read", ...) when missing, empty, a folder or too large."""
    try:
        if has_scheme(uri) and not uri.startswith("file://"):
            import fsspec

            with fsspec.open(uri, "rb") as f:
                data = f.read(max_bytes + 1)
        else:
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            if os.path.isdir(path):
                raise ItemError("read", f"is a folder, not a file: {uri}")
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except ItemError:
        raise
    except FileNotFoundError:
        raise ItemError("read", f"file not found: {uri}") from None
    except Exception as exc:  # permission, network, bad URI: all per-item
        raise ItemError("read", f"cannot read {uri}: {type(exc).__name__}: {exc}") from None
    if not data:
        raise ItemError("read", f"empty file (0 bytes): {uri}")
    if len(data) > max_bytes:
        raise ItemError("read", f"file larger than max_image_bytes ({max_bytes:,} bytes): {uri}")
    return data


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes to an 8-bit RGB PIL image, or raise ItemError("decode", ...)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

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
                    "decode", f"image too large: {width}x{height} = {width * height:,} pixels "
                              f"> max_image_pixels {max_pixels:,} (decompression-bomb guard)")
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise ItemError("decode", "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ItemError("decode", f"image too large (decompression-bomb guard): {exc}") from None
    except Exception as exc:  # truncated data, broken headers, unsupported codecs
        raise ItemError("decode", f"{type(exc).__name__}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB by the rules above (16-bit, transparency, CMYK ...)."""
    from PIL import Image

    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        arr = np.clip(arr, 0, 65535) >> 8 if arr.max(initial=0) > 255 else np.clip(arr, 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(uri: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read and decode one image (used for online queries; the pipeline splits the two steps)."""
    return decode_image(read_bytes(uri, max_bytes), max_pixels)
