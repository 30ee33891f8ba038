"""The Ray Data stages of an ingestion, one function or class per stage.

::

    catalog ──read──> prepare (CPU tasks) ──> encode (actor pool, GPU) ──> write (CPU tasks) ──> driver
                      text: render template       load the model once per     write Lance fragments      commits
                      (or look up a caption),     actor; encode (or caption); of staging rows; return    fragments in
                      hash, skip unchanged,       pool an item's images,      only their metadata        transactions
                      sort by length              frames or audio windows
                      image/video/audio: read
                      bytes, hash, skip
                      unchanged, decode (PIL,
                      PyAV), the encoder's own
                      transform or resampling

Stages receive the feature spec as JSON and build what they need inside the worker (the
model, the transform), cached per worker process. Every item that enters ``prepare`` and
needs work leaves ``encode`` as one staging row: a value, or an error stage and reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from itemlens.errors import CatalogError
from itemlens.extractors import FeatureSpec, ItemError, build_encoder
from itemlens.extractors.base import Encoder
from itemlens.extractors.images import check_preprocessed_size, decode_image
from itemlens.extractors.items import (
    audio_waveform,
    caption_image_payload,
    caption_video_payload,
    video_pixels,
)
from itemlens.extractors.media import MediaLimits, media_key, resolve_uri
from itemlens.extractors.text import TextTemplate, text_hash
from itemlens.store import lance_io
from itemlens.store.layout import WORK_IDS_SCHEMA, staging_rows, staging_schema
from itemlens.store.lookup import StoredHashes, StoredValues
from itemlens.workflows.encoder_hosts import HostedModel, LocalModel, ModelUnavailable, load_model

PREPARED_TEXT_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("input_hash", pa.string()),
        ("text", pa.string()),
        ("error_stage", pa.string()),
        ("error_reason", pa.string()),
    ]
)
PREPARED_IMAGE_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("input_hash", pa.string()),
        ("media_key", pa.string()),
        ("pixels", pa.large_binary()),  # float32 [n_parts, 3, H, W], C order
        ("n_parts", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("error_stage", pa.string()),
        ("error_reason", pa.string()),
    ]
)
PREPARED_AUDIO_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("input_hash", pa.string()),
        ("media_key", pa.string()),
        ("samples", pa.large_binary()),  # float32 [channels, n_samples] at the model's rate, C order
        ("channels", pa.int32()),
        ("n_samples", pa.int64()),
        ("error_stage", pa.string()),
        ("error_reason", pa.string()),
    ]
)
WRITTEN_SCHEMA = pa.schema(
    [
        ("fragment", pa.string()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("dim", pa.int64()),
        ("vision_tokens", pa.int64()),
        ("generated_tokens", pa.int64()),  # captions: their token counts
    ]
)


def prepared_caption_schema() -> pa.Schema:
    """What a captioner's CPU tasks ship: each item's processor outputs as one struct
    (:func:`~itemlens.extractors.encoders.caption_inputs.payload_arrow_type`: flat bytes, dtypes,
    shapes and token counts), or an error stage and reason."""
    from itemlens.extractors.encoders.caption_inputs import payload_arrow_type

    return pa.schema(
        [
            ("item_id", pa.string()),
            ("input_hash", pa.string()),
            ("media_key", pa.string()),
            ("payload", payload_arrow_type()),
            ("error_stage", pa.string()),
            ("error_reason", pa.string()),
        ]
    )


#: a caption prepare task hands on its items in tables of about this many payload bytes (one item
#: larger than that is a table of its own), so that blocks stay bounded however large the items' pictures
CAPTION_BLOCK_BYTES = 64 << 20


# -- per-worker-process caches ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _spec(spec_json: str) -> FeatureSpec:
    return FeatureSpec.model_validate_json(spec_json)


@functools.lru_cache(maxsize=8)
def _encoder(spec_json: str) -> Encoder:
    """The encoder, unloaded: for its CPU-side preprocessing (no weights in CPU workers)."""
    return build_encoder(_spec(spec_json))


@functools.lru_cache(maxsize=8)
def _image_transform(spec_json: str):
    return _encoder(spec_json).image_transform()


def error_hash(error: ItemError) -> str:
    """The input hash recorded for an input that failed: an unchanged failure is not retried."""
    return "error:" + hashlib.sha256(f"{error.stage}\0{error.reason}".encode()).hexdigest()


def item_ids(batch: pa.Table, id_column: str) -> list[str]:
    """The batch's ids as strings. Registration has refused catalogs with missing ids, so a
    missing one here means the catalog changed during the job."""
    column = batch.column(id_column)
    if column.null_count:
        raise CatalogError(f"a catalog row has no {id_column!r}: did the catalog change during the job?")
    return pc.cast(column, pa.string()).to_pylist()


# -- registration of the catalog's ids -----------------------------------------------------------


def catalog_ids(batch: pa.Table, *, id_column: str) -> pa.Table:
    """Ids (null where a row has none: the driver refuses such a catalog) and a 64-bit hash
    of each whole row (for the catalog's digest). Ids must be strings or integers: a float id
    (8.5, or 8.0 for 8?) or a column of mixed types (read as Python objects) is refused here,
    before the driver writes anything."""
    column = batch.column(id_column)
    check_id_type(column.type, id_column, column)
    ids = pc.cast(column, pa.string())
    hashes = [
        int.from_bytes(
            hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).digest()[:8], "little", signed=True
        )
        for row in batch.to_pylist()
    ]
    return pa.table({"item_id": ids, "row_hash": pa.array(hashes, pa.int64())}, schema=WORK_IDS_SCHEMA)


def check_id_type(dtype: pa.DataType, id_column: str, column=None) -> None:
    """Refuse an id column that is not strings or integers (nulls alone are fine here: the
    driver's id check names them). A dictionary of them (a pandas categorical written to
    Parquet) is one too."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_null(dtype)
    ):
        return
    examples = ""
    if column is not None and not isinstance(dtype, pa.ExtensionType):
        examples = ", e.g. " + ", ".join(repr(v) for v in column.drop_null().slice(0, 3).to_pylist())
    if isinstance(dtype, pa.ExtensionType) or pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        what = "values of mixed types (e.g. numbers and strings)"
    else:
        what = f"{dtype} values{examples}"
    raise CatalogError(
        f"the catalog's id column {id_column!r} holds {what}; ids must all be strings or all integers "
        "(a float id is ambiguous: is 8.0 the id 8?). Write the ids as strings, so nothing was ingested"
    )


