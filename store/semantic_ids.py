"""Semantic IDs: items as short tuples of codes, unique and stable across refreshes.

A semantic-ID definition (``semantic_ids:`` in the configuration) names its input features
(one, or several concatenated with weights), a quantizer (store/quantizers.py) and how
colliding tuples are made unique:

- ``suffix`` (TIGER, GRID): one extra code numbering the items that share a tuple 0, 1, 2 ...
  in the order of their stable item index; a later item with that tuple gets the next number
  never handed out before.
- ``nearest-free`` (LC-Rec, FORGE): the tuple keeps its length; an item whose tuple is taken
  moves to the nearest last-level code whose tuple is free.

A version of a definition is one trained quantizer: its weights are stored beside the codes,
and a refresh encodes new and changed items with them, without training. Unchanged items keep
their tuples; the tuple of a changed or deleted item is retired (kept as a row with
``active = false``) and never handed out again. Training again is explicit (``--retrain``, or a
changed definition or input feature version) and makes a new version; the old stays readable
as ``"name@v1"``.

Tables of a version (``<name>``, ``<label>``): ``sid__<name>__<label>`` (item_id, codes, the
quantizer's own codes ``prefix``, the hash of the inputs, active, assigned_at) and
``sidq__<name>__<label>`` (key -> bytes: the safetensors weights, the code-usage PNG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from itemlens.config_types import NAME, StrictModel
from itemlens.errors import ConfigError, StoreError
from itemlens.store.faults import fault_point
from itemlens.store.layout import ITEMS_TABLE, TIMESTAMP

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store import quantizers
    from itemlens.store.snapshots import FeatureVersion, SemanticIdVersion
    from itemlens.store.writer import StoreWriter

log = logging.getLogger("itemlens.semantic_ids")


_Strict = StrictModel


def check_inputs(value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
    """The ``features:`` of a derived artifact: feature names, or names -> weights > 0."""
    if not list(value):
        raise ValueError("name at least one input feature")
    for name in value:
        if not NAME.match(name):
            raise ValueError(f"{name!r} is not a feature name")
    if isinstance(value, dict) and any(w <= 0 for w in value.values()):
        raise ValueError("feature weights must be > 0")
    return value


class VaeParams(_Strict):
    """RQ-VAE (TIGER's defaults: latent 32, 512-256 MLP, beta 0.25)."""

    latent_dim: int = Field(32, ge=1)
    hidden: list[int] = [512, 256]
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.25, ge=0)
    gradient: Literal["ste", "rotation"] = "ste"
    restart_dead_codes: bool = True


class SemanticIdSpec(_Strict):
    """``semantic_ids: {name: spec}`` in the configuration."""

    features: list[str] | dict[str, float] = Field(description="input features, or feature -> weight")
    method: Literal["rq-kmeans", "rq-vae"] = "rq-kmeans"
    levels: int = Field(3, ge=1, le=16)
    codebook_size: int = Field(256, ge=2, le=65536)
    normalize_residual: bool = False          # GRID: L2-normalize the residual before each level
    balanced: bool = False                    # OneRec: at most ceil(N/K) items per code (rq-kmeans)
    uniqueness: Literal["suffix", "nearest-free"] = "suffix"
    kmeans_iterations: int = Field(20, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"   # rq-vae training; k-means runs on faiss-cpu
    vae: VaeParams = VaeParams()

    @field_validator("features")
    @classmethod
    def _inputs(cls, value):
        return check_inputs(value)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.features) if isinstance(self.features, dict) else {f: 1.0 for f in self.features}

    @property
    def width(self) -> int:
        return self.levels + (1 if self.uniqueness == "suffix" else 0)

    def fingerprint(self, inputs: dict[str, str]) -> str:
        """The definition without execution details (device), plus its inputs' versions."""
        doc = self.model_dump(mode="json", exclude={"device"})
        if self.method != "rq-vae":
            doc.pop("vae")
        blob = json.dumps({"spec": doc, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


CODES_FIELDS = ["item_id", "codes", "prefix", "source_hash", "active", "assigned_at"]


def codes_schema(width: int, levels: int) -> pa.Schema:
    return pa.schema([
        pa.field("item_id", pa.string()),
        pa.field("codes", pa.list_(pa.int32(), width)),     # the semantic ID
        pa.field("prefix", pa.list_(pa.int32(), levels)),   # the quantizer's codes (before uniqueness)
        pa.field("source_hash", pa.string()),               # input hashes of the input features
        pa.field("active", pa.bool_()),                     # false: retired, never handed out again
        pa.field("assigned_at", TIMESTAMP),
    ])


QUANTIZER_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.large_binary())])


