"""Media of ``itemlens browse``: which files an item's page may serve, and the thumbnails and
video frames made from them on request (cached in memory, bounded by bytes).

The rule that keeps the server from reading anything else: a media request names an item and
a catalog cell value (``src``); it is served only when that exact string is one of the values
the item's catalog row holds in a column that a feature of the snapshot reads as an image,
video or audio, and the file read is that value resolved against the catalog's folder, as the
ingest resolved it. ``..``, absolute paths and other items' files are refused because they are
not that string, not because of a path check that could be fooled.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from itemlens.extractors.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, decode_image
from itemlens.extractors.media import read_bytes

#: the largest video a page decodes frames from (the ingest's default limit)
MAX_VIDEO_BYTES = 2 * 1024**3
#: thumbnail sizes the pages ask for; other sizes are rounded up to one of these (bounds the cache's keys)
THUMB_SIZES = (64, 160, 320, 640)


class ByteCache:
    """A least-recently-used cache of values with a size in bytes, bounded by their sum."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], tuple[Any, int]]) -> Any:
        """The value of ``key``; ``make()`` gives (value, its size in bytes) on a miss. Two
        threads missing the same key at once both make it (cheaper than holding the lock)."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        value, size = make()
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._bytes += size
            while len(self._entries) > 1 and self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass(frozen=True)
class MediaColumn:
    column: str
    kind: str  # "image", "video" or "audio"


def cell_values(cell: Any) -> list[str]:
    """The paths/URIs a catalog cell holds: a string, or a list of them (other values: none)."""
    if isinstance(cell, str):
        return [cell] if cell else []
    if isinstance(cell, (list, tuple)):
        return [v for v in cell if isinstance(v, str) and v]
    return []


def named_media(row: dict[str, Any] | None, columns: list[MediaColumn]) -> dict[str, str]:
    """Every media value the row names in the media columns -> its kind."""
    out: dict[str, str] = {}
    for media in columns:
        for value in cell_values((row or {}).get(media.column)):
            out.setdefault(value, media.kind)
    return out


def thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG of an image's bytes, its longer side at most ``size`` pixels (decoded with the
    ingest's rules: EXIF orientation, transparency on white, size limits)."""
    image = decode_image(data, DEFAULT_MAX_IMAGE_PIXELS)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def thumb_size(size: int | None) -> int:
    wanted = size or 160
    return next((s for s in THUMB_SIZES if s >= wanted), THUMB_SIZES[-1])


def read_image(uri: str) -> bytes:
    return read_bytes(uri, DEFAULT_MAX_IMAGE_BYTES)


@dataclass
class Frames:
    """The frames a video feature embedded for one video: their indices and JPEGs."""

    indices: list[int]
    jpegs: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(j) for j in self.jpegs) + 64


def sampled_frames(uri: str, video_input, size: int = 320) -> Frames:
    """Decode the frames the ingest sampled from a video (same rule, same decoder:
    :func:`itemlens.extractors.video.read_video_frames`), as JPEGs whose longer side is at most
    ``size``."""
    from PIL import Image

    from itemlens.extractors.video import read_video_frames

    frames, indices = read_video_frames(
        read_bytes(uri, MAX_VIDEO_BYTES), video_input, max_pixels=DEFAULT_MAX_IMAGE_PIXELS
    )
    jpegs = []
    for frame in frames:
        image = Image.fromarray(frame, "RGB")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        jpegs.append(out.getvalue())
    return Frames(list(indices), jpegs)
