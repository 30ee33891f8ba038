"""The Python client: ``lens = itemlens.connect(uri)``.

A :class:`Lens` stays on one snapshot (a consistent view) until :meth:`Lens.refresh` moves
it to the newest; ``connect(uri, snapshot=N)`` pins N. Reading needs neither Ray nor torch:
torch is imported only to encode raw queries (``search`` with text or an image, ``encode``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from itemlens.errors import ConfigError, QueryError, StoreError, UnknownFeatureError, UnknownItemsError
from itemlens.store import lance_io
from itemlens.store.layout import ERRORS_SCHEMA, ERRORS_TABLE, ITEMS_TABLE, StoreLocation, staging_schema, value_column
from itemlens.store.snapshots import FeatureVersion, SnapshotDoc, list_snapshots, read_doc
from itemlens.store.writer import StoreWriter, check_store_format

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors.base import Encoder


@dataclass(frozen=True)
class FeatureInfo:
    """One feature version as the snapshot records it."""

    name: str
    version: str            # "v1", "v2", ...
    current: bool           # the version that ``name`` alone resolves to
    fingerprint: str
    encoder: str
    model: str
    dim: int | None
    dtype: str
    pooling: str
    count: int              # items with a value
    errors: int             # items with an errors row instead
    note: str | None
    spec: dict[str, Any]
    created_at: str

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.version}"


class SearchResult(NamedTuple):
    item_id: str
    score: float            # cosine similarity


def connect(uri: str | os.PathLike, snapshot: int | None = None, *,
            storage_options: dict[str, str] | None = None) -> Lens:
    """Open the store at ``uri`` on its latest snapshot (or on ``snapshot``)."""
    location = StoreLocation.parse(uri, storage_options)
    check_store_format(location)
    doc = read_doc(location, snapshot)
    return Lens(location, doc or SnapshotDoc())


class Lens:
    """A reader on one snapshot of a store."""

    def __init__(self, location: StoreLocation, doc: SnapshotDoc):
        self.location = location
        self.doc = doc
        self._datasets: dict[tuple[str, int], Any] = {}
        self._encoders: dict[str, Encoder] = {}
        self._db = None

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.doc.features)) or "no features"
        return f"<Lens {self.location.uri} snapshot={self.snapshot} ({names})>"

    # -- snapshots --------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def snapshot(self) -> int:
        """The snapshot this reader is on (0: the store has none yet)."""
        return self.doc.snapshot_id

    def snapshots(self) -> list[dict[str, Any]]:
        return list_snapshots(self.location)

    def refresh(self) -> int:
        """Move to the newest snapshot; returns its id."""
        latest = read_doc(self.location)
        if latest is not None and latest.snapshot_id != self.doc.snapshot_id:
            self.doc = latest
        return self.snapshot

    # -- what is stored ---------------------------------------------------------------------
    def features(self) -> list[FeatureInfo]:
        out = []
        for name, entry in sorted(self.doc.features.items()):
            for label, v in sorted(entry.versions.items(), key=lambda kv: int(kv[0][1:])):
                out.append(FeatureInfo(
                    name=name, version=label, current=label == entry.current, fingerprint=v.fingerprint,
                    encoder=v.spec.get("encoder", ""), model=v.spec.get("model", ""), dim=v.dim,
                    dtype=v.dtype, pooling=v.pooling, count=v.count, errors=v.errors, note=v.spec.get("note"),
                    spec=v.spec, created_at=v.created_at))
        return out

    def _version(self, name: str) -> FeatureVersion:
        version = self.doc.feature_version(name)
        if version is None:
            known = ", ".join(f.qualified + (" (current)" if f.current else "") for f in self.features())
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no feature {name!r}; it has: {known or 'none'}")
        return version

    def _dataset(self, table: str):
        version = self.doc.tables.get(table)
        if version is None:
            return None
        key = (table, version)
        if key not in self._datasets:
            self._datasets[key] = lance_io.open_dataset(self.location.table_uri(table), version,
                                                        self.location.options())
        return self._datasets[key]

    def items(self) -> pa.Table:
        """item_id and its stable item_index, for every item the store has seen."""
        ds = self._dataset(ITEMS_TABLE)
        return ds.to_table(columns=["item_id", "item_index"]) if ds is not None else pa.table(
            {"item_id": pa.array([], pa.string()), "item_index": pa.array([], pa.int64())})

    def errors(self, feature: str | None = None) -> pa.Table:
        """Items without a value, with stage and reason: for one feature version if named
        (``"image"`` is its current version, ``"image@v1"`` an older one), else for the current
        version of every feature."""
        columns = ["feature", "item_id", "stage", "reason", "at"]
        ds = self._dataset(ERRORS_TABLE)
        if ds is None:
            return pa.schema([ERRORS_SCHEMA.field(c) for c in columns]).empty_table()
        if feature is not None:
            versions = [self._version(feature).fingerprint]
        else:
            versions = [e.versions[e.current].fingerprint for e in self.doc.features.values()]
        return ds.to_table(columns=columns, filter=lance_io.isin_filter("version", versions))

    # -- vectors ------------------------------------------------------------------------------
    def vectors(self, name: str, ids: Sequence[str], *, fill: float | None = None) -> np.ndarray:
        """Vectors of ``ids`` in their order, [len(ids), dim], in the stored dtype.

        Duplicates in ``ids`` are repeated. An id with no vector raises
        :class:`~itemlens.errors.UnknownItemsError` (a KeyError) naming it, unless ``fill`` is
        given: its row is then filled with that value (``np.nan`` to mask, ``0.0`` to zero).
        """
        version = self._version(name)
        if version.pooling != "mean":
            raise ConfigError(f"{version.qualified} keeps one vector per image: use lens.part_vectors()")
        ids = _as_ids(ids)
        table, index = self._rows(version, ids)
        dtype = np.float16 if version.dtype == "float16" else np.float32
        dim = version.dim or 0
        values = _fixed_size_to_numpy(table.column("vector"), dim, dtype) if table.num_rows else np.zeros((0, dim), dtype)
        found = index >= 0
        if not found.all() and fill is None:
            self._raise_missing(version, [i for i, ok in zip(ids, found) if not ok])
        out = np.empty((len(ids), dim), dtype)
        out[found] = values[index[found]]
        if not found.all():
            out[~found] = fill
        return out

    def part_vectors(self, name: str, ids: Sequence[str]) -> list[np.ndarray]:
        """Per-image vectors of ``ids`` (features with ``pooling: per_image``): one [n_i, dim] each."""
        version = self._version(name)
        if version.pooling == "mean":
            raise ConfigError(f"{version.qualified} stores one pooled vector per item: use lens.vectors()")
        ids = _as_ids(ids)
        table, index = self._rows(version, ids)
        if (index < 0).any():
            self._raise_missing(version, [i for i, j in zip(ids, index) if j < 0])
        dtype = np.float16 if version.dtype == "float16" else np.float32
        column = table.column("vectors").to_pylist()
        return [np.asarray(column[j], dtype=dtype).reshape(-1, version.dim) for j in index]

    def _rows(self, version: FeatureVersion, ids: list[str]) -> tuple[pa.Table, np.ndarray]:
        ds = self._dataset(version.table)
        column = value_column(version.pooling)
        if ds is None or not ids:
            return pa.table({"item_id": pa.array([], pa.string())}), np.full(len(ids), -1, np.int64)
        unique = list(dict.fromkeys(ids))
        table = ds.to_table(columns=["item_id", column], filter=lance_io.isin_filter("item_id", unique))
        position = {item: i for i, item in enumerate(table.column("item_id").to_pylist())}
        index = np.fromiter((position.get(i, -1) for i in ids), np.int64, count=len(ids))
        return table, index

    def _raise_missing(self, version: FeatureVersion, missing: list[str]) -> None:
        missing = list(dict.fromkeys(missing))
        detail = ""
        errors = self._dataset(ERRORS_TABLE)
        if errors is not None:
            flt = lance_io.isin_filter("item_id", missing[:5]) & (pc.field("version") == version.fingerprint)
            rows = errors.to_table(columns=["item_id", "stage", "reason"], filter=flt).to_pylist()
            if rows:
                detail = "; ".join(f"{r['item_id']!r} failed at {r['stage']}: {r['reason']}" for r in rows[:3])
        raise UnknownItemsError(version.qualified, missing, detail=detail)

    # -- encoding raw inputs and search ---------------------------------------------------------
    def encoder(self, name: str) -> Encoder:
        """The encoder that wrote feature ``name``, rebuilt from its stored spec (loaded once)."""
        version = self._version(name)
        key = version.qualified
        if key not in self._encoders:
            if version.spec.get("encoder") == "external":
                raise ConfigError(
                    f"{version.qualified} holds vectors put by the user (put_vectors): there is no encoder "
                    "to embed raw inputs; pass a vector")
            from itemlens.extractors import FeatureSpec, build_encoder

            encoder = build_encoder(FeatureSpec.model_validate(version.spec))
            if encoder.fingerprint() != version.fingerprint:
                raise StoreError(
                    f"the model behind {version.qualified} has changed since its vectors were written "
                    f"(fingerprint {encoder.fingerprint()} now, {version.fingerprint} stored): queries would "
                    "not be comparable; ingest again or pass a vector")
            self._encoders[key] = encoder.load()
        return self._encoders[key]

    def encode(self, name: str, inputs: Sequence[Any], *, kind: str = "auto") -> np.ndarray:
        """Embed raw inputs with feature ``name``'s own spec: texts, or image paths/URIs/PIL images.

        Texts are taken as they are (not as catalog rows for the feature's template).
        """
        encoder = self.encoder(name)
        inputs = list(inputs)
        kinds = {_query_kind(x, kind) for x in inputs}
        if len(kinds) > 1:
            raise ConfigError("encode() takes texts or images in one call, not both")
        if not inputs:
            return np.zeros((0, encoder.dim), np.float32)
        if kinds == {"text"}:
            return encoder.encode_texts([str(x) for x in inputs])
        from itemlens.extractors import ItemError
        from itemlens.extractors.images import load_image, to_rgb

        transform = encoder.image_transform()
        pixels = []
        for x in inputs:
            try:
                if isinstance(x, (str, os.PathLike)):
                    image = load_image(os.fspath(x))
                else:   # a PIL image: the same mode rules as the pipeline (alpha on white, ...)
                    image = to_rgb(x)
            except ItemError as error:
                raise QueryError(f"cannot use image query {x!r}: {error.reason}") from None
            pixels.append(transform(image))
        return encoder.encode_images(np.stack(pixels))

    def search(self, name: str, query: Any, k: int = 10, *, kind: str = "auto") -> list[SearchResult]:
        """The ``k`` items nearest to ``query`` by cosine similarity.

        ``query`` is a vector, or raw text / an image (path, URI or PIL image) encoded with the
        feature's own spec; an open-clip image feature takes text queries through its text tower.
        """
        version = self._version(name)
        if version.pooling != "mean":
            raise ConfigError(f"{version.qualified} keeps one vector per image; search needs a pooled feature")
        if version.count == 0:
            return []
        if _is_vector(query):
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
        else:
            vector = self.encode(name, [query], kind=kind)[0]
        if vector.shape[0] != version.dim:
            raise ConfigError(f"query has {vector.shape[0]} dimensions, {version.qualified} has {version.dim}")
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.location.uri, storage_options=self.location.options())
        table = self._db.open_table(version.table, version=self.doc.tables[version.table])
        hits = (table.search(vector, vector_column_name="vector").metric("cosine").limit(k)
                .select(["item_id", "_distance"]).to_arrow())
        return [SearchResult(i, 1.0 - float(d)) for i, d in
                zip(hits.column("item_id").to_pylist(), hits.column("_distance").to_pylist())]

    # -- writing --------------------------------------------------------------------------------
    def put_vectors(self, name: str, ids: Sequence[str], vectors: np.ndarray,
                    spec: dict[str, Any] | None = None, *, lock_wait: float = 0.0) -> int:
        """Store your own vectors as feature ``name`` and publish a new snapshot (this reader
        moves to it). ``spec`` describes where they came from (model, version, ...): a different
        spec makes a new feature version. Returns the new snapshot id."""
        ids = _as_ids(ids)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[0] != len(ids):
            raise ValueError(f"vectors must be [len(ids), dim]; got {array.shape} for {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        if not np.isfinite(array).all():
            raise ValueError("vectors contain NaN or infinite values")
        dtype = "float16" if array.dtype == np.float16 else "float32"
        array = array.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
        # The size and dtype are part of the version: other vectors under the same words are
        # still other vectors.
        spec = {**(spec or {}), "encoder": "external", "dim": int(array.shape[1]), "dtype": dtype}
        fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

        with StoreWriter.open(self.location.uri, storage_options=self.location.options(),
                              lock_wait=lock_wait, command=f"put_vectors({name!r})") as writer:
            registration = writer.register_ids(ids)
            version = writer.resolve_version(name, fingerprint, spec, dtype=dtype, pooling="mean",
                                             encoder={"encoder": "external"})
            writer.recover_staging(version)
            dim = array.shape[1]
            schema = staging_schema(dtype, dim, "mean")
            now = pa.array([datetime.now(timezone.utc)] * len(ids), schema.field("computed_at").type)
            rows = pa.table({
                "item_id": ids,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim),
                "n_parts": pa.array(np.ones(len(ids), np.int32)),
                "input_hash": [hashlib.sha256(row.tobytes()).hexdigest() for row in array],
                "fingerprint": [fingerprint] * len(ids),
                "computed_at": now,
                "error_stage": pa.nulls(len(ids), pa.string()),
                "error_reason": pa.nulls(len(ids), pa.string()),
                "run_id": [writer.run_id] * len(ids),
            }, schema=schema)
            writer.commit_staged(version, lance_io.write_fragments(rows, writer.staging_uri(version),
                                                                   self.location.options()), schema)
            stats = writer.merge_staged(version)
            catalog = dict(writer.base.catalog)
            catalog["items"] = catalog.get("items") or registration.seen
            doc = writer.publish(catalog=catalog, report={
                "summary": f"put_vectors {name}: {stats.inserted} new, {stats.updated} replaced",
                "put_vectors": {"feature": version.qualified, "new_items": registration.new,
                                "inserted": stats.inserted, "updated": stats.updated}},
                current={name: version})
        if doc is not None:
            self.doc = doc
        return self.snapshot


# -- helpers ------------------------------------------------------------------------------------

def _as_ids(ids: Sequence[Any]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of item ids, not a single string")
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = ids.to_pylist()
    return [i if isinstance(i, str) else str(i) for i in ids]


def _fixed_size_to_numpy(column: pa.ChunkedArray, dim: int, dtype) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, dim).astype(dtype, copy=False)


def _is_vector(query: Any) -> bool:
    if isinstance(query, np.ndarray):
        return query.dtype.kind in "fiu"
    return isinstance(query, (list, tuple)) and bool(query) and all(isinstance(x, (int, float)) for x in query)


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


def _query_kind(query: Any, kind: str) -> str:
    if kind in ("text", "image"):
        return kind
    if kind != "auto":
        raise ConfigError(f"kind must be 'auto', 'text' or 'image', not {kind!r}")
    if isinstance(query, os.PathLike):
        return "image"
    if isinstance(query, str):
        from itemlens.extractors.images import has_scheme

        # A string naming an image file is an image query, also when the file is missing (a
        # mistyped path must fail, not be embedded as text); pass kind="text" to force text.
        looks_like_image = query.lower().endswith(_IMAGE_SUFFIXES) and " " not in query.strip()
        return "image" if has_scheme(query) or os.path.isfile(query) or looks_like_image else "text"
    if type(query).__module__.startswith("PIL."):
        return "image"
    raise ConfigError(f"cannot tell whether {type(query).__name__} is a text or an image query")
