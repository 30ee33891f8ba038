"""Hostile inputs that must not hang, blow up memory or leak a secret: special files named as
media, stalled reads, images that preprocessing would upscale to gigabytes, credentials in
locations, values a text template must not embed, checkpoints the safe loader refuses. No Ray
(the end-to-end cases with a catalog are in tests/test_catalog_guards.py)."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from itemlens.errors import ConfigError, StoreError
from itemlens.extractors.base import ItemError
from itemlens.extractors.images import check_preprocessed_size, decode_image, hf_preprocessed_size, resized_size
from itemlens.extractors.media import MediaLimits, read_bytes
from itemlens.extractors.text import TextTemplate
from itemlens.store.location import StoreLocation
from itemlens.uris import parse_location

from .media import REAL_JPEG


def test_a_fifo_named_as_an_image_is_a_read_error_at_once(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ItemError, match=r"not a regular file \(a FIFO\)"):
        read_bytes(str(fifo), timeout=5)
    assert time.monotonic() - started < 1.0  # no open() that waits for a writer


def test_devices_sockets_and_symlinks_to_them_are_refused(tmp_path):
    with pytest.raises(ItemError, match=r"a character device"):
        read_bytes("/dev/zero")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.jpg"))
        with pytest.raises(ItemError, match=r"a socket|not found|cannot read"):
            read_bytes(str(tmp_path / "s.jpg"))
    (tmp_path / "link.jpg").symlink_to("/dev/zero")
    with pytest.raises(ItemError, match=r"a character device"):
        read_bytes(str(tmp_path / "link.jpg"))
    # a symlink to a regular file is followed (once): catalogs of links to a media folder work
    (tmp_path / "real.jpg").symlink_to(REAL_JPEG)
    assert read_bytes(str(tmp_path / "real.jpg")) == REAL_JPEG.read_bytes()


def test_a_file_larger_than_the_budget_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(10 * 1024**3)  # sparse: 10 GiB that would take long to read
    started = time.monotonic()
    with pytest.raises(ItemError, match="larger than max_media_bytes"):
        MediaLimits(max_bytes=1024, bytes_field="max_media_bytes").read(str(big))
    assert time.monotonic() - started < 1.0


class _SlowFile:
    """A file object whose reads stall, as a network share that stopped answering does."""

    def __init__(self, release: threading.Event):
        self.release = release

    def read(self, n=-1):
        self.release.wait(30)
        return b"late"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_read_that_stalls_is_an_error_within_its_time_budget(monkeypatch):
    import fsspec

    release = threading.Event()
    monkeypatch.setattr(fsspec, "open", lambda uri, mode="rb", **kw: _SlowFile(release))
    started = time.monotonic()
    with pytest.raises(ItemError, match=r"reading took longer than 0.5 s"):
        read_bytes("s3://bucket/stalled.jpg", timeout=0.5)
    assert time.monotonic() - started < 3
    release.set()


class _Encoder:
    """The part of an encoder the size guard asks: its resize, CLIP style (short side to 224)."""

    def preprocessed_size(self, width, height):
        return resized_size(224, "shortest", width, height)


@pytest.mark.parametrize("size", [(1, 100_000), (20_000, 1), (100_000, 1)])
def test_strips_that_the_transform_would_upscale_are_refused_before_it_runs(tmp_path, size):
    path = tmp_path / "strip.png"
    Image.new("RGB", size, (200, 10, 10)).save(path)
    assert path.stat().st_size < 5000  # a few hundred bytes on disk
    image = decode_image(path.read_bytes())  # 100k pixels: within max_image_pixels
    with pytest.raises(ItemError, match="aspect ratio"):
        check_preprocessed_size(image.size, _Encoder())
    # without the aspect-ratio bound, the upscaled size is still refused (20000 x 1 -> 4.5e6 x 224)
    with pytest.raises(ItemError, match=r"would become \d+x\d+ = [\d,]+ pixels"):
        check_preprocessed_size(image.size, _Encoder(), max_aspect_ratio=1e9)


def test_ordinary_shapes_pass_and_the_hf_size_forms_are_read():
    check_preprocessed_size((4000, 3000), _Encoder())
    check_preprocessed_size((64, 2000), _Encoder())  # a 1:31 strip
    assert hf_preprocessed_size({"shortest_edge": 336}, 1000, 500) == (672, 336)
    assert hf_preprocessed_size({"height": 384, "width": 384}, 1, 100_000) == (384, 384)
    assert hf_preprocessed_size({"longest_edge": 512}, 2000, 1000) == (512, 256)
    assert hf_preprocessed_size({"min_pixels": 1, "max_pixels": 2}, 10, 10) is None


def test_the_open_clip_transform_is_guarded_with_its_own_resize(tiny_clip):
    from itemlens.extractors import FeatureSpec, build_encoder

    encoder = build_encoder(FeatureSpec.model_validate({**tiny_clip, "input": {"image": "images"}}))
    size = encoder.preprocess_config()["size"]
    side = size if isinstance(size, int) else min(size)
    assert encoder.preprocessed_size(2 * side, side) == (2 * side, side)
    with pytest.raises(ItemError, match="would become"):
        check_preprocessed_size((20_000, 1), encoder, max_aspect_ratio=1e9)


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("file:///data/x", "/data/x"),
        ("file://localhost/data/x", "/data/x"),
        ("file:/data/x", "/data/x"),
        ("file:///data/a%20b", "/data/a b"),
        ("s3://bucket/lens/", "s3://bucket/lens"),
    ],
)
def test_store_uris_follow_rfc_8089(uri, expected):
    assert StoreLocation.parse(uri).uri == expected


@pytest.mark.parametrize(
    "uri",
    [
        "file://u:SECRET@localhost/path",
        "s3://KEY:SECRET@bucket/lens",
        "gs://u:SECRET@bucket/x",
        "file://SECRET@localhost/x",
    ],
)
def test_credentials_in_any_scheme_are_refused_without_being_repeated(uri):
    with pytest.raises(StoreError) as info:
        StoreLocation.parse(uri)
    assert "SECRET" not in str(info.value) and "credentials" in str(info.value)


def test_other_hosts_query_strings_and_unknown_schemes_are_refused():
    with pytest.raises(StoreError, match="names the host 'fileserver'"):
        StoreLocation.parse("file://fileserver/share/lens")
    with pytest.raises(StoreError, match=r"unknown scheme nope://; a store is a local folder"):
        StoreLocation.parse("nope://bucket/lens")
    assert StoreLocation.parse("gs://bucket/lens").uri == "gs://bucket/lens"
    with pytest.raises(StoreError, match="query string"):
        StoreLocation.parse("s3://bucket/lens?secret=1")
    # the same rules for media: a catalog's file:// image on another host is a read error
    with pytest.raises(ItemError, match="names the host"):
        read_bytes("file://fileserver/x.jpg")
    assert parse_location("file://localhost" + str(REAL_JPEG)).path == str(REAL_JPEG)
    assert read_bytes("file://localhost" + str(REAL_JPEG)) == REAL_JPEG.read_bytes()


def test_a_dict_in_a_text_column_is_an_input_error_naming_the_column():
    template = TextTemplate("{title}. {specs}")
    with pytest.raises(ItemError, match="column 'specs' holds a dict"):
        template.render({"title": "Lamp", "specs": {"watts": 40}})
    with pytest.raises(ItemError, match="column 'specs' holds a list holding a dict"):
        template.render({"title": "Lamp", "specs": [{"watts": 40}]})
    # lists are joined, numbers and bytes are text, missing values are empty (as documented)
    assert template.render({"title": b"Lamp", "specs": ["40 W", np.int64(2), None]}) == "Lamp. 40 W; 2"


def test_a_checkpoint_the_safe_loader_refuses_is_one_error_before_any_work(tmp_path, tiny_clip):
    import argparse

    import torch

    from itemlens.extractors import FeatureSpec, build_encoder

    # a common real case: training arguments pickled into the checkpoint beside the weights,
    # which torch.load(weights_only=True) refuses
    bad = tmp_path / "clip.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(epochs=3)}, bad)
    spec = FeatureSpec.model_validate({**tiny_clip, "checkpoint": str(bad), "input": {"image": "images"}})
    with pytest.raises(ConfigError, match="cannot be loaded safely.*safetensors"):
        build_encoder(spec).check_weights()
    garbage = tmp_path / "clip.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    spec = FeatureSpec.model_validate({**tiny_clip, "checkpoint": str(garbage), "input": {"image": "images"}})
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        build_encoder(spec).check_weights()


def _register(store, ids: list[str], policy):
    """What an ingest's registration does with a full catalog of ``ids`` (workers write the
    catalog's ids as Lance fragments; the writer commits and checks them), without Ray."""
    import pyarrow as pa

    from itemlens.store import lance_io
    from itemlens.store.layout import WORK_IDS_SCHEMA
    from itemlens.store.writer import StoreWriter

    with StoreWriter.open(store) as writer:
        version = writer.base.feature_version("v")
        work = pa.table({"item_id": ids, "row_hash": pa.array(range(len(ids)), pa.int64())}, schema=WORK_IDS_SCHEMA)
        fragments = lance_io.write_fragments(work, writer.reset_work_ids()) if ids else []
        return writer.register_catalog_ids(fragments, remove_missing=[version], removals=policy)