@dataclass
class SemanticIdReport:
    name: str
    version: str = ""
    trained: bool = False
    items: int = 0              # items with an ID after the run
    new: int = 0                # items that got an ID for the first time
    changed: int = 0            # items whose inputs changed: new tuple, old one retired
    retired: int = 0            # tuples retired in this run (changed + gone)
    unchanged: int = 0
    missing_inputs: int = 0     # items lacking a vector of some input feature: no ID
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["metrics"] = {k: v for k, v in self.metrics.items() if k != "usage"}
        return doc

    def line(self) -> str:
        m = self.metrics
        return (f"{self.name}@{self.version}: {'trained, ' if self.trained else ''}{self.items} items "
                f"({self.new} new, {self.changed} changed, {self.retired} retired), collision rate "
                f"{m.get('collision_rate', 0):.2%}, reconstruction error {m.get('reconstruction_error', float('nan')):.4f}")


# -- inputs ----------------------------------------------------------------------------------

@dataclass
class Inputs:
    ids: list[str]                 # items with every input feature, in item-index order
    x: np.ndarray                  # [n, sum of dims] float32, each feature times its weight
    source_hash: list[str]
    missing: int                   # items lacking some input
    versions: dict[str, str]       # feature -> qualified version


def items_in_order(writer: StoreWriter) -> pa.Table:
    """Every item id with its stable item index, in item-index order."""
    return writer._open(ITEMS_TABLE).to_table(columns=["item_id", "item_index"]).sort_by("item_index")


