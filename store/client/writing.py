"""Writing through the client: vectors and captions a user computed elsewhere
(``put_vectors``, ``put_captions``) and vector indexes, each under the writer lock and published
as a new snapshot this reader moves to."""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.errors import (
    ConfigError,
    InputError,
    UnknownFeatureError,
)
from itemlens.store import lance_io
from itemlens.store.layout import staging_rows, staging_schema
from itemlens.store.writer import StoreWriter

if TYPE_CHECKING:  # pragma: no cover
    pass
from itemlens.store.client.base import LensBase, _unique_ids


class Writing(LensBase):
    # -- writing --------------------------------------------------------------------------------
    def put_vectors(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        spec: dict[str, Any] | None = None,
        *,
        lock_wait: float = 0.0,
    ) -> int:
        """Store your own vectors as feature ``name`` and publish a new snapshot (this reader
        moves to it). ``spec`` describes where they came from (model, version, ...): a different
        spec, size or dtype makes a new feature version. Returns the new snapshot id."""
        ids = _unique_ids(ids)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[0] != len(ids):
            raise InputError(f"vectors must be [len(ids), dim]; got {array.shape} for {len(ids)} ids")
        dtype = "float16" if array.dtype == np.float16 else "float32"
        with np.errstate(over="ignore", invalid="ignore"):
            stored = array.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
        if not np.isfinite(stored).all():  # checked as stored: float64 beyond float32's range is inf
            raise InputError(f"vectors contain NaN or infinite values (as {dtype}, how they are stored)")
        array = stored
        dim = int(array.shape[1])
        # The size and dtype are part of the version: other vectors under the same words are
        # still other vectors.
        spec = {**(spec or {}), "encoder": "external", "dim": dim, "dtype": dtype}
        values = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim)
        hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in array]
        return self._put(name, ids, values, hashes, spec, kind="vector", dtype=dtype, dim=dim, lock_wait=lock_wait)

    def put_captions(
        self,
        name: str,
        ids: Sequence[str],
        captions: Sequence[str],
        spec: dict[str, Any] | None = None,
        *,
        lock_wait: float = 0.0,
    ) -> int:
        """Store your own captions as feature ``name`` (``spec``: the model, prompt ... that
        wrote them) and publish a new snapshot. Returns its id."""
        ids = _unique_ids(ids)
        texts = list(captions)
        missing = [i for i, t in zip(ids, texts) if t is None or (isinstance(t, numbers.Real) and t != t)]
        if missing:
            raise InputError(f"{len(missing)} captions are missing (None or NaN), e.g. for {missing[0]!r}")
        texts = [str(c) for c in texts]
        if len(texts) != len(ids):
            raise InputError(f"{len(texts)} captions for {len(ids)} ids")
        spec = {**(spec or {}), "encoder": "external", "kind": "caption"}
        hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        return self._put(
            name,
            ids,
            pa.array(texts, pa.string()),
            hashes,
            spec,
            kind="caption",
            dtype="float32",
            dim=None,
            lock_wait=lock_wait,
        )

    def _put(
        self,
        name: str,
        ids: list[str],
        values: pa.Array,
        hashes: list[str],
        spec: dict[str, Any],
        *,
        kind: str,
        dtype: str,
        dim: int | None,
        lock_wait: float,
    ) -> int:
        try:  # the spec is stored in the snapshot document as JSON: check it before anything is written
            text = json.dumps(spec, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"spec of {name!r} must be plain JSON (strings, numbers, lists, dicts): {exc}") from None
        spec = json.loads(text)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        with StoreWriter.open(
            self.location.uri, storage_options=self.location.options(), lock_wait=lock_wait, command=f"put ({name!r})"
        ) as writer:
            # the version first: a refused name or kind must not leave the ids registered
            version = writer.resolve_version(
                name, fingerprint, spec, dtype=dtype, pooling="mean", kind=kind, encoder={"encoder": "external"}
            )
            registration = writer.register_ids(ids)
            writer.recover_staging(version)
            schema = staging_schema(dtype, dim, "mean", kind)
            rows = staging_rows(
                schema,
                pa.array(ids, pa.string()),
                values,
                n_parts=np.ones(len(ids), np.int32),
                input_hash=pa.array(hashes, pa.string()),
                fingerprint=fingerprint,
                run_id=writer.run_id,
            )
            writer.commit_staged(
                version, lance_io.write_fragments(rows, writer.staging_uri(version), self.location.options()), schema
            )
            stats = writer.merge_staged(version)
            catalog = dict(writer.base.catalog)
            catalog["items"] = (catalog.get("items") or 0) + registration.new  # the ids this put adds
            doc = writer.publish(
                catalog=catalog,
                report={
                    "summary": f"put {name}: {stats.inserted} new, {stats.updated} replaced",
                    "put": {
                        "feature": version.qualified,
                        "new_items": registration.new,
                        "inserted": stats.inserted,
                        "updated": stats.updated,
                    },
                },
                current={name: version},
            )
        if doc is not None:
            self.doc = doc
        return self.snapshot

    def create_index(self, name: str, kind: str = "IVF_PQ", *, lock_wait: float = 0.0, **params: Any) -> dict[str, Any]:
        """Build a vector index on feature ``name`` (``IVF_PQ`` or ``IVF_HNSW_SQ``; parameters
        derived from its size unless given), measure its recall@10 against exact search, and
        publish a snapshot (this reader moves to it). Later writes keep the index current."""
        version = self._version(name)
        with StoreWriter.open(
            self.location.uri,
            storage_options=self.location.options(),
            lock_wait=lock_wait,
            command=f"create_index({name!r})",
        ) as writer:
            latest = writer.base.feature_version(version.qualified)
            if latest is None:
                raise UnknownFeatureError(f"{version.qualified} is not in the latest snapshot")
            info = writer.build_index(latest, kind, params)
            entry = writer.base.features[latest.name]
            doc = writer.publish(
                catalog=dict(writer.base.catalog),
                force=True,
                report={"summary": f"index {latest.qualified}: {kind}, recall@10 {info['recall_at_10']}"},
                current={latest.name: latest} if entry.current == latest.label else {},
                rewritten=[] if entry.current == latest.label else [latest],
            )
        if doc is not None:
            self.doc = doc
        return info