def test_a_full_catalog_removes_at_most_its_allowance(tmp_path):
    """The rule behind --allow-removals and catalog.max_removed_share, counted against the
    published snapshot; when it refuses, nothing is written (items, feature tables)."""
    import itemlens
    from itemlens.errors import CatalogError
    from itemlens.store.writer import RemovalPolicy

    store = tmp_path / "lens"
    ids = [f"i{n:02d}" for n in range(20)]
    itemlens.create(store).put_vectors("v", ids, np.eye(20, 4, dtype=np.float32) + 1, spec={"m": 1})
    table = store / f"{itemlens.connect(store).doc.feature_version('v').table}.lance"
    versions = len(list((table / "_versions").iterdir()))

    def refused(catalog, policy, match):
        with pytest.raises(CatalogError, match=match):
            _register(store, catalog, policy)
        assert len(list((table / "_versions").iterdir())) == versions  # nothing written

    refused([], RemovalPolicy(allowed=RemovalPolicy.ALL), "the catalog is empty")
    refused(
        ids[:6],
        RemovalPolicy(),
        r"would remove 14 of the 20 items that v@v1 holds \(more than "
        r"catalog.max_removed_share 50%\)",
    )
    refused(ids[:6], RemovalPolicy(allowed=13), "more than --allow-removals 13")
    refused(ids[:18], RemovalPolicy(max_share=0.05), "more than catalog.max_removed_share 5%")
    refused(["other"], RemovalPolicy(max_share=1.0), r"would remove 20 of the 20 items .* \(all of them\)")
    assert _register(store, ids[:18], RemovalPolicy()).removed == 2  # a few: fine
    assert _register(store, ids[:10] + ["new"], RemovalPolicy()).removed == 10  # half: fine
    assert _register(store, ids[:6], RemovalPolicy(allowed=14)).removed == 14
