"""The Python client: ``lens = itemlens.connect(uri)``.

A :class:`Lens` stays on one snapshot (a consistent view) until :meth:`Lens.refresh` moves
it to the newest; ``connect(uri, snapshot=N)`` pins N. Reading needs neither Ray nor torch:
torch is imported only to encode raw queries (``search`` with text or an image, ``encode``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from itemlens.errors import (
    ConfigError, QueryError, SnapshotNotFoundError, StoreError, UnknownFeatureError, UnknownItemsError,
)
from itemlens.store import lance_io
from itemlens.store.cache import DEFAULT_CACHE_BYTES, CachedTable, TableCache, load_table
from itemlens.store.layout import ERRORS_SCHEMA, ERRORS_TABLE, ITEMS_TABLE, staging_rows, staging_schema, value_column
from itemlens.store.location import StoreLocation
from itemlens.store.snapshots import FeatureVersion, GraphVersion, SemanticIdVersion, SnapshotDoc, list_snapshots, read_doc
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
    kind: str               # "vector" or "caption"
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
    index: dict[str, Any] | None = None     # vector index: kind, params, rows, recall_at_10

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.version}"


OUTPUTS = ("numpy", "torch", "arrow", "pandas")


class SearchResult(NamedTuple):
    item_id: str
    score: float            # cosine similarity


def _snapshot_guard(method):
    """Reads of a snapshot that a prune removed fail inside Lance ("manifest was not found");
    they become :class:`SnapshotNotFoundError` naming the snapshots that remain."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, OSError) as exc:
            if not isinstance(exc, (ConfigError, QueryError, UnknownItemsError)):
                self._raise_if_pruned(exc)
            raise
    return guarded