def read_vectors(writer: StoreWriter, version: FeatureVersion, table_version: int | None,
                 item_ids: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """One pooled vector feature aligned to ``item_ids``: (present [n] bool, vectors [n, d]
    float32, zero where absent, the feature's input hashes, null where absent). Column-wise
    throughout (pyarrow's hash join of the ids): graphs read 100,000s of items per refresh."""
    import pyarrow.compute as pc

    from itemlens.store import lance_io

    if version.kind != "vector" or version.pooling != "mean":
        raise ConfigError(f"semantic IDs and graphs take pooled vector features; {version.qualified} holds "
                          f"{version.kind}s per {version.pooling}")
    n = len(item_ids)
    dataset = lance_io.open_dataset(writer.location.table_uri(version.table), table_version, writer.location.options())
    if dataset is None:
        return np.zeros(n, bool), np.zeros((n, 0), np.float32), pa.nulls(n, pa.string())
    table = dataset.to_table(columns=["item_id", "vector", "input_hash"])
    column = table.column("vector").combine_chunks()
    if table.num_rows == 0:
        return np.zeros(n, bool), np.zeros((n, column.type.list_size), np.float32), pa.nulls(n, pa.string())
    rows = pc.index_in(item_ids, value_set=table.column("item_id").combine_chunks()).fill_null(-1)
    rows = rows.to_numpy(zero_copy_only=False).astype(np.int64)
    present = rows >= 0
    take = np.where(present, rows, 0)
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    vectors = values[take].astype(np.float32, copy=False)
    if not present.all():
        vectors[~present] = 0
    hashes = table.column("input_hash").combine_chunks().take(pa.array(take))
    return present, vectors, pc.if_else(pa.array(present), hashes, pa.scalar(None, pa.string()))


def read_inputs(writer: StoreWriter, weights: dict[str, float], versions: dict[str, FeatureVersion],
                table_versions: dict[str, int | None]) -> Inputs:
    """The input vectors (times their weights, concatenated) of every item that has all of
    them, in stable item-index order."""
    items = items_in_order(writer)
    item_ids = items.column("item_id").combine_chunks()
    ids = item_ids.to_pylist()
    present = np.ones(len(ids), bool)
    parts, hashes = [], []
    for name, weight in weights.items():
        version = versions[name]
        has, vectors, input_hash = read_vectors(writer, version, table_versions.get(version.table), item_ids)
        present &= has
        parts.append(vectors * np.float32(weight))
        hashes.append(input_hash.fill_null("").to_pylist())
    keep = np.flatnonzero(present)
    x = np.concatenate([p[keep] for p in parts], axis=1) if len(keep) else np.zeros((0, 0), np.float32)
    source = [hashlib.sha256("\0".join(h[i] for h in hashes).encode()).hexdigest()[:32] for i in keep.tolist()]
    return Inputs([ids[i] for i in keep.tolist()], np.ascontiguousarray(x), source, int(len(ids) - len(keep)),
                  {n: versions[n].qualified for n in weights})


# -- uniqueness ------------------------------------------------------------------------------

def make_unique(prefix: np.ndarray, last_distances: np.ndarray, mode: str, taken: set[tuple[int, ...]],
                next_suffix: dict[tuple[int, ...], int]) -> np.ndarray:
    """Final codes for rows in order, given the tuples handed out before (``taken``, active
    and retired) and, for the suffix, the next free number per prefix. Updates both."""
    n, levels = prefix.shape
    if mode == "suffix":
        out = np.zeros((n, levels + 1), np.int64)
        out[:, :levels] = prefix
        for i, row in enumerate(map(tuple, prefix.tolist())):
            s = next_suffix.get(row, 0)
            next_suffix[row] = s + 1
            out[i, levels] = s
            taken.add((*row, s))
        return out
    out = prefix.copy()
    for i, row in enumerate(map(tuple, prefix.tolist())):
        if row in taken:
            for code in np.argsort(last_distances[i], kind="stable").tolist():
                candidate = (*row[:-1], code)
                if candidate not in taken:
                    row = candidate
                    break
            else:
                raise StoreError(
                    f"nearest-free uniqueness: every last-level code under prefix {row[:-1]} is taken "
                    f"({last_distances.shape[1]} codes); use a larger codebook_size or uniqueness: suffix")
            out[i] = row
        taken.add(row)
    return out


# -- building and refreshing -------------------------------------------------------------------

def derive(writer: StoreWriter, name: str, spec: SemanticIdSpec, *, retrain: bool = False,
           features: dict[str, FeatureVersion] | None = None) -> SemanticIdReport:
    """Bring semantic-ID definition ``name`` up to date with the writer's current vectors:
    train a new version (first run, changed definition or inputs, ``retrain``), or refresh the
    current one with its frozen quantizer. Publishing is the caller's (``writer.publish``)."""
    from itemlens.store import quantizers
    from itemlens.store.snapshots import SemanticIdVersion, now_iso

    report = SemanticIdReport(name=name)
    t0 = time.perf_counter()
    versions, table_versions = {}, {}
    for feature in spec.weights:
        version = (features or {}).get(feature) or writer.base.feature_version(feature)
        if version is None:
            raise ConfigError(f"semantic IDs {name!r}: the store has no feature {feature!r}")
        versions[feature] = version
        # a feature this job wrote: its latest table version; else the one the base snapshot names
        table_versions[version.table] = None if features and feature in features else writer.base.tables.get(version.table)
    inputs = read_inputs(writer, spec.weights, versions, table_versions)
    report.missing_inputs = inputs.missing
    report.seconds["read_inputs"] = time.perf_counter() - t0
    fingerprint = spec.fingerprint(inputs.versions)
    entry = writer.base.semantic_ids.get(name)
    existing = None if (retrain or entry is None) else next(
        (v for v in entry.versions.values() if v.fingerprint == fingerprint), None)
    params = {**spec.model_dump(mode="json"), "device": _device(spec)}
    if existing is None:
        if len(inputs.ids) == 0:
            raise StoreError(f"semantic IDs {name!r}: no item has vectors for all of {', '.join(spec.weights)}")
        label = entry.next_label() if entry else "v1"
        t = time.perf_counter()
        quantizer = quantizers.build(spec.method, params, inputs.x.shape[1])
        trained_codes = quantizer.fit_encode(inputs.x, distances=spec.uniqueness == "nearest-free")
        report.seconds["train"] = time.perf_counter() - t
        report.trained = True
        version = SemanticIdVersion(
            name=name, label=label, fingerprint=fingerprint, table=f"sid__{name}__{label}",
            quantizer_table=f"sidq__{name}__{label}", spec=spec.model_dump(mode="json"), inputs=inputs.versions,
            input_dim=int(inputs.x.shape[1]), width=spec.width, created_at=now_iso())
        old = codes_schema(spec.width, spec.levels).empty_table()
        blob = quantizers.save(quantizer)
    else:
        trained_codes = None
        version = existing.model_copy(deep=True)
        if inputs.x.shape[1] not in (0, version.input_dim):
            raise StoreError(f"{version.qualified} was trained on {version.input_dim}-d inputs; they are "
                             f"{inputs.x.shape[1]}-d now: retrain")
        # as the published snapshot has them (a run killed after writing left later versions,
        # which this run's overwrite replaces)
        quantizer_data = _open(writer, version.quantizer_table,
                               writer.base.tables.get(version.quantizer_table)).to_table().to_pylist()
        blob = next(r["value"] for r in quantizer_data if r["key"] == "weights")
        quantizer = quantizers.load(spec.method, params, version.input_dim, blob)
        old = _open(writer, version.table, writer.base.tables.get(version.table)).to_table(columns=CODES_FIELDS)
    report.version = version.label

    t = time.perf_counter()
    table, x_active, prefix_active = _assign(old, inputs, quantizer, spec, report, trained_codes)
    report.seconds["assign"] = time.perf_counter() - t
    if not report.trained and report.new == 0 and report.retired == 0 and \
            _open(writer, version.table, None).version == writer.base.tables.get(version.table):
        report.metrics = dict(version.metrics)      # nothing changed: no new table versions
        report.seconds["total"] = time.perf_counter() - t0
        log.info("%s", report.line())
        return report
    t = time.perf_counter()
    decoded = quantizer.decode(prefix_active) if len(prefix_active) else None
    metrics = quantizers.code_metrics(prefix_active, spec.codebook_size, x_active, decoded)
    if spec.uniqueness == "suffix":   # suffix values ever handed out (the tokens' vocabulary needs them all)
        metrics["suffix_values"] = int(_matrix(table.column("codes"), spec.width)[:, -1].max(initial=-1)) + 1
    if spec.method == "rq-vae" and report.trained:
        metrics["training"] = quantizer.history[-1] if quantizer.history else {}
    report.metrics = metrics
    plot = quantizers.usage_plot(metrics, f"{version.qualified}: code usage per level ({len(prefix_active)} items)")
    report.seconds["metrics"] = time.perf_counter() - t

    import lance

    opts = writer.location.options()
    lance.write_dataset(table, writer.location.table_uri(version.table), mode="overwrite", storage_options=opts)
    fault_point("semantic-ids:codes")
    lance.write_dataset(pa.table({"key": ["weights", "plot"], "value": [blob, plot]}, schema=QUANTIZER_SCHEMA),
                        writer.location.table_uri(version.quantizer_table), mode="overwrite", storage_options=opts)
    fault_point("semantic-ids:quantizer")
    version.count = report.items
    version.retired = int(table.num_rows - report.items)
    version.metrics = {k: v for k, v in metrics.items() if k != "usage"}
    version.refreshed_at = now_iso()
    writer.stage_semantic_ids(version)
    report.seconds["total"] = time.perf_counter() - t0
    log.info("%s", report.line())
    return report


def _assign(old: pa.Table, inputs: Inputs, quantizer, spec: SemanticIdSpec, report: SemanticIdReport,
            trained: quantizers.Encoded | None):
    """The codes table after this run: old rows (some retired now), and rows for new and
    changed items. Returns it with the inputs and quantizer codes of the active rows."""
    old_ids = old.column("item_id").to_pylist()
    active = old.column("active").to_numpy(zero_copy_only=False).copy()
    old_hash = old.column("source_hash").to_pylist()
    width, levels = spec.width, spec.levels
    codes = _matrix(old.column("codes"), width)
    prefix = _matrix(old.column("prefix"), levels)
    position = {i: p for p, i in enumerate(inputs.ids)}
    keep_rows, keep_inputs = [], []
    for row in np.flatnonzero(active).tolist():
        at = position.get(old_ids[row])
        if at is not None and inputs.source_hash[at] == old_hash[row]:
            keep_rows.append(row)
            keep_inputs.append(at)
        else:
            active[row] = False            # retired: changed or no longer there
            if at is not None:
                report.changed += 1
            report.retired += 1
    kept = set(keep_inputs)
    todo = [i for i in range(len(inputs.ids)) if i not in kept]      # new and changed, item-index order
    report.unchanged = len(keep_rows)
    report.new = len(todo) - report.changed
    if trained is not None:       # a new version: every item, coded as in training
        encoded = trained
    else:
        encoded = quantizer.encode(inputs.x[todo], distances=spec.uniqueness == "nearest-free") if todo else None
    taken = set(map(tuple, codes.tolist()))
    next_suffix: dict[tuple[int, ...], int] = {}
    if spec.uniqueness == "suffix":
        for row in codes.tolist():
            key = tuple(row[:levels])
            next_suffix[key] = max(next_suffix.get(key, 0), row[levels] + 1)
    if encoded is not None:
        new_codes = make_unique(encoded.codes, encoded.last_distances, spec.uniqueness, taken, next_suffix)
        new_prefix = encoded.codes
    else:
        new_codes, new_prefix = np.zeros((0, width), np.int64), np.zeros((0, levels), np.int64)
    now = datetime.now(timezone.utc)
    schema = codes_schema(width, levels)
    new_rows = pa.table({
        "item_id": [inputs.ids[i] for i in todo],
        "codes": _fixed(new_codes, width), "prefix": _fixed(new_prefix, levels),
        "source_hash": [inputs.source_hash[i] for i in todo],
        "active": pa.array(np.ones(len(todo), bool)), "assigned_at": pa.array([now] * len(todo), TIMESTAMP),
    }, schema=schema)
    old = old.set_column(old.schema.get_field_index("active"), "active", pa.array(active))
    table = pa.concat_tables([old.cast(schema), new_rows])
    report.items = len(keep_rows) + len(todo)
    rows_x = np.concatenate([inputs.x[keep_inputs], inputs.x[todo]]) if report.items else inputs.x[:0]
    rows_prefix = np.concatenate([prefix[keep_rows], new_prefix]).astype(np.int64)
    return table, rows_x, rows_prefix


def _matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, width), np.int64)
    return column.combine_chunks().flatten().to_numpy().reshape(-1, width).astype(np.int64)


