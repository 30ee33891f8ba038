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

from itemlens.errors import CatalogError, ConfigError, LocationError
from itemlens.uris import has_scheme, parse_location
from itemlens.workflows.config import CatalogConfig

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

OP_COLUMN = "_op"
_OPS = ("upsert", "delete")

# Text catalogs may be compressed; Arrow infers the codec from these suffixes.
_COMPRESSED = ("", ".gz", ".bz2", ".br", ".zst", ".lz4")
#: each format's file names, as given to Ray's reader of a folder (``file_extensions``): the
#: readers skip every other file, so a README or the media kept beside the catalog's files are
#: not read as rows; ``format: auto`` tells a file's format by the same names
FILE_EXTENSIONS = {
    "parquet": ["parquet", "pq"],
    "jsonl": [f"{ext}{c}" for ext in ("jsonl", "json") for c in _COMPRESSED],
    "csv": [f"csv{c}" for c in _COMPRESSED],
}
#: Ray's readers also skip the files of a folder whose path in it starts with these (``_SUCCESS``,
#: ``.crc`` files, ``_temporary/``); ``CatalogSource.files`` skips the same files
_HIDDEN = (".", "_")


@dataclass(frozen=True)
class CatalogSource:
    uri: str
    format: str
    base: str  # folder that relative media paths resolve against
    id_column: str
    delta: bool = False  # a delta of upserts and deletions, not a full catalog

    @classmethod
    def open(cls, uri: str | os.PathLike, config: CatalogConfig, *, delta: bool = False) -> CatalogSource:
        try:
            location = parse_location(uri, what="catalog")
        except LocationError as exc:
            raise CatalogError(str(exc)) from None
        text = location.path
        remote = not location.is_local
        if not remote:
            path = Path(text).resolve()
            if not path.exists():
                raise CatalogError(f"catalog not found: {path}")
            text = str(path)
            is_dir = path.is_dir()
        else:  # a remote URI names a folder unless it ends in a catalog file's extension
            is_dir = _format_of(text.rstrip("/")) is None
        fmt = config.format
        if fmt == "auto":
            fmt = _detect_format(text, is_dir)
        elif is_dir and not remote and not any(_format_of(f) == fmt for f in _folder_files(Path(text))):
            raise CatalogError(
                f"catalog folder {text} holds no {fmt} files (the {fmt} reader reads {_extensions_shown(fmt)}, "
                "compressed too)"
            )
        base = text.rstrip("/") if is_dir else (os.path.dirname(text) if not remote else text.rsplit("/", 1)[0])
        return cls(uri=text, format=fmt, base=base, id_column=config.id_column, delta=delta)

    @property
    def is_folder(self) -> bool:
        return self.base == self.uri.rstrip("/")

    def read(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """The catalog as a Ray Dataset of ``columns`` (all by default); for a delta, its upserts.
        The selection is the reader's own (Parquet: pushed down into the reads). JSON lines and
        CSV blocks each have the columns their rows have (a key that no line of a chunk holds, a
        file without an optional column), so their readers give nulls where a block lacks one."""
        # a column asked for twice (a template that also shows the id) is selected once
        columns = list(dict.fromkeys(columns)) if columns else None
        if self.delta:
            # per block: a delta split over files may have an _op column in some of them only
            # (a dataset's schema is its first block's), and a row without one is an upsert
            return self._read_all().map_batches(_upserts, fn_kwargs={"columns": columns}, batch_format="pyarrow")
        if self.format == "parquet":
            ds = self._read_all()
            return ds.select_columns(columns) if columns else ds  # pushed down into the Parquet reads
        return self._read_all(columns)

    def column_names(self) -> list[str]:
        """The catalog's columns (a delta: its upserts', without ``_op``). Parquet: its schema;
        JSON lines and CSV: every column some block has, since blocks differ (a file without an
        optional column, a chunk of lines none of which has a sparse key). Every block is read:
        leaving the iteration early cancels Ray Data's tasks in flight, and on the pinned Ray
        that hit a reference-counting check that ended the driver (reference_counter.cc:624)."""
        if self.format == "parquet" and not self.delta:
            schema = self.read().schema()
            return list(schema.names) if schema is not None else []
        names: dict[str, None] = {}
        # JSON lines stay pandas frames here: converting a column of mixed values (a string in
        # one line, an object in another) to Arrow is the stages' business, not this check's
        blocks = self.read().map_batches(_names, batch_format="pandas" if self.format == "jsonl" else "pyarrow")
        for batch in blocks.iter_batches(batch_size=None, batch_format="pyarrow"):
            for block in batch.column("names").to_pylist():
                names.update(dict.fromkeys(block))
        return list(names)

    def deleted_ids(self) -> list[str]:
        """A delta's deletions (empty for a full catalog); an unknown ``_op`` is an error."""
        import pyarrow.compute as pc

        if not self.delta:
            return []
        ops = self._read_all().map_batches(_ops_of, fn_kwargs={"id_column": self.id_column}, batch_format="pyarrow")
        batches = list(ops.iter_batches(batch_size=None, batch_format="pyarrow"))
        table = pa.concat_tables(batches) if batches else None
        if table is None or table.num_rows == 0:
            return []
        op = table.column("op")
        unknown = sorted(set(op.to_pylist()) - set(_OPS))
        if unknown:
            raise CatalogError(
                f"delta {self.uri}: column {OP_COLUMN!r} holds {', '.join(map(repr, unknown))}; "
                "use 'upsert' or 'delete'"
            )
        ids = table.column("id").filter(pc.equal(op, "delete")).to_pylist()
        if any(i is None for i in ids):
            raise CatalogError(f"delta {self.uri}: a deletion has no {self.id_column!r}")
        return ids

    def _read_all(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """The reader of the catalog's files; ``columns`` (JSON lines and CSV): only those, nulls
        where a block lacks one."""
        import ray.data

        # in a folder, the files of the format; a file named is read whatever its name (Ray's
        # Parquet reader takes None for its default, .parquet only: it gets the file's own suffix)
        name = self.uri.rsplit("/", 1)[-1]
        if self.is_folder:
            extensions = FILE_EXTENSIONS[self.format]
        elif self.format == "parquet" and "." in name:
            extensions = [name.split(".", 1)[1]]
        else:
            extensions = None
        if self.format == "parquet":
            ds = ray.data.read_parquet(self.uri, file_extensions=extensions)
        elif self.format == "jsonl":
            ds = ray.data.read_datasource(_json_lines(self.uri, extensions, columns=columns))
        else:
            from pyarrow import csv

            # Ids stay strings: "00123" must not become the integer 123.
            ds = ray.data.read_csv(
                self.uri,
                file_extensions=extensions,
                convert_options=csv.ConvertOptions(
                    column_types={self.id_column: pa.string()},
                    include_columns=columns,
                    include_missing_columns=columns is not None,
                ),
            )
        return ds

    def files(self) -> list[tuple[str, str]]:
        """The catalog's files and a stamp of each one's current content, without reading it:
        local files by size, inode, modification and change times (the change time moves on
        any write and cannot be set back); object storage by size and ETag (or version id).
        In a folder, only the files Ray's reader reads (see ``FILE_EXTENSIONS``)."""
        if not has_scheme(self.uri):
            root = Path(self.uri)
            if root.is_dir():
                paths = sorted(root / rel for rel in _folder_files(root) if _format_of(rel) == self.format)
            else:
                paths = [root]
            stamps = []
            for p in paths:
                st = p.stat()
                stamps.append((str(p), f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"))
            return stamps
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.uri)
        infos = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
        folder = root.rstrip("/") + "/"
        stamps = []
        for path, info in sorted(infos.items()):
            if info.get("type", "file") != "file":
                continue
            if path.startswith(folder) and not _is_catalog_file(path[len(folder) :], self.format):
                continue
            stamp = next((info[k] for k in ("VersionId", "ETag", "etag", "mtime", "LastModified") if info.get(k)), "")
            stamps.append((fs.unstrip_protocol(path), f"{info.get('size')}:{stamp}"))  # s3://..., not bucket/...
        return stamps

    def diagnose(self, limit_lines: int = 10_000_000) -> str | None:
        """Which file (and line) of a catalog Ray could not read, and why: a message a user can
        act on, found by reading the files directly (only after a read failed). None when no
        file shows a problem this way."""
        import json

        import fsspec

        paths = [path for path, _ in self.files()]
        for path in paths:
            try:
                if self.format == "jsonl":
                    with fsspec.open(path, "rt", compression="infer") as f:
                        for number, line in enumerate(f, 1):
                            if number > limit_lines:
                                break
                            if line.strip():
                                try:
                                    json.loads(line)
                                except ValueError as exc:
                                    return f"{path}, line {number}: not valid JSON ({exc})"
                elif self.format == "parquet":
                    import pyarrow.parquet as pq

                    with fsspec.open(path, "rb") as f:
                        pq.ParquetFile(f).read()
                else:
                    from pyarrow import csv

                    with fsspec.open(path, "rb", compression="infer") as f:
                        csv.read_csv(f)
            except Exception as exc:  # the reader's own words, with the file's name
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return f"{path}: {first}"
        return None

    def pin(self) -> CatalogPin:
        """What the catalog is now: checked again before the job publishes (see CatalogPin)."""
        return CatalogPin(self.uri, tuple(self.files()))

    def check_columns(self, schema_names: list[str], needed: dict[str, list[str]]) -> None:
        """Raise ConfigError when a column the configuration uses is not in the catalog."""
        available = set(schema_names)
        if self.id_column not in available:
            raise ConfigError(
                f"catalog {self.uri} has no id column {self.id_column!r} (set catalog.id_column); "
                f"its columns: {', '.join(schema_names)}"
            )
        for feature, columns in needed.items():
            missing = [c for c in columns if c not in available]
            if missing:
                raise ConfigError(
                    f"feature {feature!r} uses column(s) {', '.join(map(repr, missing))} that catalog "
                    f"{self.uri} does not have; its columns: {', '.join(schema_names)}"
                )


@dataclass(frozen=True)
class CatalogPin:
    """The catalog's files and their content stamps at the start of a job. A job reads the
    catalog several times (ids, then once per feature), so a catalog replaced or edited while it
    runs could publish a snapshot built from two catalogs: items with neither a value nor an
    errors row, removed items that keep values. The job checks the pin after each step and stops
    before publishing when the catalog changed; what it staged is kept for the next run."""

    uri: str
    files: tuple[tuple[str, str], ...]

    def check(self, source: CatalogSource, step: str) -> None:
        now = dict(source.files())
        before = dict(self.files)
        changed = sorted(p for p in before.keys() | now.keys() if before.get(p) != now.get(p))
        if changed:
            what = ", ".join(
                f"{p} ({'added' if p not in before else 'removed' if p not in now else 'changed'})" for p in changed[:3]
            )
            raise CatalogChangedError(
                f"catalog {self.uri} changed while the job ran ({what}{' ...' if len(changed) > 3 else ''}; "
                f"noticed {step}): nothing was published. The work done so far is kept; run the job again on "
                "the catalog as it now is (it re-encodes only what differs)"
            )


class CatalogChangedError(CatalogError):
    """The catalog changed during a job; nothing was published."""


def op_column(batch: pa.Table) -> pa.Array:
    """Each row's operation, lower-cased and trimmed; a row without one (null, or an empty CSV
    cell) or a file without the column upserts."""
    import pyarrow.compute as pc

    if OP_COLUMN not in batch.column_names:
        return pa.array(["upsert"] * batch.num_rows, pa.string())
    ops = pc.utf8_trim_whitespace(pc.utf8_lower(pc.cast(batch.column(OP_COLUMN), pa.string())))
    return pc.fill_null(pc.if_else(pc.equal(ops, ""), pa.scalar(None, pa.string()), ops), "upsert")


def _upserts(batch: pa.Table, *, columns: list[str] | None) -> pa.Table:
    """A delta block's upserts, without the _op column, as ``columns`` where given. A block of
    deletions only (a file of ids and _op) has none of the other columns: it gives no rows."""
    import pyarrow.compute as pc

    kept = batch.filter(pc.equal(op_column(batch), "upsert"))
    kept = kept.drop_columns([OP_COLUMN]) if OP_COLUMN in kept.column_names else kept
    if columns is None:
        return kept
    return _select(kept, columns=columns)


def _select(batch: pa.Table, *, columns: list[str]) -> pa.Table:
    """``columns`` of a block, nulls for those it lacks."""
    return pa.table({c: batch.column(c) if c in batch.column_names else pa.nulls(batch.num_rows) for c in columns})


def _names(batch) -> pa.Table:
    """A block's column names, as one row."""
    return pa.table({"names": [list(batch.column_names if isinstance(batch, pa.Table) else batch.columns)]})


def _ops_of(batch: pa.Table, *, id_column: str) -> pa.Table:
    """A delta block's ids (as text) and operations."""
    import pyarrow.compute as pc

    ids = (
        pc.cast(batch.column(id_column), pa.string())
        if id_column in batch.column_names
        else pa.nulls(batch.num_rows, pa.string())
    )
    return pa.table({"id": ids, "op": op_column(batch)})


def _format_of(path: str) -> str | None:
    """The format a file's name says (``FILE_EXTENSIONS``), or None."""
    name = path.rsplit("/", 1)[-1].lower()
    return next((fmt for fmt, exts in FILE_EXTENSIONS.items() if any(name.endswith("." + e) for e in exts)), None)


def _is_catalog_file(relative: str, fmt: str) -> bool:
    """Whether Ray's reader of ``fmt`` reads the file at ``relative`` in a folder catalog."""
    return not relative.startswith(_HIDDEN) and _format_of(relative) == fmt


def _detect_format(uri: str, is_dir: bool) -> str:
    """The format from the file's extension or, for a local folder, from the files its readers
    would read (subfolders too, as in a Hive layout). A folder on object storage is not listed
    here: its configuration names the format."""
    if not is_dir or has_scheme(uri):
        if fmt := _format_of(uri):
            return fmt
        where = "a folder on object storage" if is_dir else "its name"
        raise ConfigError(
            f"cannot tell the format of catalog {uri} from {where}; set catalog.format to parquet, jsonl or csv"
        )
    # every file the readers would read, subfolders too (a Hive layout: date=.../part-0.parquet;
    # the job's pin lists the same files again)
    formats = sorted({fmt for fmt in map(_format_of, _folder_files(Path(uri))) if fmt})
    if len(formats) == 1:
        return formats[0]
    if formats:
        raise ConfigError(
            f"catalog folder {uri} holds {' and '.join(formats)} files; set catalog.format to the one that "
            "holds the items (the others are not read)"
        )
    raise CatalogError(f"catalog folder {uri} holds no Parquet, JSONL or CSV files ({_extensions_shown()})")


def _folder_files(root: Path):
    """A local folder catalog's files that a reader may read (not ``_SUCCESS``, ``.crc`` ...),
    relative to it, as they are found (``any`` over them stops at the first match)."""
    for p in root.rglob("*"):
        if p.is_file() and not (rel := p.relative_to(root).as_posix()).startswith(_HIDDEN):
            yield rel


def _extensions_shown(fmt: str | None = None) -> str:
    formats = [fmt] if fmt else list(FILE_EXTENSIONS)
    return ", ".join("." + e for f in formats for e in FILE_EXTENSIONS[f] if e.count(".") == 0)


#: rows per block of a JSON-lines file (pandas reads it this many lines at a time)
JSON_LINES_CHUNK_ROWS = 10_000


def _json_lines(
    uri: str, extensions: list[str] | None, chunk_rows: int = JSON_LINES_CHUNK_ROWS, columns: list[str] | None = None
):
    """A Ray datasource of JSON-lines files that keeps every value's JSON type.

    Written by hand because ``ray.data.read_json(lines=True)`` hands each file to pandas with its
    type guessing on: the string ids ``"00123"`` and ``"007"`` came back as the numbers 123 and 7
    (a wrong id, a false duplicate, a delete that matched nothing) and ISO dates as timestamps.
    This reads the same way (pandas, a chunk of lines at a time) with ``dtype=False``.
    ``columns``: each chunk as those columns, None where none of its lines has the key."""
    from ray.data.datasource import FileBasedDatasource

    class JsonLines(FileBasedDatasource):
        def _read_stream(self, f, path: str):
            import pandas as pd

            with pd.read_json(f, lines=True, dtype=False, chunksize=chunk_rows) as reader:
                for frame in reader:
                    if columns is not None:
                        frame = frame[[c for c in columns if c in frame.columns]].copy()
                        for c in columns:
                            if c not in frame.columns:
                                frame[c] = None  # no line of this chunk has the key
                        frame = frame[columns]
                    yield frame

    return JsonLines(uri, file_extensions=extensions)