def connect(uri: str | os.PathLike, snapshot: int | None = None, *,
            storage_options: dict[str, str] | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Lens:
    """Open the store at ``uri`` on its latest snapshot (or on ``snapshot``).

    ``cache_bytes`` bounds what the reader keeps in memory for fast lookups (4 GiB by default):
    a feature table whose vectors fit is read once and looked up as an array; a larger one
    keeps only its id map and takes rows from Lance.
    """
    location = StoreLocation.parse(uri, storage_options)
    check_store_format(location)
    doc = read_doc(location, snapshot)
    return Lens(location, doc or SnapshotDoc(), cache_bytes=cache_bytes)


class Lens:
    """A reader on one snapshot of a store.

    Safe in PyTorch DataLoader workers: pickled into a spawned worker it carries only its
    location, snapshot and settings; in a forked worker it drops the parent's Lance handles
    (Lance is not fork-safe) and keeps the arrays it had loaded (plain memory, shared
    copy-on-write).
    """

    def __init__(self, location: StoreLocation, doc: SnapshotDoc, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.location = location
        self.doc = doc
        self.cache_bytes = cache_bytes
        self._cache = TableCache(cache_bytes)
        self._open_handles()

    def _open_handles(self) -> None:
        self._datasets: dict[tuple[str, int], Any] = {}
        self._encoders: dict[str, Encoder] = {}
        self._db = None
        self._codes: dict[tuple, _CodesEntry] = {}      # semantic IDs: small, held whole
        self._graph_tables: dict[tuple, pa.Table] = {}
        self._reverse: dict[tuple, dict[tuple[int, ...], str]] = {}
        self._pid = os.getpid()

    def _here(self) -> None:
        if self._pid != os.getpid():   # a forked child: the parent's Lance handles are unusable here
            self._open_handles()

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "doc": self.doc, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = TableCache(self.cache_bytes)
        self._open_handles()

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

    def _raise_if_pruned(self, exc: BaseException) -> None:
        """Raise SnapshotNotFoundError when this reader's snapshot is no longer listed."""
        if not self.snapshot:
            return
        remaining = [s["snapshot_id"] for s in list_snapshots(self.location)]
        if self.snapshot not in remaining:
            raise SnapshotNotFoundError(
                f"snapshot {self.snapshot} of {self.uri} was pruned while this reader was on it; the store has "
                f"snapshots {', '.join(map(str, remaining[-10:])) or 'none'}: call refresh() to move to the newest, "
                "or pin snapshots that readers must keep (itemlens pin)") from exc

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
                    kind=v.kind, encoder=v.spec.get("encoder", ""), model=v.spec.get("model", ""), dim=v.dim,
                    dtype=v.dtype, pooling=v.pooling, count=v.count, errors=v.errors, note=v.spec.get("note"),
                    spec=v.spec, created_at=v.created_at, index=v.index))
        return out

    def _version(self, name: str) -> FeatureVersion:
        version = self.doc.feature_version(name)
        if version is None:
            known = ", ".join(f.qualified + (" (current)" if f.current else "") for f in self.features())
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no feature {name!r}; it has: {known or 'none'}")
        return version

    def _dataset(self, table: str):
        self._here()
        version = self.doc.tables.get(table)
        if version is None:
            return None
        key = (table, version)
        if key not in self._datasets:
            self._datasets[key] = lance_io.open_dataset(self.location.table_uri(table), version,
                                                        self.location.options())
        return self._datasets[key]

    @_snapshot_guard
    def items(self) -> pa.Table:
        """item_id and its stable item_index, for every item the store has seen."""
        ds = self._dataset(ITEMS_TABLE)
        return ds.to_table(columns=["item_id", "item_index"]) if ds is not None else pa.table(
            {"item_id": pa.array([], pa.string()), "item_index": pa.array([], pa.int64())})

    @_snapshot_guard
    def ids(self, name: str) -> list[str]:
        """The ids that have a value (a vector or a caption) for feature ``name``; the others
        have an errors row (``errors(name)``) or were never in a catalog."""
        ds = self._dataset(self._version(name).table)
        return ds.to_table(columns=["item_id"]).column(0).to_pylist() if ds is not None else []

    @_snapshot_guard
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

    # -- lookups ------------------------------------------------------------------------------
    @_snapshot_guard
    def vectors(self, name: str, ids: Sequence[str], *, fill: float | None = None,
                output: str = "numpy") -> Any:
        """Vectors of ``ids`` in their order, [len(ids), dim], in the stored dtype.

        Duplicates in ``ids`` are repeated. An id with no vector raises
        :class:`~itemlens.errors.UnknownItemsError` (a KeyError) naming it, unless ``fill`` is
        given: its row is then filled with that value (``np.nan`` to mask, ``0.0`` to zero).
        ``output``: ``"numpy"`` (default), ``"torch"`` (a tensor sharing the array), ``"arrow"``
        (a table of item_id, vector) or ``"pandas"`` (a frame indexed by item_id).
        """
        version = self._version(name)
        if version.kind != "vector":
            raise ConfigError(f"{version.qualified} holds captions: use lens.captions()")
        if version.pooling != "mean":
            raise ConfigError(f"{version.qualified} keeps one vector per image: use lens.part_vectors()")
        ids = _as_ids(ids)
        values, _ = self._lookup(version, ids, fill)
        return values if output == "numpy" else _as_output(values, _strings(ids), "vector", output)

    @_snapshot_guard
    def part_vectors(self, name: str, ids: Sequence[str]) -> list[np.ndarray]:
        """Per-image vectors of ``ids`` (features with ``pooling: per_image``): one [n_i, dim] each."""
        version = self._version(name)
        if version.kind != "vector" or version.pooling == "mean":
            raise ConfigError(f"{version.qualified} has no per-image vectors: use lens.vectors()")
        dtype = np.float16 if version.dtype == "float16" else np.float32
        values, _ = self._lookup(version, _as_ids(ids), None)
        return [np.asarray(v, dtype=dtype).reshape(-1, version.dim) for v in values]

    @_snapshot_guard
    def captions(self, name: str, ids: Sequence[str], *, fill: str | None = None, output: str = "list") -> Any:
        """Captions of ``ids`` in their order. ``output``: ``"list"`` (default), ``"arrow"`` or
        ``"pandas"`` (both with the model, prompt and generation settings that wrote them)."""
        version = self._version(name)
        if version.kind != "caption":
            raise ConfigError(f"{version.qualified} holds vectors, not captions: use lens.vectors()")
        ids = _as_ids(ids)
        values, _ = self._lookup(version, ids, fill)
        texts = values.tolist()
        if output == "list":
            return texts
        # what wrote them: the model, and the prompt and generation settings in effect
        model = version.spec.get("model", "")
        described = version.encoder or {}
        prompt = described.get("prompt", version.spec.get("prompt"))
        generation = json.dumps({k: described[k] for k in ("max_new_tokens", "num_beams", "decoding")
                                 if k in described}, sort_keys=True)
        n = len(ids)
        table = pa.table({"item_id": _strings(ids), "caption": pa.array(texts, pa.string()), "model": [model] * n,
                          "prompt": [prompt] * n, "generation": [generation] * n})
        if output == "arrow":
            return table
        if output == "pandas":
            return table.to_pandas().set_index("item_id")
        raise ConfigError(f"output must be one of list, arrow, pandas; not {output!r}")

    def _lookup(self, version: FeatureVersion, ids: list[str], fill: Any) -> tuple[np.ndarray, np.ndarray]:
        """Values of ``ids`` (fill where missing, or raise) and a mask of those found."""
        entry = self._entry(version)
        rows = entry.index.rows(ids)
        found = rows >= 0
        complete = bool(found.all())
        if not complete and fill is None:
            self._raise_missing(version, _strings([i for i, ok in zip(ids, found) if not ok]))
        if entry.values is not None and len(entry.values):
            values = entry.values[rows] if complete else entry.values[np.where(found, rows, 0)]
        else:
            values = self._take(version, rows, found)
        if not complete:
            values[~found] = fill
        return values, found

    def _entry(self, version: FeatureVersion) -> CachedTable:
        dataset = self._dataset(version.table)
        column = value_column(version.pooling, version.kind)
        if dataset is None:   # nothing stored yet
            from itemlens.store.cache import IdIndex

            return CachedTable(IdIndex(pa.array([], pa.string())), None)
        key = (self.location.uri, version.table, self.doc.tables[version.table])
        return self._cache.get(key, lambda budget: load_table(dataset, column, budget))

    def _take(self, version: FeatureVersion, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Rows from Lance, for tables too large for the cache."""
        column = value_column(version.pooling, version.kind)
        wanted, inverse = np.unique(rows[found], return_inverse=True)
        dataset = self._dataset(version.table)
        taken = dataset.take(wanted.tolist(), columns=[column]).column(column) if len(wanted) else None
        if version.kind == "vector" and version.pooling == "mean":
            dtype = np.float16 if version.dtype == "float16" else np.float32
            out = np.zeros((len(rows), version.dim or 0), dtype)
            if taken is not None:
                out[found] = _fixed_size_to_numpy(taken, version.dim, dtype)[inverse]
            return out
        out = np.empty(len(rows), dtype=object)
        if taken is not None:
            objects = taken.to_pylist()
            for position, j in zip(np.flatnonzero(found), inverse):
                out[position] = objects[j]
        return out

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

    def encode(self, name: str, inputs: Sequence[Any], *, kind: str = "auto") -> np.ndarray | list[np.ndarray]:
        """Embed raw inputs with feature ``name``'s own spec: texts, or media paths/URIs (PIL
        images too) of the kind the feature was made from: images, videos (frames sampled and
        pooled as in the ingest) or audio clips (windowed and pooled). A video feature kept per
        frame (``pooling: per_frame``) gives a list of [frames, dim] arrays, one per video.

        Texts are taken as they are (not as catalog rows for the feature's template);
        ``kind="media"`` (or ``"image"``) forces a string to be read as a path.
        """
        encoder = self.encoder(name)
        if encoder.output_kind != "vector":
            raise ConfigError(f"feature {name!r} holds captions: there are no vectors to encode into")
        inputs = list(inputs)
        media = encoder.spec.input.kind           # what the feature's catalog column held
        kinds = {_query_kind(x, kind, media) for x in inputs}
        if len(kinds) > 1:
            raise ConfigError("encode() takes texts or media in one call, not both")
        if not inputs:
            return np.zeros((0, encoder.dim), np.float32)
        if kinds == {"text"}:
            return encoder.encode_texts([str(x) for x in inputs])
        from itemlens.extractors import ItemError, items
        from itemlens.extractors.images import check_preprocessed_size, decode_image, to_rgb
        from itemlens.extractors.media import MediaLimits

        # the pipeline's default bounds (the decode section of a configuration)
        media_limits, image_limits = MediaLimits(max_bytes=_MAX_MEDIA_BYTES), MediaLimits()
        image_transform = None if media == "audio" else encoder.image_transform()

        def transform(image):
            check_preprocessed_size(image.size, encoder, max_pixels=image_limits.max_pixels,
                                    max_aspect_ratio=image_limits.max_aspect_ratio)
            return image_transform(image)

        try:
            if media == "audio":
                return np.stack(items.encode_audio_items(
                    encoder, [items.audio_waveform(media_limits.read(_path(x)), encoder) for x in inputs]))
            if media == "video":
                vectors = items.encode_pixel_items(encoder, [
                    items.video_pixels(media_limits.read(_path(x)), encoder.spec, transform,
                                       captioning=False, max_pixels=media_limits.max_pixels) for x in inputs])
                return np.stack(vectors) if encoder.spec.pooling == "mean" else vectors
            pixels = [transform(decode_image(image_limits.read(_path(x)), image_limits.max_pixels)
                                if isinstance(x, (str, os.PathLike)) else to_rgb(x))
                      for x in inputs]     # a PIL image: the same mode rules as the pipeline
        except ItemError as error:
            raise QueryError(f"cannot use {media} query: {error.reason}") from None
        return encoder.encode_images(np.stack(pixels))

    @_snapshot_guard
    def search(self, name: str, query: Any, k: int = 10, *, kind: str = "auto", exact: bool = False,
               nprobes: int | None = None, refine_factor: int | None = None) -> list[SearchResult]:
        """The ``k`` items nearest to ``query`` by cosine similarity.

        ``query`` is a vector, or raw text / an image (path, URI or PIL image) encoded with the
        feature's own spec; an open-clip image feature takes text queries through its text tower.
        With a vector index (``create_index``) the search is approximate: IVF_PQ results are
        re-ranked on the stored vectors (at least 500 candidates unless ``refine_factor`` says
        otherwise); ``exact=True`` scans every vector instead.
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

        self._here()
        if self._db is None:
            self._db = lancedb.connect(self.location.uri, storage_options=self.location.options())
        table = self._db.open_table(version.table, version=self.doc.tables[version.table])
        query_builder = table.search(vector, vector_column_name="vector").distance_type("cosine").limit(k)
        if exact:
            query_builder = query_builder.bypass_vector_index()
        elif version.index is not None:
            from itemlens.store.indexes import refine_factor as refine

            if nprobes is not None:
                query_builder = query_builder.nprobes(nprobes)
            factor = refine(version.index["kind"], k, refine_factor)
            if factor:
                query_builder = query_builder.refine_factor(factor)
        hits = query_builder.select(["item_id", "_distance"]).to_arrow()
        return [SearchResult(i, 1.0 - float(d)) for i, d in
                zip(hits.column("item_id").to_pylist(), hits.column("_distance").to_pylist())]

    # -- writing --------------------------------------------------------------------------------
    def put_vectors(self, name: str, ids: Sequence[str], vectors: np.ndarray,
                    spec: dict[str, Any] | None = None, *, lock_wait: float = 0.0) -> int:
        """Store your own vectors as feature ``name`` and publish a new snapshot (this reader
        moves to it). ``spec`` describes where they came from (model, version, ...): a different
        spec, size or dtype makes a new feature version. Returns the new snapshot id."""
        ids = _unique_ids(ids)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[0] != len(ids):
            raise ValueError(f"vectors must be [len(ids), dim]; got {array.shape} for {len(ids)} ids")
        if not np.isfinite(array).all():
            raise ValueError("vectors contain NaN or infinite values")
        dtype = "float16" if array.dtype == np.float16 else "float32"
        array = array.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
        dim = int(array.shape[1])
        # The size and dtype are part of the version: other vectors under the same words are
        # still other vectors.
        spec = {**(spec or {}), "encoder": "external", "dim": dim, "dtype": dtype}
        values = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim)
        hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in array]
        return self._put(name, ids, values, hashes, spec, kind="vector", dtype=dtype, dim=dim, lock_wait=lock_wait)

    def put_captions(self, name: str, ids: Sequence[str], captions: Sequence[str],
                     spec: dict[str, Any] | None = None, *, lock_wait: float = 0.0) -> int:
        """Store your own captions as feature ``name`` (``spec``: the model, prompt ... that
        wrote them) and publish a new snapshot. Returns its id."""
        ids = _unique_ids(ids)
        texts = [str(c) for c in captions]
        if len(texts) != len(ids):
            raise ValueError(f"{len(texts)} captions for {len(ids)} ids")
        spec = {**(spec or {}), "encoder": "external", "kind": "caption"}
        hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        return self._put(name, ids, pa.array(texts, pa.string()), hashes, spec, kind="caption",
                         dtype="float32", dim=None, lock_wait=lock_wait)

    def _put(self, name: str, ids: list[str], values: pa.Array, hashes: list[str], spec: dict[str, Any], *,
             kind: str, dtype: str, dim: int | None, lock_wait: float) -> int:
        fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        with StoreWriter.open(self.location.uri, storage_options=self.location.options(),
                              lock_wait=lock_wait, command=f"put ({name!r})") as writer:
            registration = writer.register_ids(ids)
            version = writer.resolve_version(name, fingerprint, spec, dtype=dtype, pooling="mean", kind=kind,
                                             encoder={"encoder": "external"})
            writer.recover_staging(version)
            schema = staging_schema(dtype, dim, "mean", kind)
            rows = staging_rows(schema, pa.array(ids, pa.string()), values, n_parts=np.ones(len(ids), np.int32),
                                input_hash=pa.array(hashes, pa.string()), fingerprint=fingerprint,
                                run_id=writer.run_id)
            writer.commit_staged(version, lance_io.write_fragments(rows, writer.staging_uri(version),
                                                                   self.location.options()), schema)
            stats = writer.merge_staged(version)
            catalog = dict(writer.base.catalog)
            catalog["items"] = catalog.get("items") or registration.seen
            doc = writer.publish(catalog=catalog, report={
                "summary": f"put {name}: {stats.inserted} new, {stats.updated} replaced",
                "put": {"feature": version.qualified, "new_items": registration.new,
                        "inserted": stats.inserted, "updated": stats.updated}},
                current={name: version})
        if doc is not None:
            self.doc = doc
        return self.snapshot

    def create_index(self, name: str, kind: str = "IVF_PQ", *, lock_wait: float = 0.0,
                     **params: Any) -> dict[str, Any]:
        """Build a vector index on feature ``name`` (``IVF_PQ`` or ``IVF_HNSW_SQ``; parameters
        derived from its size unless given), measure its recall@10 against exact search, and
        publish a snapshot (this reader moves to it). Later writes keep the index current."""
        version = self._version(name)
        with StoreWriter.open(self.location.uri, storage_options=self.location.options(),
                              lock_wait=lock_wait, command=f"create_index({name!r})") as writer:
            latest = writer.base.feature_version(version.qualified)
            if latest is None:
                raise UnknownFeatureError(f"{version.qualified} is not in the latest snapshot")
            info = writer.build_index(latest, kind, params)
            entry = writer.base.features[latest.name]
            doc = writer.publish(catalog=dict(writer.base.catalog), force=True, report={
                "summary": f"index {latest.qualified}: {kind}, recall@10 {info['recall_at_10']}"},
                current={latest.name: latest} if entry.current == latest.label else {})
        if doc is not None:
            self.doc = doc
        return info

    # -- semantic IDs ---------------------------------------------------------------------------
    def semantic_id_info(self, name: str) -> SemanticIdVersion:
        """The semantic-ID version ``name`` resolves to (``"sid"`` current, ``"sid@v1"`` older):
        its definition, inputs, width and metrics."""
        version = self.doc.semantic_id_version(name)
        if version is None:
            known = [f"{n}@{v}" for n, e in sorted(self.doc.semantic_ids.items()) for v in e.versions]
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no semantic IDs {name!r}; it has: "
                f"{', '.join(known) or 'none'}")
        return version

    @_snapshot_guard
    def semantic_ids(self, name: str, ids: Sequence[str], *, fill: int | None = None) -> np.ndarray:
        """Codes of ``ids`` in their order: int64 [len(ids), levels (+1 with the suffix)].

        An item without an ID raises UnknownItemsError (a KeyError) unless ``fill`` is given
        (``-1`` is the usual choice), which then fills its row."""
        version = self.semantic_id_info(name)
        entry = self._sid_entry(version)
        ids = _as_ids(ids)
        rows = entry.index.rows(ids)
        found = rows >= 0
        if not found.all() and fill is None:
            missing = list(dict.fromkeys(_strings([i for i, ok in zip(ids, found) if not ok])))
            raise UnknownItemsError(version.qualified, missing, detail="no semantic ID (no vector for "
                                    f"every input of {', '.join(version.inputs.values())}, or not in this snapshot)")
        codes = entry.values[np.where(found, rows, 0)] if len(entry.values) else np.zeros((len(ids), version.width), np.int64)
        if not found.all():
            codes[~found] = fill
        return codes

    @_snapshot_guard
    def item_for(self, name: str, codes: Sequence[int] | np.ndarray) -> str | list[str]:
        """The item holding a semantic ID (one tuple), or the items of many ([n, width]).
        Tuples no item holds in this snapshot (never handed out, or retired) raise KeyError."""
        version = self.semantic_id_info(name)
        array = np.asarray(codes, dtype=np.int64)
        single = array.ndim == 1
        if array.ndim not in (1, 2) or (array.size and array.shape[-1] != version.width):
            raise ValueError(f"{version.qualified} IDs have {version.width} codes; got an array of shape {array.shape}")
        array = array.reshape(-1, version.width)
        key = ("reverse", version.table, self.doc.tables[version.table])
        reverse = self._reverse.get(key)
        if reverse is None:
            entry = self._sid_entry(version)
            reverse = self._reverse[key] = {tuple(row): i for i, row in zip(entry.ids, entry.values.tolist())}
        out, unknown = [], []
        for row in map(tuple, array.tolist()):
            item = reverse.get(row)
            if item is None:
                unknown.append(row)
            out.append(item)
        if unknown:
            raise KeyError(f"{version.qualified}: no item holds {', '.join(map(str, unknown[:5]))}"
                           + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        return out[0] if single else out

    @_snapshot_guard
    def semantic_id_plot(self, name: str) -> bytes:
        """The PNG of code usage per level, as stored with the version."""
        version = self.semantic_id_info(name)
        rows = self._dataset(version.quantizer_table).to_table(filter=pc.field("key") == "plot").to_pylist()
        return rows[0]["value"]

    def _sid_entry(self, version: SemanticIdVersion) -> _CodesEntry:
        key = ("codes", version.table, self.doc.tables[version.table])
        entry = self._codes.get(key)
        if entry is None:
            from itemlens.store.cache import IdIndex

            table = self._dataset(version.table).to_table(columns=["item_id", "codes"], filter=pc.field("active"))
            ids = table.column("item_id")
            codes = table.column("codes").combine_chunks()
            values = (codes.flatten().to_numpy().reshape(-1, version.width).astype(np.int64)
                      if len(codes) else np.zeros((0, version.width), np.int64))
            entry = self._codes[key] = _CodesEntry(IdIndex(ids), values, ids.to_pylist())
        return entry

    # -- graphs -----------------------------------------------------------------------------------
    def graph_info(self, name: str) -> GraphVersion:
        """The graph version ``name`` resolves to: definition, inputs, counts, statistics."""
        version = self.doc.graph_version(name)
        if version is None:
            known = [f"{n}@{v}" for n, e in sorted(self.doc.graphs.items()) for v in e.versions]
            raise UnknownFeatureError(f"snapshot {self.snapshot} of {self.uri} has no graph {name!r}; it has: "
                                      f"{', '.join(known) or 'none'}")
        return version

    @_snapshot_guard
    def item_order(self) -> list[str]:
        """Item ids in the store's stable item-index order (row i = item_index i)."""
        items = self.items().sort_by("item_index")
        return items.column("item_id").to_pylist()

    @_snapshot_guard
    def graph(self, name: str, preset: str | None = None):
        """The graph as a model reads it: (scipy.sparse.csr_matrix [N, N], item ids of its rows),
        rows and columns in item-index order, each input normalized by ``preset`` (default: the
        definition's) and fused with its weight. See itemlens.store.graphs for the presets."""
        from itemlens.store import graphs

        version = self.graph_info(name)
        order = self.item_order()
        key = ("graph", version.table, self.doc.tables[version.table])
        table = self._graph_tables.get(key)
        if table is None:
            table = self._graph_tables[key] = self._dataset(version.table).to_table()
        return graphs.fused_matrix(table, version.spec, len(order), preset), order

    @_snapshot_guard
    def neighbors(self, name: str, ids: Sequence[str], k: int | None = None, *,
                  preset: str | None = "cosine") -> list[list[tuple[str, float]]]:
        """Per id, its neighbours as (item_id, weight), heaviest first: cosine scores by
        default (``preset="cosine"``; several inputs are summed with their weights), or the
        weights of another preset. Ids without a list get []; unknown ids raise KeyError."""
        matrix, order = self.graph(name, preset)
        ids = _strings(_as_ids(ids))
        index = {item: i for i, item in enumerate(order)}
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise UnknownItemsError(name, unknown, detail="not in the store")
        out = []
        for item in ids:
            row = index[item]
            cols = matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]
            vals = matrix.data[matrix.indptr[row]:matrix.indptr[row + 1]]
            best = np.lexsort((cols, -vals))[: k if k is not None else len(cols)]
            out.append([(order[cols[j]], float(vals[j])) for j in best])
        return out

    @_snapshot_guard
    def graph_plot(self, name: str) -> bytes:
        """A PNG of the in-degree histogram per input of graph ``name``."""
        from itemlens.store import graphs

        version = self.graph_info(name)
        return graphs.degree_plot(version.stats, f"{version.qualified}: k = {version.spec['k']}")

    @_snapshot_guard
    def export(self, fmt: str, out: str | os.PathLike, **options: Any):
        """Write features (``mmrec``, ``npz``, ``parquet``), semantic IDs (``sid-grid``,
        ``sid-tokens``, ``sid-parquet``) or graphs (``pyg``, ``scipy-npz``, ``mmrec-adj``) in a
        format recommender code reads, rows aligned to the order of the user's own files
        (``ids=``, ``inter=``) or, where the format allows, the store's item index. Rows without
        a value are refused unless ``fill`` is given; ``model="freedom"`` (and the other MMRec
        graph models) adds the graph files that model caches. The options are those of
        :func:`itemlens.store.exports.export` (docs/exports.md). Returns an ExportReport: files,
        rows, present and filled per artifact, the order followed (also in export.json)."""
        from itemlens.store import exports

        return exports.export(self, fmt, out, **options)