def _fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.int32), pa.int32()), width)


def _open(writer: StoreWriter, table: str, version: int | None):
    from itemlens.store import lance_io

    dataset = lance_io.open_dataset(writer.location.table_uri(table), version, writer.location.options())
    if dataset is None:
        raise StoreError(f"table {table} is missing from {writer.location.uri}")
    return dataset


def _device(spec: SemanticIdSpec) -> str:
    if spec.device != "auto":
        return spec.device
    if spec.method != "rq-vae":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- the command line's and the client's view ------------------------------------------------

def token_strings(codes: np.ndarray, present: np.ndarray) -> list[str]:
    """``<a_12><b_3><c_200><d_0>``: level letters a, b, c ... (then aa, ab ...), as LC-Rec
    and GRID print them; "" for items without an ID."""
    letters = [_letter(i) for i in range(codes.shape[1])]
    return ["".join(f"<{letters[j]}_{c}>" for j, c in enumerate(row)) if ok else ""
            for row, ok in zip(codes.tolist(), present.tolist())]


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else _letter(i // 26 - 1) + chr(ord("a") + i % 26)


def token_offsets(version: SemanticIdVersion) -> list[int]:
    """Offset added to each level's code to make one token vocabulary: level l's code c is
    token c + l * K; the suffix level comes last, after levels * K."""
    k = version.spec["codebook_size"]
    return [level * k for level in range(version.width)]


def build(uri: str, specs: dict[str, SemanticIdSpec | dict[str, Any]], *, retrain: bool = False,
          lock_wait: float = 0.0, storage_options: dict[str, str] | None = None
          ) -> tuple[dict[str, SemanticIdReport], int | None]:
    """Train or refresh semantic-ID definitions from the store's latest snapshot and publish a
    snapshot (``itemlens semantic-ids``). Returns the reports and the new snapshot id (None
    when nothing changed)."""
    from itemlens.store.writer import publish_derived

    return publish_derived(uri, specs, SemanticIdSpec, lambda w, n, s: derive(w, n, s, retrain=retrain),
                           what="semantic IDs", section="semantic_ids", command="itemlens semantic-ids",
                           lock_wait=lock_wait, storage_options=storage_options)