# -- prepare: CPU tasks ---------------------------------------------------------------------


def prepare_texts(
    batch: pa.Table, *, spec_json: str, id_column: str, stored: StoredHashes, source: StoredValues | None = None
) -> pa.Table:
    """Render each row's text (or take the caption another feature wrote: ``source``), hash
    it, drop unchanged items; rows sorted by text length so that the encoder's batches, cut
    from consecutive rows, need little padding."""
    spec = _spec(spec_json)
    template = TextTemplate(spec.input.template)
    ids = item_ids(batch, id_column)
    if source is None:
        rows = batch.select(template.columns).to_pylist()
    else:  # input: {feature: NAME}; an item that has no caption gets an input error
        captions = source.lookup(ids)
        rows = [{"text": captions.get(i)} for i in ids]
    check = InputCheck(stored, ids)
    out: list[tuple[str, str, str, str | None, str | None]] = []
    for item_id, row in zip(ids, rows):
        try:
            if source is not None and row["text"] is None:
                # nothing to embed: why is recorded once, where it happened (the caption feature's
                # errors row, or its absent input)
                raise ItemError("absent", f"no caption: feature {spec.input.feature!r} has none for this item")
            text = template.render(row)
            out.append((item_id, text_hash(text), text, None, None))
        except ItemError as error:
            out.append((item_id, error_hash(error), "", error.stage, error.reason))
        if check.unchanged(item_id, out[-1][1]):
            out.pop()
    out.sort(key=lambda r: len(r[2]))
    columns = list(zip(*out)) if out else [[]] * 5
    return pa.table([pa.array(c, f.type) for c, f in zip(columns, PREPARED_TEXT_SCHEMA)], schema=PREPARED_TEXT_SCHEMA)


def _empty(cell: Any) -> bool:
    # A JSON catalog read through pandas gives NaN where a row lacks a list column.
    return cell is None or (isinstance(cell, float) and np.isnan(cell))


