"""Bad media becomes an ItemError with a stage and a reason; odd but usable images decode right."""

import io

import numpy as np
import pytest
from PIL import Image

from itemlens.extractors import ItemError
from itemlens.extractors.images import decode_image, upright_rgb
from itemlens.extractors.media import read_bytes, resolve_uri
from itemlens.extractors.text import TextTemplate

from .media import REAL_JPEG, jpeg_bytes, write_bad_images


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_images(folder)


@pytest.mark.parametrize(
    "name, stage, reason",
    [
        ("corrupt", "decode", "not a recognised image format"),
        ("truncated", "decode", "truncated"),
        ("zero_bytes", "read", "empty file"),
        ("missing", "read", "file not found"),
        ("bomb", "decode", "decompression-bomb"),
    ],
)
def test_bad_images_are_item_errors(bad, name, stage, reason):
    folder, files = bad
    with pytest.raises(ItemError) as info:
        decode_image(read_bytes(str(folder / files[name])))
    assert info.value.stage == stage
    assert reason in info.value.reason


def test_odd_images_decode_to_rgb_correctly(bad):
    folder, files = bad
    load = lambda name: decode_image(read_bytes(str(folder / files[name])))  # noqa: E731
    for name in ("ok_jpeg", "cmyk", "gray16", "palette_alpha", "transparent"):
        assert load(name).mode == "RGB"
    gray = np.asarray(load("gray16"))
    assert gray[0, 0].tolist() == [0, 0, 0] and gray[-1, -1].tolist() == [255, 255, 255]
    assert 100 < gray[24, 32, 0] < 160  # mid-range 16-bit values keep their grey, not clipped to white
    # a dark 16-bit image stays dark (its values are out of 65535, however small they all are)
    dark = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(dark, "PNG")
    assert np.asarray(decode_image(dark.getvalue())).max() == 0
    assert np.asarray(load("transparent")).min() == 255  # transparent composites on white, not black
    for mode, key in (("RGB", (0, 0, 0)), ("L", 0)):  # a transparent key colour (PNG tRNS) too
        keyed, data = Image.new(mode, (8, 8), key), io.BytesIO()
        keyed.paste(Image.new(mode, (4, 4), (200, 0, 0) if mode == "RGB" else 128), (2, 2))
        keyed.save(data, "PNG", transparency=key)
        pixels = np.asarray(decode_image(data.getvalue()))
        assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[4, 4].tolist() != [255, 255, 255]
    cmyk = np.asarray(load("cmyk")).astype(int)
    original = np.asarray(Image.open(REAL_JPEG).convert("RGB").resize((96, 80))).astype(int)
    assert np.abs(cmyk - original).mean() < 12


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = decode_image(jpeg_bytes(image, exif=exif.tobytes()))
    assert decoded.size == (20, 60)
    # a PIL image given as a query (Lens.search, Lens.encode) is turned the same way
    opened = Image.open(io.BytesIO(jpeg_bytes(image, exif=exif.tobytes())))
    assert upright_rgb(opened).size == (20, 60)


def test_limits_and_paths(tmp_path):
    data = REAL_JPEG.read_bytes()
    with pytest.raises(ItemError, match="larger than max_image_bytes"):
        read_bytes(str(REAL_JPEG), max_bytes=len(data) - 1, what="max_image_bytes")
    with pytest.raises(ItemError, match="too large"):
        decode_image(data, max_pixels=1000)
    with pytest.raises(ItemError, match="not a regular file \\(a folder\\)"):
        read_bytes(str(tmp_path))
    assert resolve_uri("img/a.jpg", "/data/catalog") == "/data/catalog/img/a.jpg"
    assert resolve_uri("/abs/a.jpg", "/data") == "/abs/a.jpg"
    assert resolve_uri("s3://b/a.jpg", "/data") == "s3://b/a.jpg"
    assert resolve_uri("img/a.jpg", "s3://bucket/cat") == "s3://bucket/cat/img/a.jpg"
    assert read_bytes(f"file://{REAL_JPEG}") == data


def test_text_templates():
    t = TextTemplate("{title}. {bullets} ({price:.2f})")
    assert t.render({"title": "Bag", "bullets": ["a", None, "b"], "price": 3.5}) == "Bag. a; b (3.50)"
    assert TextTemplate("{title}. {desc}").render({"title": "Bag", "desc": float("nan")}) == "Bag."
    # a missing number is empty with a format spec too (pandas gives NaN for one), not "nan" or an error
    priced = TextTemplate("{title} costs {price:.2f}")
    for missing in (None, float("nan"), np.float32("nan")):
        assert priced.render({"title": "Hat", "price": missing}) == "Hat costs"
    assert priced.render({"title": "Hat", "price": np.float32(2)}) == "Hat costs 2.00"
    # a Parquet decimal column (prices) is a number like any other; its NaN is missing
    from decimal import Decimal

    plain = TextTemplate("{title} costs {price}")
    assert plain.render({"title": "Hat", "price": Decimal("19.90")}) == "Hat costs 19.90"
    assert priced.render({"title": "Hat", "price": Decimal("NaN")}) == "Hat costs"
    with pytest.raises(ItemError, match="no text: title, desc empty") as info:  # nothing to embed: absent
        TextTemplate("{title}. {desc}").render({"title": None, "desc": "  "})
    assert info.value.stage == "absent"
    with pytest.raises(ItemError, match="empty text") as info:  # punctuation only: a failure
        TextTemplate("{title}. {desc}").render({"title": ".", "desc": None})
    assert info.value.stage == "input"
    with pytest.raises(ItemError) as info:
        TextTemplate("{price:.2f}").render({"price": "cheap"})
    assert info.value.stage == "input"
