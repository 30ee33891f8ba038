"""Snapshots: one consistent, immutable set of table versions.

Lance versions every table on each commit. A snapshot is a row in the ``snapshots`` table
whose JSON document names, for every table a reader may open, the Lance version to open it
at, together with the feature registry (names, versions, specs) and the job report. It is
appended only after every table it names is committed, so a reader either sees all of a
job's writes or none of them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from itemlens.errors import SnapshotNotFoundError, StoreFormatError
from itemlens.store import lance_io
from itemlens.store.layout import FORMAT_VERSION, ITEMS_TABLE, SNAPSHOTS_TABLE, TIMESTAMP
from itemlens.store.location import StoreLocation


class FeatureVersion(BaseModel):
    """One version of a feature: a spec (fingerprint) and the table holding its rows."""

    name: str
    label: str  # "v1", "v2", ... in order of creation
    fingerprint: str
    table: str
    spec: dict[str, Any]
    kind: str = "vector"  # "vector" or "caption"
    dim: int | None = None  # None until the first vector is stored (and for captions)
    dtype: str = "float32"
    pooling: str = "mean"
    index: dict[str, Any] | None = None  # vector index: kind, params, rows, recall_at_10
    count: int = 0  # items with a value
    errors: int = 0  # items whose input failed (an errors row)
    absent: int = 0  # items without such an input (an errors row of stage "absent")
    encoder: dict[str, Any] = Field(default_factory=dict)
    created_at: str

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.label}"


class FeatureEntry(BaseModel):
    current: str  # label of the version the config now specifies
    versions: dict[str, FeatureVersion]

    def by_fingerprint(self, fingerprint: str) -> FeatureVersion | None:
        return next((v for v in self.versions.values() if v.fingerprint == fingerprint), None)

    def next_label(self) -> str:
        return f"v{1 + max((int(label[1:]) for label in self.versions), default=0)}"


class SemanticIdVersion(BaseModel):
    """One trained quantizer and the IDs it handed out (see store/semantic_ids/)."""

    name: str
    label: str
    fingerprint: str  # the spec and its input feature versions
    table: str  # codes: one active row per item, plus retired tuples
    quantizer_table: str  # weights (safetensors) and the code-usage plot
    spec: dict[str, Any]
    inputs: dict[str, str]  # input feature -> its qualified version ("text@v2")
    input_dim: int
    width: int  # codes per item: levels (+1 with the suffix)
    count: int = 0  # items with an ID
    retired: int = 0  # tuples retired (changed or deleted items), never reused
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    refreshed_at: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.label}"


class SemanticIdEntry(BaseModel):
    current: str
    versions: dict[str, SemanticIdVersion]

    def next_label(self) -> str:
        return f"v{1 + max((int(label[1:]) for label in self.versions), default=0)}"


class GraphVersion(BaseModel):
    """One set of stored neighbour lists (see store/graphs/)."""

    name: str
    label: str
    fingerprint: str  # k, self-loops, method and the input feature versions
    table: str
    spec: dict[str, Any]  # the definition as last built (preset and weights apply when read)
    inputs: dict[str, str]
    count: int = 0  # items with a list
    stats: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    refreshed_at: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.label}"


class GraphEntry(BaseModel):
    current: str
    versions: dict[str, GraphVersion]

    def next_label(self) -> str:
        return f"v{1 + max((int(label[1:]) for label in self.versions), default=0)}"


class SnapshotDoc(BaseModel):
    snapshot_id: int = 0
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    tables: dict[str, int] = Field(default_factory=dict)  # table name -> Lance version
    features: dict[str, FeatureEntry] = Field(default_factory=dict)
    semantic_ids: dict[str, SemanticIdEntry] = Field(default_factory=dict)
    graphs: dict[str, GraphEntry] = Field(default_factory=dict)
    catalog: dict[str, Any] = Field(default_factory=dict)  # uri, digest, items
    report: dict[str, Any] = Field(default_factory=dict)

    def feature_version(self, name: str) -> FeatureVersion | None:
        """``"text"`` (current version) or ``"text@v1"``; None when unknown."""
        base, _, label = name.partition("@")
        entry = self.features.get(base)
        if entry is None:
            return None
        return entry.versions.get(label or entry.current)

    def semantic_id_version(self, name: str) -> SemanticIdVersion | None:
        base, _, label = name.partition("@")
        entry = self.semantic_ids.get(base)
        if entry is None:
            return None
        return entry.versions.get(label or entry.current)

    def graph_version(self, name: str) -> GraphVersion | None:
        base, _, label = name.partition("@")
        entry = self.graphs.get(base)
        if entry is None:
            return None
        return entry.versions.get(label or entry.current)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_doc(
    location: StoreLocation, snapshot_id: int | None = None, snapshots_version: int | None = None
) -> SnapshotDoc | None:
    """The latest (or a given) snapshot's document; None if the store has none yet."""
    ds = lance_io.open_dataset(location.table_uri(SNAPSHOTS_TABLE), snapshots_version, location.options())
    if ds is None:
        return None
    if snapshot_id is None:
        rows = lance_io.sql_rows(ds, "SELECT max(snapshot_id) AS latest FROM dataset")
        snapshot_id = rows[0]["latest"] if rows else None
        if snapshot_id is None:
            return None
    table = ds.to_table(columns=["doc"], filter=f"snapshot_id = {int(snapshot_id)}")
    if table.num_rows == 0:
        known = list_snapshots(location)
        raise SnapshotNotFoundError(
            f"store {location.uri} has no snapshot {snapshot_id} (never published, or pruned); it has "
            f"{', '.join(str(s['snapshot_id']) for s in known[-10:]) or 'none'}"
        )
    doc = SnapshotDoc.model_validate_json(table.column("doc")[0].as_py())
    if doc.format_version > FORMAT_VERSION:
        raise StoreFormatError(
            f"snapshot {snapshot_id} of {location.uri} was written in store format {doc.format_version}; "
            f"this itemlens reads format {FORMAT_VERSION}: upgrade itemlens"
        )
    return doc