def image_uris(cell: Any) -> list[str]:
    """A catalog cell as a list of image paths/URIs; ItemError("absent") when the item has none,
    ItemError("input") when the cell is not usable."""
    if _empty(cell):
        raise ItemError("absent", "no image (empty cell)")
    values = [cell] if isinstance(cell, str) else cell
    if not isinstance(values, (list, tuple)) and type(values).__name__ != "ndarray":
        raise ItemError("input", f"image cell must be a path/URI or a list of them, not {type(cell).__name__}")
    uris = []
    for value in values:
        if not isinstance(value, str):
            raise ItemError("input", f"image cell must hold strings, found {type(value).__name__}: {value!r}")
        if value.strip():
            uris.append(value.strip())
    if not uris:
        raise ItemError("absent", "no image (empty path)")
    return uris


def _image_paths(cell: Any, base: str, limit: int | None = None) -> list[str]:
    """The paths of an item's images, the first ``limit`` of them (None: all)."""
    uris = image_uris(cell)[:limit] if limit is not None else image_uris(cell)
    return [resolve_uri(uri, base) for uri in uris]


def _images_per_item(spec_json: str) -> int | None:
    """How many of an item's images a feature reads (None: all): a captioner's ``images`` option
    (first, all or N); every image for the image encoders, which pool them."""
    encoder = _encoder(spec_json)
    return encoder.images_per_item if encoder.output_kind == "caption" else None


def _read_images(paths: list[str], limits: MediaLimits, reads: _ReadLog) -> tuple[list[bytes], str]:
    """An item's image bytes and their input hash (of the images' hashes, in order)."""
    datas = [reads.read(path, limits) for path in paths]
    return datas, hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in datas)).hexdigest()


def _key(paths: list[str]) -> str | None:
    """The media key of an item's files (None if any has none: then they are read)."""
    keys = [media_key(p) for p in paths]
    if any(k is None for k in keys):
        return None
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _kept(key: str | None, error: ItemError) -> str | None:
    """The media key an errors row keeps: none for a file that could not be read (too large,
    unreachable), so that the next run reads it again rather than trusting its size and mtime."""
    return None if error.stage in ("input", "read") else key


class InputCheck:
    """The one decision the pipeline and the dry run share: an item needs encoding unless its
    input is the one its stored value (or errors row) was computed from.

    Media are compared by their cheap key first (URI, size, mtime/ETag: equal means the files
    are those already encoded, with no read); a changed key only means "read and hash to find
    out", and then the bytes' hash decides. An input that failed the same way before (same
    error hash) is not retried either, unless the run asks to (``--retry-errors`` leaves errors
    out of what is stored)."""

    def __init__(self, stored: StoredHashes, ids: list[str]):
        self.known = stored.lookup_keys(ids)  # item_id -> (input hash, media key)

    def stored_hash(self, item_id: str) -> str | None:
        known = self.known.get(item_id)
        return known[0] if known is not None else None

    def unchanged_by_key(self, item_id: str, key: str | None) -> bool:
        known = self.known.get(item_id)
        return known is not None and key is not None and known[1] == key

    def unchanged(self, item_id: str, digest: str) -> bool:
        return self.stored_hash(item_id) == digest

    def reason(self, item_id: str, digest: str) -> str | None:
        """Why the item is encoded (``new``: nothing stored; ``changed``: another input), or None."""
        stored = self.stored_hash(item_id)
        return "new" if stored is None else ("changed" if stored != digest else None)


class _ReadLog:
    """Reads media files, noting each path in the job's read log when it keeps one (an audit
    that a refresh reads only what changed)."""

    def __init__(self, prefix: str | None):
        self.path = f"{prefix}.reads.{os.getpid()}.log" if prefix else None
        self.paths: list[str] = []

    def read(self, path: str, limits: MediaLimits) -> bytes:
        self.paths.append(path)
        return limits.read(path)

    def flush(self) -> None:
        if self.path and self.paths:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)  # on this worker's node
            with open(self.path, "a") as f:
                f.writelines(p + "\n" for p in self.paths)
        self.paths = []