@dataclass
class _CodesEntry:
    index: Any              # IdIndex over the active rows' item ids
    values: np.ndarray      # [rows, width] int64
    ids: list[str]


# -- helpers ------------------------------------------------------------------------------------

def _as_output(values: np.ndarray, ids: list[str], column: str, output: str) -> Any:
    if output == "numpy":
        return values
    if output == "torch":
        import torch

        return torch.from_numpy(values)
    if output == "arrow":
        flat = pa.array(values.reshape(-1))
        return pa.table({"item_id": pa.array(ids, pa.string()),
                         column: pa.FixedSizeListArray.from_arrays(flat, values.shape[1])})
    if output == "pandas":
        import pandas as pd

        return pd.DataFrame({column: list(values)}, index=pd.Index(ids, name="item_id"))
    raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; not {output!r}")


def _unique_ids(ids: Sequence[Any]) -> list[str]:
    ids = _strings(_as_ids(ids))
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    return ids


def _as_ids(ids: Sequence[Any]) -> list:
    """Ids as a list, cheaply: a list passes as it is (its non-string ids count as str(id))."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of item ids, not a single string")
    if isinstance(ids, list):
        return ids
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids.to_pylist()
    return list(ids)


def _strings(ids: list) -> list[str]:
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
_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac") + _VIDEO_SUFFIXES


# Limits for online queries: those of the ingest's defaults.
_MAX_MEDIA_BYTES = 2 * 1024**3


def _path(query: Any) -> str:
    if not isinstance(query, (str, os.PathLike)):
        raise ConfigError(f"a video or audio query is a path or URI, not {type(query).__name__}")
    return os.fspath(query)


def _query_kind(query: Any, kind: str, media: str = "image") -> str:
    """"text" or "image" (a media path, URI or PIL image) for one query. A string is a path when
    it names a file, a URI, or ends like a file of the feature's own media kind."""
    if kind in ("text", "image", "media"):
        return "text" if kind == "text" else "image"
    if kind != "auto":
        raise ConfigError(f"kind must be 'auto', 'text' or 'media' (or 'image'), not {kind!r}")
    if isinstance(query, os.PathLike):
        return "image"
    if isinstance(query, str):
        from itemlens.uris import has_scheme

        # A string naming an image file is an image query, also when the file is missing (a
        # mistyped path must fail, not be embedded as text); pass kind="text" to force text.
        suffixes = {"video": _VIDEO_SUFFIXES, "audio": _AUDIO_SUFFIXES}.get(media, ()) + _IMAGE_SUFFIXES
        looks_like_image = query.lower().endswith(suffixes) and " " not in query.strip()
        return "image" if has_scheme(query) or os.path.isfile(query) or looks_like_image else "text"
    if type(query).__module__.startswith("PIL."):
        return "image"
    raise ConfigError(f"cannot tell whether {type(query).__name__} is a text or an image query")