PIN_PREFIX = "itemlens-pin-"


def pin_tag(snapshot_id: int) -> str:
    return f"{PIN_PREFIX}{snapshot_id}"


def pinned_snapshots(location: StoreLocation) -> list[int]:
    """Snapshots pinned with ``itemlens pin``: Lance tags on the versions they name (read off
    the items table, which every snapshot names)."""
    ds = lance_io.open_dataset(location.table_uri(ITEMS_TABLE), storage_options=location.options())
    if ds is None:
        return []
    return sorted(int(tag[len(PIN_PREFIX) :]) for tag in ds.tags.list() if tag.startswith(PIN_PREFIX))


def list_snapshots(location: StoreLocation) -> list[dict[str, Any]]:
    ds = lance_io.open_dataset(location.table_uri(SNAPSHOTS_TABLE), storage_options=location.options())
    if ds is None:
        return []
    rows = ds.to_table(columns=["snapshot_id", "created_at", "doc"]).to_pylist()
    pinned = set(pinned_snapshots(location))
    out = []
    for row in sorted(rows, key=lambda r: r["snapshot_id"]):
        doc = json.loads(row["doc"])
        out.append(
            {
                "snapshot_id": row["snapshot_id"],
                "created_at": row["created_at"],
                "features": {name: e["current"] for name, e in doc.get("features", {}).items()},
                "semantic_ids": {name: e["current"] for name, e in doc.get("semantic_ids", {}).items()},
                "graphs": {name: e["current"] for name, e in doc.get("graphs", {}).items()},
                "items": doc.get("catalog", {}).get("items"),
                "summary": doc.get("report", {}).get("summary", ""),
                "pinned": row["snapshot_id"] in pinned,
            }
        )
    return out


def append_doc(location: StoreLocation, doc: SnapshotDoc) -> None:
    """Publish: one atomic Lance append to the snapshots table."""
    import lance

    row = pa.table(
        {
            "snapshot_id": pa.array([doc.snapshot_id], pa.int64()),
            "created_at": pa.array([datetime.fromisoformat(doc.created_at)], TIMESTAMP),
            "doc": pa.array([doc.model_dump_json()], pa.string()),
        }
    )
    lance.write_dataset(row, location.table_uri(SNAPSHOTS_TABLE), mode="append", storage_options=location.options())
