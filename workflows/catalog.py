"""Reading a catalog (Parquet, JSONL or CSV; a file or a folder of files) with Ray Data.

Media paths in the catalog may be relative: they resolve against the catalog's folder (see
``CatalogSource.base``), so a catalog and its images can be moved together.

A *delta* (``itemlens ingest --delta``) has the catalog's columns plus an optional ``_op``
column: ``upsert`` (the default: a new or changed item, a whole row) or ``delete`` (only the
id matters). Items it does not mention stay as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from itemlens.errors import CatalogError, ConfigError
from itemlens.extractors.images import has_scheme
from itemlens.workflows.config import CatalogConfig

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

OP_COLUMN = "_op"
_OPS = ("upsert", "delete")

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class CatalogSource:
    uri: str
    format: str
    base: str           # folder that relative media paths resolve against
    id_column: str
    delta: bool = False  # a delta of upserts and deletions, not a full catalog

    @classmethod
    def open(cls, uri: str | os.PathLike, config: CatalogConfig, *, delta: bool = False) -> CatalogSource:
        text = os.fspath(uri)
        remote = has_scheme(text) and not text.startswith("file://")
        if not remote:
            path = Path(text.removeprefix("file://")).expanduser().resolve()
            if not path.exists():
                raise CatalogError(f"catalog not found: {path}")
            text = str(path)
            is_dir = path.is_dir()
        else:   # a remote URI names a folder unless it ends in a catalog file's extension
            name = text.rstrip("/").rsplit("/", 1)[-1].lower()
            is_dir = not any(name.endswith(ext) or name.endswith(ext + ".gz") for ext in _EXTENSIONS)
        fmt = config.format
        if fmt == "auto":
            fmt = _detect_format(text, is_dir)
        base = text.rstrip("/") if is_dir else (os.path.dirname(text) if not remote else text.rsplit("/", 1)[0])
        return cls(uri=text, format=fmt, base=base, id_column=config.id_column, delta=delta)

    def read(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """The catalog as a Ray Dataset (Ray pushes a column selection down into Parquet reads);
        for a delta, its upserts."""
        ds = self._read_all()
        if self.delta and OP_COLUMN in (ds.schema().names if ds.schema() is not None else []):
            ds = ds.map_batches(_rows_with_op, fn_kwargs={"op": "upsert"}, batch_format="pyarrow")
        return ds.select_columns(columns) if columns else ds

    def deleted_ids(self) -> list[str]:
        """A delta's deletions (empty for a full catalog); an unknown ``_op`` is an error."""
        import pyarrow.compute as pc

        if not self.delta:
            return []
        ds = self._read_all()
        if OP_COLUMN not in (ds.schema().names if ds.schema() is not None else []):
            return []
        batches = list(ds.select_columns([self.id_column, OP_COLUMN]).iter_batches(batch_size=None,
                                                                                     batch_format="pyarrow"))
        table = pa.concat_tables(batches, promote_options="permissive") if batches else None
        if table is None or table.num_rows == 0:
            return []
        op = pc.fill_null(pc.utf8_lower(pc.cast(table.column(OP_COLUMN), pa.string())), "upsert")
        unknown = sorted(set(op.to_pylist()) - set(_OPS))
        if unknown:
            raise CatalogError(f"delta {self.uri}: column {OP_COLUMN!r} holds {', '.join(map(repr, unknown))}; "
                               "use 'upsert' or 'delete'")
        ids = pc.cast(table.column(self.id_column), pa.string()).filter(pc.equal(op, "delete")).to_pylist()
        if any(i is None for i in ids):
            raise CatalogError(f"delta {self.uri}: a deletion has no {self.id_column!r}")
        return ids

    def _read_all(self) -> ray.data.Dataset:
        import ray.data

        if self.format == "parquet":
            ds = ray.data.read_parquet(self.uri, file_extensions=["parquet", "pq"])
        elif self.format == "jsonl":
            ds = ray.data.read_json(self.uri, lines=True)
        else:
            from pyarrow import csv

            # Ids stay strings: "00123" must not become the integer 123.
            ds = ray.data.read_csv(
                self.uri, convert_options=csv.ConvertOptions(column_types={self.id_column: pa.string()}))
        return ds

    def check_columns(self, schema_names: list[str], needed: dict[str, list[str]]) -> None:
        """Raise ConfigError when a column the configuration uses is not in the catalog."""
        available = set(schema_names)
        if self.id_column not in available:
            raise ConfigError(
                f"catalog {self.uri} has no id column {self.id_column!r} (set catalog.id_column); "
                f"its columns: {', '.join(schema_names)}")
        for feature, columns in needed.items():
            missing = [c for c in columns if c not in available]
            if missing:
                raise ConfigError(
                    f"feature {feature!r} uses column(s) {', '.join(map(repr, missing))} that catalog "
                    f"{self.uri} does not have; its columns: {', '.join(schema_names)}")


def _rows_with_op(batch: pa.Table, *, op: str) -> pa.Table:
    import pyarrow.compute as pc

    ops = pc.fill_null(pc.utf8_lower(pc.cast(batch.column(OP_COLUMN), pa.string())), "upsert")
    return batch.filter(pc.equal(ops, op)).drop_columns([OP_COLUMN])


def _detect_format(uri: str, is_dir: bool) -> str:
    candidates = [uri]
    if is_dir and not has_scheme(uri):
        candidates = sorted(str(p) for p in Path(uri).iterdir() if p.is_file())
    for candidate in candidates:
        for ext, fmt in _EXTENSIONS.items():
            if candidate.lower().endswith(ext) or candidate.lower().endswith(ext + ".gz"):
                return fmt
    raise ConfigError(
        f"cannot tell the format of catalog {uri} from its name; set catalog.format to parquet, jsonl or csv")