def prepare_images(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None = None,
) -> pa.Table:
    """Read each item's images, hash their bytes, drop unchanged items, decode the rest and
    apply the encoder's own preprocessing; ship float32 pixels, not images."""
    spec = _spec(spec_json)
    encoder = _encoder(spec_json)
    transform = _image_transform(spec_json)
    ids = item_ids(batch, id_column)
    cells = batch.column(spec.input.image).to_pylist()
    check = InputCheck(stored, ids)
    reads = _ReadLog(read_log)
    out: list[tuple] = []
    for item_id, cell in zip(ids, cells):
        key = None
        try:
            paths = _image_paths(cell, base)
            key = _key(paths)
            if check.unchanged_by_key(item_id, key):
                continue
            datas, digest = _read_images(paths, limits, reads)
        except ItemError as error:
            digest = error_hash(error)
            if not check.unchanged(item_id, digest):
                out.append((item_id, digest, _kept(key, error), b"", 0, 0, 0, error.stage, error.reason))
            continue
        if check.unchanged(item_id, digest):
            continue
        try:
            pixels = np.stack(
                [_preprocess(transform, decode_image(d, limits.max_pixels), encoder, limits) for d in datas]
            )
        except ItemError as error:
            out.append((item_id, digest, key, b"", 0, 0, 0, error.stage, error.reason))
            continue
        n, _, height, width = pixels.shape
        out.append((item_id, digest, key, pixels.tobytes(), n, height, width, None, None))
    reads.flush()
    columns = list(zip(*out)) if out else [[]] * len(PREPARED_IMAGE_SCHEMA)
    return pa.table([pa.array(c, f.type) for c, f in zip(columns, PREPARED_IMAGE_SCHEMA)], schema=PREPARED_IMAGE_SCHEMA)


def media_uri(cell: Any, what: str) -> str:
    """A catalog cell holding one video/audio path or URI; ItemError("absent") when the item has
    none, ItemError("input") when the cell is not usable."""
    if _empty(cell) or (isinstance(cell, str) and not cell.strip()):
        raise ItemError("absent", f"no {what} (empty cell)")
    if not isinstance(cell, str):
        raise ItemError("input", f"{what} cell must be a path/URI, not {type(cell).__name__}: {cell!r}")
    return cell.strip()


def _read_media(path: str, limits: MediaLimits, reads: _ReadLog) -> tuple[bytes, str]:
    data = reads.read(path, limits)
    return data, hashlib.sha256(data).hexdigest()


def _prepare_media(
    batch: pa.Table,
    *,
    column: str,
    what: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None,
    decode,
    schema: pa.Schema,
    empty: tuple,
) -> pa.Table:
    """The loop a one-file-per-item stage shares (videos, audio): skip by media key, read and
    hash, skip by hash, ``decode(bytes) -> columns`` for the rest; a failure is a row with an
    error stage, reason and ``empty`` columns."""
    ids = item_ids(batch, id_column)
    cells = batch.column(column).to_pylist()
    check = InputCheck(stored, ids)
    reads = _ReadLog(read_log)
    out: list[tuple] = []
    for item_id, cell in zip(ids, cells):
        digest = key = None
        try:
            path = resolve_uri(media_uri(cell, what), base)
            key = _key([path])
            if check.unchanged_by_key(item_id, key):
                continue
            data, digest = _read_media(path, limits, reads)
            if check.unchanged(item_id, digest):
                continue
            decoded = decode(data)
        except ItemError as error:
            digest = digest or error_hash(error)
            if not check.unchanged(item_id, digest):
                out.append((item_id, digest, _kept(key, error), *empty, error.stage, error.reason))
            continue
        out.append((item_id, digest, key, *decoded, None, None))
    reads.flush()
    columns = list(zip(*out)) if out else [[]] * len(schema)
    return pa.table([pa.array(c, f.type) for c, f in zip(columns, schema)], schema=schema)


def prepare_videos(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None = None,
) -> pa.Table:
    """Read each video, hash its bytes, drop unchanged items, sample frames (PyAV) and
    apply the vector encoder's own image preprocessing to each (a captioner's videos go through
    :func:`prepare_caption_videos`). Ships float32 pixels [frames, 3, H, W] like the image stage."""
    spec = _spec(spec_json)
    encoder = _encoder(spec_json)
    transform = functools.partial(_preprocess, _image_transform(spec_json), encoder=encoder, limits=limits)

    def decode(data: bytes) -> tuple:
        pixels = video_pixels(data, spec, transform, max_pixels=limits.max_pixels)
        n, _, height, width = pixels.shape
        return pixels.tobytes(), n, height, width

    return _prepare_media(
        batch,
        column=spec.input.video,
        what="video",
        id_column=id_column,
        base=base,
        stored=stored,
        limits=limits,
        read_log=read_log,
        decode=decode,
        schema=PREPARED_IMAGE_SCHEMA,
        empty=(b"", 0, 0, 0),
    )


