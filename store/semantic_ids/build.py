"""Training and refreshing semantic IDs (``derive``) and ``itemlens semantic-ids`` (``build``).

A version of a definition is one trained quantizer: its weights are stored beside the codes,
and a refresh encodes new and changed items with them, without training. Unchanged items keep
their tuples; the tuple of a changed or deleted item is retired and never handed out again.
Training again is explicit (``--retrain``, or a changed definition or input feature version)
and makes a new version; the old stays readable as ``"name@v1"``."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
import numpy as np
import pyarrow as pa
from itemlens.errors import ConfigError, StoreError
from itemlens.store.faults import fault_point
from itemlens.store.layout import TIMESTAMP
from itemlens.store.semantic_ids.metrics import code_metrics, usage_plot
from itemlens.store.semantic_ids.spec import SemanticIdSpec
from itemlens.store.semantic_ids.storage import CODES_FIELDS, QUANTIZER_SCHEMA, codes_matrix, codes_schema, fixed_codes, open_table
from itemlens.store.vectors import items_in_order, read_vectors
if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.semantic_ids import quantizers
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter


log = logging.getLogger("itemlens.semantic_ids")


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


@dataclass
class Inputs:
    ids: list[str]                 # items with every input feature, in item-index order
    x: np.ndarray                  # [n, sum of dims] float32, each feature times its weight
    source_hash: list[str]
    missing: int                   # items lacking some input
    versions: dict[str, str]       # feature -> qualified version


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


def derive(writer: StoreWriter, name: str, spec: SemanticIdSpec, *, retrain: bool = False,
           features: dict[str, FeatureVersion] | None = None) -> SemanticIdReport:
    """Bring semantic-ID definition ``name`` up to date with the writer's current vectors:
    train a new version (first run, changed definition or inputs, ``retrain``), or refresh the
    current one with its frozen quantizer. Publishing is the caller's (``writer.publish``)."""
    from itemlens.store.semantic_ids import quantizers
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
        quantizer_data = open_table(writer, version.quantizer_table,
                               writer.base.tables.get(version.quantizer_table)).to_table().to_pylist()
        blob = next(r["value"] for r in quantizer_data if r["key"] == "weights")
        quantizer = quantizers.load(spec.method, params, version.input_dim, blob)
        old = open_table(writer, version.table, writer.base.tables.get(version.table)).to_table(columns=CODES_FIELDS)
    report.version = version.label

    t = time.perf_counter()
    table, x_active, prefix_active = _assign(old, inputs, quantizer, spec, report, trained_codes)
    report.seconds["assign"] = time.perf_counter() - t
    if not report.trained and report.new == 0 and report.retired == 0 and \
            open_table(writer, version.table, None).version == writer.base.tables.get(version.table):
        report.metrics = dict(version.metrics)      # nothing changed: no new table versions
        report.seconds["total"] = time.perf_counter() - t0
        log.info("%s", report.line())
        return report
    t = time.perf_counter()
    decoded = quantizer.decode(prefix_active) if len(prefix_active) else None
    metrics = code_metrics(prefix_active, spec.codebook_size, x_active, decoded)
    if spec.uniqueness == "suffix":   # suffix values ever handed out (the tokens' vocabulary needs them all)
        metrics["suffix_values"] = int(codes_matrix(table.column("codes"), spec.width)[:, -1].max(initial=-1)) + 1
    if spec.method == "rq-vae" and report.trained:
        metrics["training"] = quantizer.history[-1] if quantizer.history else {}
    report.metrics = metrics
    plot = usage_plot(metrics, f"{version.qualified}: code usage per level ({len(prefix_active)} items)")
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
    codes = codes_matrix(old.column("codes"), width)
    prefix = codes_matrix(old.column("prefix"), levels)
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
        "codes": fixed_codes(new_codes, width), "prefix": fixed_codes(new_prefix, levels),
        "source_hash": [inputs.source_hash[i] for i in todo],
        "active": pa.array(np.ones(len(todo), bool)), "assigned_at": pa.array([now] * len(todo), TIMESTAMP),
    }, schema=schema)
    old = old.set_column(old.schema.get_field_index("active"), "active", pa.array(active))
    table = pa.concat_tables([old.cast(schema), new_rows])
    report.items = len(keep_rows) + len(todo)
    rows_x = np.concatenate([inputs.x[keep_inputs], inputs.x[todo]]) if report.items else inputs.x[:0]
    rows_prefix = np.concatenate([prefix[keep_rows], new_prefix]).astype(np.int64)
    return table, rows_x, rows_prefix


def _device(spec: SemanticIdSpec) -> str:
    if spec.device != "auto":
        return spec.device
    if spec.method != "rq-vae":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
