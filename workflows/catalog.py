"""Reading a catalog (Parquet, JSONL or CSV; a file or a folder of files) with Ray Data.

Media paths in the catalog may be relative: they resolve against the catalog's folder (see
``CatalogSource.base``), so a catalog and its images can be moved together.
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

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class CatalogSource:
    uri: str
    format: str
    base: str           # folder that relative media paths resolve against
    id_column: str

    @classmethod
    def open(cls, uri: str | os.PathLike, config: CatalogConfig) -> CatalogSource:
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
        return cls(uri=text, format=fmt, base=base, id_column=config.id_column)

    def read(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """The catalog as a Ray Dataset (Ray pushes a column selection down into Parquet reads)."""
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
        return ds.select_columns(columns) if columns else ds

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