def prepare_audio(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None = None,
) -> pa.Table:
    """Read each audio file (or a video's audio track), hash its bytes, drop unchanged items,
    decode it with PyAV and resample it to the model's rate and layout with torchaudio."""
    spec = _spec(spec_json)
    encoder = _encoder(spec_json)

    def decode(data: bytes) -> tuple:
        waveform = audio_waveform(data, encoder)
        return waveform.tobytes(), waveform.shape[0], waveform.shape[1]

    return _prepare_media(
        batch,
        column=spec.input.audio,
        what="audio",
        id_column=id_column,
        base=base,
        stored=stored,
        limits=limits,
        read_log=read_log,
        decode=decode,
        schema=PREPARED_AUDIO_SCHEMA,
        empty=(b"", 0, 0),
    )


def prepare_caption_images(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None = None,
):
    """A captioner's image items: read the images its ``images`` option selects (first, all or N,
    in order: the input hash covers exactly those), hash them, drop unchanged items, decode the
    rest and run the model's own processor on each item's images with the prompt. Yields tables
    of prepared items (:func:`prepared_caption_schema`), sorted by vision tokens, of about
    :data:`CAPTION_BLOCK_BYTES` each."""
    spec = _spec(spec_json)
    encoder = _encoder(spec_json)
    limit = encoder.images_per_item
    ids = item_ids(batch, id_column)
    cells = batch.column(spec.input.image).to_pylist()
    check = InputCheck(stored, ids)
    reads = _ReadLog(read_log)
    block = _CaptionBlock()
    for item_id, cell in zip(ids, cells):
        key = None
        try:
            paths = _image_paths(cell, base, limit)
            key = _key(paths)
            if check.unchanged_by_key(item_id, key):
                continue
            datas, digest = _read_images(paths, limits, reads)
        except ItemError as error:
            digest = error_hash(error)
            if not check.unchanged(item_id, digest):
                block.add(item_id, digest, _kept(key, error), error=error)
            continue
        if check.unchanged(item_id, digest):
            continue
        try:
            images = [decode_image(d, limits.max_pixels) for d in datas]
            payload = caption_image_payload(
                encoder, images, max_pixels=limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio
            )
        except ItemError as error:
            block.add(item_id, digest, key, error=error)
            continue
        block.add(item_id, digest, key, payload=payload)
        if block.full:
            yield block.table()
    reads.flush()
    if block.rows or block.first:
        yield block.table()


def prepare_caption_videos(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits,
    read_log: str | None = None,
):
    """A captioner's video items: read each video, hash its bytes, drop unchanged items, sample
    frames (PyAV) with their times and run the model's own processor on them: natively, or on
    the grid of the frames for an image-only model. Yields tables like
    :func:`prepare_caption_images`."""
    spec = _spec(spec_json)
    encoder = _encoder(spec_json)
    ids = item_ids(batch, id_column)
    cells = batch.column(spec.input.video).to_pylist()
    check = InputCheck(stored, ids)
    reads = _ReadLog(read_log)
    block = _CaptionBlock()
    for item_id, cell in zip(ids, cells):
        digest = key = None
        try:
            path = resolve_uri(media_uri(cell, "video"), base)
            key = _key([path])
            if check.unchanged_by_key(item_id, key):
                continue
            data, digest = _read_media(path, limits, reads)
            if check.unchanged(item_id, digest):
                continue
            payload = caption_video_payload(
                data, encoder, max_pixels=limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio
            )
        except ItemError as error:
            digest = digest or error_hash(error)
            if not check.unchanged(item_id, digest):
                block.add(item_id, digest, _kept(key, error), error=error)
            continue
        block.add(item_id, digest, key, payload=payload)
        if block.full:
            yield block.table()
    reads.flush()
    if block.rows or block.first:
        yield block.table()


