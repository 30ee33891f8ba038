"""Generated images for tests: good ones and every kind of bad one."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import EXAMPLE_CATALOG

REAL_JPEG = sorted((EXAMPLE_CATALOG.parent / "images").rglob("*.jpg"))[0]


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming a huge image (a decompression bomb), with little data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    data = zlib.compress(row * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def write_bad_images(folder: Path) -> dict[str, str]:
    """name -> file name, one per kind of problem; each name says what a user should get."""
    folder.mkdir(parents=True, exist_ok=True)
    real = REAL_JPEG.read_bytes()
    files = {
        "ok_jpeg": ("ok.jpg", real),
        "corrupt": ("corrupt.jpg", b"this is not an image at all" * 10),
        "truncated": ("truncated.jpg", real[: len(real) // 3]),
        "zero_bytes": ("empty.jpg", b""),
        "bomb": ("bomb.png", png_bomb()),
    }
    for filename, data in files.values():
        (folder / filename).write_bytes(data)
    base = Image.open(REAL_JPEG).convert("RGB").resize((96, 80))
    base.convert("CMYK").save(folder / "cmyk.jpg")
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette_alpha.png", transparency=0)
    rgba = Image.new("RGBA", (50, 40), (255, 0, 0, 0))  # fully transparent red
    rgba.save(folder / "transparent.png")
    out = {name: filename for name, (filename, _) in files.items()}
    out.update(
        cmyk="cmyk.jpg",
        gray16="gray16.png",
        palette_alpha="palette_alpha.png",
        transparent="transparent.png",
        missing="does-not-exist.jpg",
    )
    return out


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save)
    return buffer.getvalue()
