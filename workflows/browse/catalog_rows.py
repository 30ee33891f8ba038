"""Catalog rows by item id, for the item pages of ``itemlens browse``.

A catalog is Parquet, JSONL or CSV (a file or a folder of them), local or on object storage,
and may hold millions of rows: reading it per request is out of the question, and holding it
in memory as Python objects costs several times its size. So, on the first look-up, each
catalog file is read once (Parquet batch by batch, a JSONL or CSV file whole, one file at a
time), written to an Arrow IPC file in a temporary folder and memory-mapped; the ids go into
the client's id index (:class:`itemlens.store.cache.IdIndex`). A look-up is then a hash probe
and a one-row slice of a memory-mapped table. What it costs: one pass over the catalog, the
catalog's Arrow size on the temporary disk (removed when the app ends), and the id index in
memory (per id: the longest id's length rounded up to 8 bytes, plus about 16 bytes).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from itemlens.errors import CatalogError
from itemlens.workflows.catalog import OP_COLUMN, CatalogSource, op_column
from itemlens.workflows.config import CatalogConfig

log = logging.getLogger("itemlens.browse")


class CatalogRows:
    """Rows of one catalog by item id. ``base`` is the folder its relative media paths resolve
    against (as in the ingest). Built on first use, thread-safe."""

    def __init__(self, uri: str, *, id_column: str = "item_id", fmt: str = "auto", delta: bool = False):
        self.source = CatalogSource.open(uri, CatalogConfig(id_column=id_column, format=fmt), delta=delta)
        self.id_column = id_column
        self._lock = threading.Lock()
        self._tables: list[pa.Table] | None = None
        self._starts = np.zeros(1, np.int64)
        self._index = None
        self.build_seconds: float | None = None
        self.rows_indexed = 0
        self.disk_bytes = 0

    @property
    def uri(self) -> str:
        return self.source.uri

    @property
    def base(self) -> str:
        return self.source.base

    def files(self) -> list[str]:
        """The catalog's files, in name order: in a folder, the files the ingest's reader reads
        (of its format, not ``_SUCCESS`` or ``.crc`` files: ``CatalogSource.files``)."""
        return [path for path, _ in self.source.files()]

    def rows(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """The catalog row of each id (a dict of its columns), None where the catalog has none."""
        self._build()
        if not ids:
            return []
        positions = self._index.rows(list(ids))
        out: list[dict[str, Any] | None] = []
        for position in positions.tolist():
            if position < 0:
                out.append(None)
                continue
            part = int(np.searchsorted(self._starts, position, side="right")) - 1
            out.append(self._tables[part].slice(position - int(self._starts[part]), 1).to_pylist()[0])
        return out

    def _build(self) -> None:
        if self._tables is not None:
            return
        with self._lock:
            if self._tables is not None:
                return
            from itemlens.store.cache import IdIndex

            started = time.perf_counter()
            folder = tempfile.mkdtemp(prefix="itemlens-browse-catalog-")
            weakref.finalize(self, shutil.rmtree, folder, True)
            tables, ids = [], []
            for n, uri in enumerate(self.files()):
                path = os.path.join(folder, f"{n:06d}.arrow")
                writer = None
                with pa.OSFile(path, "wb") as sink:
                    for batch in self._batches(uri):
                        batch = self._kept(batch, uri)
                        if writer is None:
                            writer = pa.ipc.new_file(sink, batch.schema)
                        writer.write_table(batch, max_chunksize=65536)
                        ids.append(pc.cast(batch.column(self.id_column), pa.string()))
                    if writer is not None:
                        writer.close()
                if writer is None:  # an empty file
                    continue
                self.disk_bytes += os.path.getsize(path)
                tables.append(pa.ipc.open_file(pa.memory_map(path)).read_all())
            lengths = [t.num_rows for t in tables]
            self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            self._index = IdIndex(pa.chunked_array([c for column in ids for c in column.chunks], pa.string()))
            self.rows_indexed = int(self._starts[-1])
            self.build_seconds = time.perf_counter() - started
            self._tables = tables
            log.info(
                "catalog %s: %d rows indexed in %.1f s (%d bytes of Arrow on the temporary disk)",
                self.uri,
                self.rows_indexed,
                self.build_seconds,
                self.disk_bytes,
            )

    def _kept(self, batch: pa.Table, uri: str) -> pa.Table:
        """The rows of a batch that describe an item: a delta's deletions and rows without an id
        (which the ingest refuses) have none."""
        if self.id_column not in batch.column_names:
            raise CatalogError(
                f"catalog file {uri} has no id column {self.id_column!r} (its columns: "
                f"{', '.join(batch.column_names)}); pass --id-column"
            )
        if self.source.delta and OP_COLUMN in batch.column_names:  # the ingest's reading of _op
            batch = batch.filter(pc.not_equal(op_column(batch), "delete"))
        return batch.filter(pc.is_valid(batch.column(self.id_column)))

    def _batches(self, uri: str):
        """One catalog file as Arrow tables, read the way the ingest reads it (ids as strings):
        Parquet in batches, a JSONL or CSV file whole (its types are inferred over the file)."""
        import fsspec

        fmt = self.source.format
        with fsspec.open(uri, "rb", compression="infer") as f:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(f).iter_batches(batch_size=65536):
                    yield pa.Table.from_batches([batch])
            elif fmt == "jsonl":
                from pyarrow import json

                yield json.read_json(f)
            else:
                from pyarrow import csv

                yield csv.read_csv(f, convert_options=csv.ConvertOptions(column_types={self.id_column: pa.string()}))