class _CaptionBlock:
    """Prepared caption items collected into tables of about :data:`CAPTION_BLOCK_BYTES`."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.bytes = 0
        self.first = True  # no table handed on yet (an empty batch still gives one, empty)

    def add(self, item_id: str, digest: str, key: str | None, *, payload=None, error: ItemError | None = None):
        if error is not None:
            self.rows.append((item_id, digest, key, None, error.stage, error.reason))
        else:
            self.rows.append((item_id, digest, key, payload.to_dict(), None, None))
            self.bytes += payload.nbytes

    @property
    def full(self) -> bool:
        return self.bytes >= CAPTION_BLOCK_BYTES

    def table(self) -> pa.Table:
        # by vision tokens, so that the encoder's batches (consecutive rows) are of similar cost
        self.rows.sort(key=lambda r: -1 if r[3] is None else r[3]["vision_tokens"])
        schema = prepared_caption_schema()
        columns = list(zip(*self.rows)) if self.rows else [[]] * len(schema)
        table = pa.table([pa.array(c, f.type) for c, f in zip(columns, schema)], schema=schema)
        self.rows, self.bytes, self.first = [], 0, False
        return table


def _preprocess(transform, image, encoder: Encoder, limits: MediaLimits) -> np.ndarray:
    """The encoder's own transform of a decoded image, once its size has passed the bounds that
    hold after the encoder's resize (an ItemError("decode") otherwise, before any allocation)."""
    check_preprocessed_size(image.size, encoder, max_pixels=limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio)
    try:
        return transform(image)
    except Exception as exc:  # a transform that cannot handle this image is this item's problem
        raise ItemError("decode", f"preprocessing failed: {type(exc).__name__}: {exc}") from None


# -- plan (``--dry-run``): CPU tasks, no decoding, no encoder --------------------------------------

PLAN_SCHEMA = pa.schema([("item_id", pa.string()), ("reason", pa.string())])


def plan_inputs(
    batch: pa.Table,
    *,
    spec_json: str,
    id_column: str,
    base: str,
    stored: StoredHashes,
    limits: MediaLimits | None = None,
    source: StoredValues | None = None,
    dependents=None,
) -> pa.Table:
    """What ``prepare`` would send to the encoder, and why, without decoding anything: one
    row per item to encode with reason ``new`` (no stored input), ``changed`` (the input hash
    differs) or ``dependent`` (its input is a caption that this run writes again). Unchanged
    items leave no row. Media are read and hashed, as a refresh does."""
    spec = _spec(spec_json)
    kind = spec.input.kind
    ids = item_ids(batch, id_column)
    check = InputCheck(stored, ids)
    redo = set()
    if dependents is not None:
        import ray

        redo = ray.get(dependents) if isinstance(dependents, ray.ObjectRef) else set(dependents)
    if kind == "text":
        everything = StoredHashes(None, None, None, None, "")  # compare below, not in prepare
        prepared = prepare_texts(batch, spec_json=spec_json, id_column=id_column, stored=everything, source=source)
        digests = dict(zip(prepared.column("item_id").to_pylist(), prepared.column("input_hash").to_pylist()))
    else:
        cells = batch.column(spec.input.columns[0]).to_pylist()
        limit = _images_per_item(spec_json) if kind == "image" else None
        digests, reads = {}, _ReadLog(None)
        for item_id, cell in zip(ids, cells):
            try:
                paths = (
                    _image_paths(cell, base, limit) if kind == "image" else [resolve_uri(media_uri(cell, kind), base)]
                )
                if check.unchanged_by_key(item_id, _key(paths)):
                    digests[item_id] = check.stored_hash(item_id)
                elif kind == "image":
                    digests[item_id] = _read_images(paths, limits, reads)[1]
                else:
                    digests[item_id] = _read_media(paths[0], limits, reads)[1]
            except ItemError as error:
                digests[item_id] = error_hash(error)
    rows = []
    for item_id in ids:
        reason = "dependent" if item_id in redo else check.reason(item_id, digests[item_id])
        if reason is not None:
            rows.append((item_id, reason))
    columns = list(zip(*rows)) if rows else [[], []]
    return pa.table([pa.array(c, pa.string()) for c in columns], schema=PLAN_SCHEMA)


# -- encode: the actor pool -----------------------------------------------------------------------


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "local"


