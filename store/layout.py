"""Where things live in a store, and their Arrow schemas.

A store is a LanceDB database (a local folder by default):

==============================  =============================================================
``meta``                        format version and creation info (one row per key)
``items``                       item_id -> item_index: stable, append-only, never reused
``errors``                      items that have no value for a feature version, and why
``snapshots``                   one row per published snapshot: a JSON document naming the
                                Lance version of every table it covers
``feature__<name>__<fp>``       one table per feature version (fp = spec fingerprint)
``_staging/<name>__<fp>.lance`` rows encoded by a running job, committed as it goes, merged
                                into the feature table at the end (a rerun resumes from it)
``_work/catalog_ids.lance``     the catalog's ids during an ingest (duplicate check, new ids)
==============================  =============================================================

The ``_``-prefixed folders are not LanceDB tables and are invisible to readers.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2  # 2: media_key beside input_hash (refresh compares it before reading media)

META_TABLE = "meta"
ITEMS_TABLE = "items"
ERRORS_TABLE = "errors"
SNAPSHOTS_TABLE = "snapshots"
WORK_IDS_PATH = "_work/catalog_ids.lance"
LOCK_FILE = "_itemlens_writer.lock"

TIMESTAMP = pa.timestamp("us", tz="UTC")

META_SCHEMA = pa.schema([("key", pa.string()), ("value", pa.string())])
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string()),
        pa.field("item_index", pa.int64()),
        pa.field("first_seen", TIMESTAMP),
    ]
)
#: the errors table's stage for an item that has no such input (an empty cell, no path): recorded
#: so that a refresh knows it was seen, but not a failure (reports, ``show`` and ``lens.errors()``
#: count it apart)
ABSENT = "absent"

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string()),
        pa.field("version", pa.string()),  # the feature version's fingerprint
        pa.field("item_id", pa.string()),
        pa.field("stage", pa.string()),  # input | read | decode | encode | absent
        pa.field("reason", pa.string()),
        pa.field("input_hash", pa.string()),
        pa.field("media_key", pa.string()),
        pa.field("at", TIMESTAMP),
    ]
)
SNAPSHOTS_SCHEMA = pa.schema(
    [
        pa.field("snapshot_id", pa.int64()),
        pa.field("created_at", TIMESTAMP),
        pa.field("doc", pa.string()),
    ]
)
WORK_IDS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string()),
        pa.field("row_hash", pa.int64()),
    ]
)


def feature_table(name: str, fingerprint: str) -> str:
    return f"feature__{name}__{fingerprint}"


def staging_path(name: str, fingerprint: str) -> str:
    return f"_staging/{name}__{fingerprint}.lance"


def vector_type(dtype: str, dim: int) -> pa.DataType:
    value = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.list_(value, dim)


#: a caption row's token counts: the vision tokens its prompt held (the pictures' placeholders and
#: their wrappers) and the tokens the model generated (up to and including its end of sequence).
#: Null for captions a user put (``lens.put_captions``); absent from caption tables written before
#: they were recorded, which read as before (readers select the columns they use).
CAPTION_COUNT_FIELDS = (pa.field("vision_tokens", pa.int32()), pa.field("generated_tokens", pa.int32()))


def feature_fields(dtype: str, dim: int | None, pooling: str, kind: str = "vector") -> list[pa.Field]:
    """Columns of a feature table: one row per item, its value (a vector, per-image vectors,
    or a caption with its token counts) and where it came from."""
    if kind == "caption":
        value = pa.field("caption", pa.string())
    elif pooling == "mean":
        value = pa.field("vector", vector_type(dtype, dim))
    else:
        value = pa.field("vectors", pa.list_(vector_type(dtype, dim)))
    return [
        pa.field("item_id", pa.string()),
        value,
        pa.field("n_parts", pa.int32()),  # inputs behind the value (images pooled or read by a caption,
        # a video's frames; 1 for text)
        pa.field("input_hash", pa.string()),  # what the value was computed from
        pa.field("media_key", pa.string()),  # media only: URI, size and mtime/ETag, compared before reading
        pa.field("fingerprint", pa.string()),  # the feature version (spec) that computed it
        pa.field("computed_at", TIMESTAMP),
        *(CAPTION_COUNT_FIELDS if kind == "caption" else ()),
    ]


def feature_columns(pooling: str, kind: str = "vector") -> list[str]:
    """The names of a feature table's columns (:func:`feature_fields`), e.g. what a merge of
    staging rows into the table carries."""
    return [f.name for f in feature_fields("float32", 1, pooling, kind)]


def staging_schema(dtype: str, dim: int | None, pooling: str, kind: str = "vector") -> pa.Schema:
    """A feature table's columns plus the outcome of items that failed and the run that staged them."""
    return pa.schema(
        feature_fields(dtype, dim, pooling, kind)
        + [
            pa.field("error_stage", pa.string()),
            pa.field("error_reason", pa.string()),
            pa.field("run_id", pa.string()),
        ]
    )


def staging_rows(
    schema: pa.Schema,
    item_ids,
    values: pa.Array,
    *,
    n_parts,
    input_hash,
    media_key=None,
    fingerprint: str,
    run_id: str,
    error_stage=None,
    error_reason=None,
    computed_at=None,
    vision_tokens=None,
    generated_tokens=None,
) -> pa.Table:
    """Rows of a staging table (:func:`staging_schema`): one per item, a value or an error stage
    and reason. The one place they are built, for the pipeline's encoders and for vectors and
    captions a user puts (``Lens.put_vectors``). Columns left None are null for every row
    (``vision_tokens`` and ``generated_tokens``: caption tables only)."""
    from datetime import datetime, timezone

    n = len(values)
    stamp = computed_at or datetime.now(timezone.utc)
    columns = {
        "item_id": item_ids,
        schema.field(1).name: values,  # the value column: vector(s) or caption
        "n_parts": pa.array(n_parts, pa.int32()),
        "input_hash": input_hash,
        "media_key": media_key,
        "fingerprint": pa.array([fingerprint] * n, pa.string()),
        "computed_at": pa.array([stamp] * n, TIMESTAMP),
        "vision_tokens": vision_tokens,
        "generated_tokens": generated_tokens,
        "error_stage": error_stage,
        "error_reason": error_reason,
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.table(
        [pa.nulls(n, f.type) if columns[f.name] is None else columns[f.name] for f in schema], schema=schema
    )


def value_column(pooling: str, kind: str = "vector") -> str:
    if kind == "caption":
        return "caption"
    return "vector" if pooling == "mean" else "vectors"