class EncodeBatches:
    """A Ray Data callable class: one model per actor, loaded on the first batch with work
    (a run where nothing changed loads no model), or an encoder host's where the Ray asks for
    them (workflows/encoder_hosts.py).

    When a batch fails, its items are encoded one by one so that one bad item becomes an
    ``encode`` error row instead of failing the job; when every item fails alone too, the
    failure is the model's, not the data's, and the original error is raised.
    """

    def __init__(
        self,
        spec_json: str,
        fingerprint: str,
        device: str,
        cpu_threads: int,
        run_id: str,
        feature: str = "",
        encode_log: str | None = None,
        model_identity: str | None = None,
    ):
        self.spec_json, self.spec = spec_json, _spec(spec_json)
        self.model_identity = model_identity  # the key of an encoder host's model, from the driver
        # An audit of what the actors encode (``itemlens ingest --encode-log DIR``): each actor
        # appends the ids it gave a value to DIR/<feature>.<run>.encoded.<node>-<pid>.log, as it
        # goes (<node>: the first 12 hex digits of its Ray node id; DIR is on that node's disk).
        self.encode_log = None
        if encode_log:
            name = f"{feature or fingerprint}.{run_id}.encoded.{_node()}-{os.getpid()}.log"
            os.makedirs(encode_log, exist_ok=True)  # on this actor's node
            self.encode_log = os.path.join(encode_log, name)
        self.fingerprint = fingerprint
        self.device = device
        self.cpu_threads = cpu_threads
        self.run_id = run_id
        self.kind = self.spec.input.kind
        self.encoder: Encoder = build_encoder(self.spec)
        self.output = self.encoder.output_kind  # "vector" or "caption"
        self.dtype = np.float16 if self.spec.dtype == "float16" else np.float32
        self.schema: pa.Schema | None = None
        self.model: LocalModel | HostedModel | None = None

    def _load(self) -> None:
        if self.schema is None:
            # loaded here, or an encoder host's (workflows/encoder_hosts.py: off by default)
            self.model = load_model(self.encoder, self.spec_json, self.device, self.cpu_threads, self.model_identity)
            self.dim = self.model.dim
            self.schema = staging_schema(self.spec.dtype, self.dim, self.spec.pooling, self.output)

    def __call__(self, batch: pa.Table) -> pa.Table:
        self._load()
        ok = pc.is_null(batch.column("error_stage")).to_numpy(zero_copy_only=False)
        stages = batch.column("error_stage").to_pylist()
        reasons = batch.column("error_reason").to_pylist()
        todo = np.flatnonzero(ok)
        if self.kind == "text":
            texts = batch.column("text").to_pylist()
            inputs = [texts[i] for i in todo]
            results = self._isolating(inputs, self._encode_texts, canary="itemlens self-check")
        elif self.output == "caption":  # a captioner's prepared items arrive as processor payloads
            from itemlens.extractors.encoders.caption_inputs import VisionPayload

            column = batch.column("payload")
            inputs = [VisionPayload.from_dict(column[int(i)].as_py()) for i in todo]
            results = self._isolating(inputs, self._caption_items, canary=self._caption_canary if inputs else None)
            results = [r if isinstance(r, ItemError) else (r, p.pictures) for r, p in zip(results, inputs)]
        elif self.kind == "audio":
            inputs = [self._waveform(batch, i) for i in todo]
            canary = np.zeros((inputs[0].shape[0], 1600), np.float32) if inputs else None
            results = self._isolating(inputs, self._encode_audio_items, canary=canary)
        else:  # images and video frames arrive as pixels
            inputs = [self._pixels(batch, i) for i in todo]
            canary = np.zeros((1, *inputs[0].shape[1:]), np.float32) if inputs else None
            results = self._isolating(inputs, self._encode_items, canary=canary)
        values: list[Any] = [None] * batch.num_rows
        for i, result in zip(todo, results):
            if isinstance(result, ItemError):
                stages[i], reasons[i] = result.stage, result.reason
            else:
                values[i] = result
        if self.encode_log:
            ids = batch.column("item_id").to_pylist()
            with open(self.encode_log, "a") as f:
                f.writelines(f"{ids[i]}\n" for i, v in enumerate(values) if v is not None)
        return self._staging_rows(batch, values, stages, reasons)

    def _pixels(self, batch: pa.Table, i: int) -> np.ndarray:
        n, h, w = (batch.column(c)[i].as_py() for c in ("n_parts", "height", "width"))
        return np.frombuffer(batch.column("pixels")[i].as_py(), np.float32).reshape(n, 3, h, w)

    def _waveform(self, batch: pa.Table, i: int) -> np.ndarray:
        channels, n = (batch.column(c)[i].as_py() for c in ("channels", "n_samples"))
        return np.frombuffer(batch.column("samples")[i].as_py(), np.float32).reshape(channels, n)

    def _encode_texts(self, texts: list[str]):
        return self.model.run("texts", texts)

    def _encode_items(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return self.model.run("pixels", items)

    def _caption_items(self, payloads: list) -> list:
        return self.model.run("captions", payloads)

    @functools.cached_property
    def _caption_canary(self):
        """A known-good caption input (a probe image through the processor), made once per actor."""
        return self.model.run("caption_probe", None)

    def _encode_audio_items(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return self.model.run("audio", items)

    @staticmethod
    def _isolating(inputs: list, encode, canary) -> list:
        """Encode ``inputs``; if the batch fails, encode its items one by one and record those
        that fail alone as ``encode`` errors. When every item fails, a known-good input (the
        canary) tells a broken model from bad inputs: the model's failure is raised."""
        if not inputs:
            return []
        try:
            return list(encode(inputs))
        except ModelUnavailable:
            raise  # no item's fault
        except Exception as batch_error:
            results: list = []
            for x in inputs if len(inputs) > 1 else []:
                try:
                    results.append(encode([x])[0])
                except ModelUnavailable:
                    raise
                except Exception as exc:
                    results.append(ItemError("encode", f"{type(exc).__name__}: {exc}"))
            if len(inputs) == 1:
                results = [ItemError("encode", f"{type(batch_error).__name__}: {batch_error}")]
            if all(isinstance(r, ItemError) for r in results):
                try:
                    encode([canary])
                except Exception:
                    raise batch_error from None
            return results

    def _staging_rows(self, batch: pa.Table, values: list, stages: list, reasons: list) -> pa.Table:
        n = batch.num_rows
        missing = np.array([v is None for v in values], dtype=bool)
        counts = {}
        if self.output == "caption":  # (Caption, pictures) per item: the text, its token counts, the pictures read
            value_array = pa.array([None if v is None else v[0].text for v in values], pa.string())
            counts = {
                name: pa.array([None if v is None else getattr(v[0], name) for v in values], pa.int32())
                for name in ("vision_tokens", "generated_tokens")
            }
        elif self.spec.pooling == "mean":
            matrix = np.zeros((n, self.dim), self.dtype)
            for i, v in enumerate(values):
                if v is not None:
                    matrix[i] = v
            flat = pa.array(matrix.reshape(-1), self.schema.field("vector").type.value_type)
            value_array = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(missing))
        else:
            value_array = pa.array(
                [None if v is None else np.asarray(v, self.dtype).tolist() for v in values],
                self.schema.field("vectors").type,
            )
        # inputs behind each value: images or frames pooled, or read by a caption; 1 for a text or an audio clip
        if self.output == "caption":
            parts = np.array([0 if v is None else v[1] for v in values], np.int32)
        else:
            parts = (
                batch.column("n_parts").to_numpy().astype(np.int32)
                if "n_parts" in batch.column_names
                else np.ones(n, np.int32)
            )
        return staging_rows(
            self.schema,
            batch.column("item_id"),
            value_array,
            n_parts=np.where(missing, 0, parts),
            input_hash=batch.column("input_hash"),
            media_key=batch.column("media_key") if "media_key" in batch.column_names else None,
            fingerprint=self.fingerprint,
            run_id=self.run_id,
            error_stage=pa.array(stages, pa.string()),
            error_reason=pa.array(reasons, pa.string()),
            **counts,
        )


# -- write: CPU tasks ---------------------------------------------------------------------------


def write_fragments(
    batch: pa.Table, *, uri: str, storage_options: dict | None = None, value_column: str | None = None
) -> pa.Table:
    """Write the batch as Lance data files; return one row of metadata per fragment."""
    fragments = lance_io.write_fragments(batch, uri, storage_options)
    errors = 0
    dim = 0
    if value_column is not None:
        errors = batch.num_rows - batch.column("error_stage").null_count
        vtype = batch.schema.field(value_column).type
        if not pa.types.is_string(vtype):  # captions have no dimension
            dim = (vtype.value_type if pa.types.is_list(vtype) else vtype).list_size
    n = len(fragments)
    tokens = {
        name: (pc.sum(batch.column(name)).as_py() or 0) if name in batch.column_names else 0
        for name in ("vision_tokens", "generated_tokens")
    }
    return pa.table(
        {
            "fragment": fragments,
            "rows": [batch.num_rows] + [0] * (n - 1) if n else [],
            "errors": [errors] + [0] * (n - 1) if n else [],
            "dim": [dim] * n,
            **{name: [count] + [0] * (n - 1) if n else [] for name, count in tokens.items()},
        },
        schema=WRITTEN_SCHEMA,
    )
