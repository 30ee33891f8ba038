"""Training and refreshing semantic IDs (``derive``) and ``itemlens semantic-ids`` (``build``).

A version of a definition is one trained quantizer: its weights are stored beside the codes,
and a refresh encodes new and changed items with them, without training. Unchanged items keep
their tuples; the tuple of a changed or deleted item is retired and never handed out again.
Training again is explicit (``--retrain``, or a changed definition or input feature version)
and makes a new version; the old stays readable as ``"name@v1"``.

Nothing here holds the catalog's vectors. A run is passes over blocks of items (in item-index
order, :data:`~itemlens.store.vectors.BLOCK_ITEMS` each) that a runner executes, in this
process or as Ray tasks (``itemlens.workflows.derive``), each reading its rows from Lance:

1. where every input's rows are (:func:`~itemlens.store.vectors.feature_rows`: integers);
2. training on a seeded sample of the items (``sample``; default 256 points per code, capped),
   in one task; when the sample is every item, the codes are those of training (a balanced
   quantizer's capacities hold);
3. per block: the items' input hash against the stored one (a refresh), and the quantizer's
   codes of the new and changed items (:func:`assign_block`);
4. uniqueness on the codes alone, in the driver (:func:`make_unique`: a few integers per item);
5. the code table written by blocks as Lance fragments and committed in one transaction.
"""

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
from itemlens.store.semantic_ids.metrics import code_metrics, tuple_groups, usage_plot
from itemlens.store.semantic_ids.spec import SemanticIdSpec
from itemlens.store.semantic_ids.storage import (
    CODES_FIELDS,
    QUANTIZER_SCHEMA,
    codes_matrix,
    codes_schema,
    fixed_codes,
    open_table,
)
from itemlens.store.vectors import (
    BLOCK_ITEMS,
    LocalRunner,
    Runner,
    TableSource,
    aligned_rows,
    blocks,
    driver_peak_mb,
    feature_rows,
    items_source,
    join_item_indexes,
    read_block,
    read_vectors_at,
    table_source,
)

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter


log = logging.getLogger("itemlens.semantic_ids")

#: training sample: points per code of the largest level, and the most points
SAMPLE_PER_CODE, SAMPLE_CAP = 256, 262_144
#: reconstruction error: measured on at most this many items (seeded sample)
RECONSTRUCTION_ITEMS = 100_000
#: nearest-free: the last-level codes each item brings, nearest first (more are computed if needed)
ALTERNATIVES = 32


@dataclass
class SemanticIdReport:
    name: str
    version: str = ""
    trained: bool = False
    items: int = 0  # items with an ID after the run
    new: int = 0  # items that got an ID for the first time
    changed: int = 0  # items whose inputs changed: new tuple, old one retired
    retired: int = 0  # tuples retired in this run (changed + gone)
    unchanged: int = 0
    missing_inputs: int = 0  # items lacking a vector of some input feature: no ID
    ran_on: str = "driver"  # "driver", or the Ray tasks (and nodes) that did the work
    driver_peak_mb: float = 0.0  # the driver process's peak resident memory at the end of the run
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["metrics"] = {k: v for k, v in self.metrics.items() if k != "usage"}
        return doc

    def line(self) -> str:
        m = self.metrics
        return (
            f"{self.name}@{self.version}: {'trained, ' if self.trained else ''}{self.items} items "
            f"({self.new} new, {self.changed} changed, {self.retired} retired), collision rate "
            f"{m.get('collision_rate', 0):.2%}, "
            f"reconstruction error {m.get('reconstruction_error', float('nan')):.4f}; "
            f"ran on {self.ran_on}, driver peak {self.driver_peak_mb:,.0f} MiB"
        )


@dataclass
class Plan:
    """The inputs of a run as integers: the items that have every input feature (ascending item
    index) and, per input, the table and the row address of each item's vector."""

    item_index: np.ndarray
    sources: list[TableSource]
    address: list[np.ndarray]
    dims: list[int]
    weights: list[float]
    missing: int  # items lacking some input
    versions: dict[str, str]  # feature -> qualified version

    @property
    def input_dim(self) -> int:
        return int(sum(self.dims))

    def rows(self, which) -> tuple:
        """What a task needs to read items ``which`` (a slice or positions)."""
        return (self.sources, self.dims, self.weights, [a[which] for a in self.address])


def plan_inputs(
    writer: StoreWriter,
    weights: dict[str, float],
    versions: dict[str, FeatureVersion],
    table_versions: dict[str, int | None],
    runner: Runner,
) -> Plan:
    parts = [feature_rows(writer, versions[n], table_versions.get(versions[n].table), runner) for n in weights]
    if any(p.source is None for p in parts):
        common, address = np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in parts]
    else:
        common, address = aligned_rows(parts)
    items = writer.open_table("items").count_rows()
    return Plan(
        common,
        [p.source for p in parts],
        address,
        [p.dim for p in parts],
        list(weights.values()),
        int(items - len(common)),
        {n: versions[n].qualified for n in weights},
    )


def read_inputs(sources, dims, weights, address) -> np.ndarray:
    """The weighted, concatenated input vectors of one block of items."""
    parts = [read_vectors_at(s, a, d) * np.float32(w) for s, d, w, a in zip(sources, dims, weights, address)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)) if parts else np.zeros((0, 0), np.float32)


def source_hashes(sources, address) -> list[str]:
    """The hash of the input hashes of every input feature, per item of one block."""
    hashes = [read_block(s, a, ["input_hash"]).column(0).fill_null("").to_pylist() for s, a in zip(sources, address)]
    return [hashlib.sha256("\0".join(h).encode()).hexdigest()[:32] for h in zip(*hashes)]


# -- the quantizer, in tasks -------------------------------------------------------------------

_LOADED: dict[str, Any] = {}


def _quantizer(method: str, params: dict[str, Any], input_dim: int, blob: bytes):
    """The frozen quantizer (loaded once per process and weights)."""
    from itemlens.store.semantic_ids import quantizers

    key = hashlib.sha256(blob).hexdigest()
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = quantizers.load(method, params, input_dim, blob)
    return _LOADED[key]


def sample_positions(n: int, spec: SemanticIdSpec) -> np.ndarray:
    """Positions (into the run's items) of the training sample: every item when they are few,
    else a seeded draw, in item-index order."""
    size = spec.sample or min(SAMPLE_PER_CODE * spec.codebook_size, SAMPLE_CAP)
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(spec.seed).choice(n, size, replace=False))


def train(method: str, params: dict[str, Any], input_dim: int, rows: tuple, keep_codes: bool, distances: bool):
    """Train a quantizer on the sample ``rows``: (its safetensors weights, the sample's codes
    as trained when ``keep_codes``, and the nearest-free alternatives), its training history."""
    from itemlens.store.semantic_ids import quantizers

    x = read_inputs(*rows)
    quantizer = quantizers.build(method, params, input_dim)
    if keep_codes:
        encoded = quantizer.fit_encode(x, distances=distances)
        codes, alternatives = encoded.codes.astype(np.int32), _alternatives(encoded.last_distances)
    else:
        quantizer.fit(x)
        codes = alternatives = None
    return quantizers.save(quantizer), codes, alternatives, getattr(quantizer, "history", [])


def _alternatives(last_distances: np.ndarray | None) -> np.ndarray | None:
    if last_distances is None:
        return None
    order = np.argsort(last_distances, axis=1, kind="stable")[:, :ALTERNATIVES]
    return order.astype(np.int32)


def assign_block(
    quantizer: tuple, rows: tuple, old: TableSource | None, old_address: np.ndarray, distances: bool
) -> dict[str, Any]:
    """One block of items: which still have the inputs their active tuple was made from
    (``same``; ``old_address`` is -1 where an item has none), and the quantizer's codes of
    the others (``prefix``), with their nearest-free alternatives."""
    sources, dims, weights, address = rows
    n = len(address[0])
    same = np.zeros(n, bool)
    if old is not None and (old_address >= 0).any():
        held = np.flatnonzero(old_address >= 0)
        stored = read_block(old, old_address[held], ["source_hash"]).column(0).to_pylist()
        now = source_hashes(sources, [a[held] for a in address])
        same[held] = [a == b for a, b in zip(stored, now)]
    todo = np.flatnonzero(~same)
    prefix, alternatives = np.zeros((0, 0), np.int32), None
    if len(todo):
        encoded = _quantizer(*quantizer).encode(
            read_inputs(sources, dims, weights, [a[todo] for a in address]), distances=distances
        )
        prefix, alternatives = encoded.codes.astype(np.int32), _alternatives(encoded.last_distances)
    return {"same": same, "prefix": prefix, "alternatives": alternatives}


def last_level_order(quantizer: tuple, rows: tuple) -> np.ndarray:
    """Every last-level code of each item, nearest first (nearest-free, when the alternatives
    an item brought are all taken)."""
    encoded = _quantizer(*quantizer).encode(read_inputs(*rows), distances=True)
    return np.argsort(encoded.last_distances, axis=1, kind="stable")


def reconstruction_block(quantizer: tuple, rows: tuple, prefix: np.ndarray) -> tuple[float, float]:
    """(sum |x - decoded|^2, sum |x|^2) of one block of items with their codes."""
    x = read_inputs(*rows)
    decoded = _quantizer(*quantizer).decode(prefix.astype(np.int64))
    return float(((x - decoded) ** 2).sum()), float((x**2).sum())


def write_new_rows(
    uri: str,
    options,
    rows: tuple,
    codes: np.ndarray,
    prefix: np.ndarray,
    assigned_at: datetime,
    width: int,
    levels: int,
) -> list[str]:
    """Rows of new and changed items as Lance fragments of the code table (uncommitted)."""
    from itemlens.store import lance_io

    sources, _, _, address = rows
    ids = read_block(sources[0], address[0], ["item_id"]).column(0)
    n = len(ids)
    table = pa.table(
        {
            "item_id": ids,
            "codes": fixed_codes(codes, width),
            "prefix": fixed_codes(prefix, levels),
            "source_hash": pa.array(source_hashes(sources, address), pa.string()),
            "active": pa.array(np.ones(n, bool)),
            "assigned_at": pa.array([assigned_at] * n, TIMESTAMP),
        },
        schema=codes_schema(width, levels),
    )
    return lance_io.write_fragments(table, uri, options)


def write_old_rows(
    uri: str, options, old: TableSource, start: int, stop: int, active: np.ndarray, width: int, levels: int
) -> list[str]:
    """Stored rows ``start .. stop`` (scan order) again, with their ``active`` flags of now."""
    from itemlens.store import lance_io

    table = old.open().to_table(columns=CODES_FIELDS, offset=start, limit=stop - start)
    table = table.set_column(table.schema.get_field_index("active"), "active", pa.array(active))
    return lance_io.write_fragments(table.cast(codes_schema(width, levels)), uri, options)


# -- uniqueness on the codes -------------------------------------------------------------------


def make_unique(
    prefix: np.ndarray,
    mode: str,
    old_codes: np.ndarray,
    alternatives: np.ndarray | None = None,
    full_order=None,
    codebook_size: int | None = None,
) -> np.ndarray:
    """Final codes of new items (``prefix`` [m, levels], in item-index order), given every tuple
    handed out before (``old_codes``, active and retired: never handed out again).

    ``suffix``: one more code numbering the items of one tuple after the largest number it had.
    ``nearest-free``: an item whose tuple is taken moves to the nearest last-level code whose
    tuple is free, in item order (``alternatives`` [m, T]: each item's last-level codes,
    nearest first; ``full_order(positions)`` gives all of them where those T are taken).
    Vectorized on integers: no tuple objects, whatever the catalog's size."""
    prefix = np.asarray(prefix)
    m, levels = prefix.shape if prefix.ndim == 2 else (0, 0)
    old_codes = np.asarray(old_codes).reshape(-1, levels + (1 if mode == "suffix" else 0))
    if m == 0:
        return np.zeros((0, levels + (1 if mode == "suffix" else 0)), np.int32)
    if mode == "suffix":
        group = tuple_groups(old_codes[:, :levels], prefix)
        old_group, new_group = group[: len(old_codes)], group[len(old_codes) :]
        start = np.zeros(int(group.max()) + 1, np.int64)
        np.maximum.at(start, old_group, old_codes[:, levels].astype(np.int64) + 1)
        order = np.argsort(new_group, kind="stable")
        ordered = new_group[order]
        rank = np.arange(m) - np.searchsorted(ordered, ordered, side="left")
        out = np.zeros((m, levels + 1), np.int32)
        out[:, :levels] = prefix
        out[order, levels] = start[ordered] + rank
        return out
    from itemlens.store.semantic_ids import unique_kernels

    k = int(codebook_size or max(prefix[:, -1].max(initial=0), old_codes[:, -1].max(initial=0)) + 1)
    parent = tuple_groups(old_codes[:, : levels - 1], prefix[:, : levels - 1])
    old_parent, new_parent = parent[: len(old_codes)], parent[len(old_codes) :]
    old_order = np.argsort(old_parent, kind="stable")
    new_order = np.argsort(new_parent, kind="stable")
    alternatives = np.asarray(alternatives, np.int32) if alternatives is not None else np.zeros((m, 0), np.int32)
    last = np.full(m, -1, np.int32)
    failed = unique_kernels.nearest_free(
        old_parent[old_order],
        old_codes[old_order, -1],
        new_parent[new_order],
        prefix[new_order, -1],
        alternatives[new_order],
        k,
        last,
    )
    final = np.empty(m, np.int32)
    final[new_order] = last
    for group in np.flatnonzero(failed):  # an item whose T alternatives are all taken: its group in full
        members = np.flatnonzero(new_parent == group)
        taken = set(old_codes[old_parent == group, -1].tolist())
        orders = full_order(members) if full_order is not None else None
        for j, position in enumerate(members.tolist()):
            code = int(prefix[position, -1])
            if code in taken:
                for candidate in orders[j].tolist() if orders is not None else []:
                    if candidate not in taken:
                        code = candidate
                        break
                else:
                    raise StoreError(
                        f"nearest-free uniqueness: every last-level code under prefix "
                        f"{tuple(prefix[position, :-1].tolist())} is taken ({k} codes); use a larger codebook_size "
                        "or uniqueness: suffix"
                    )
            taken.add(code)
            final[position] = code
    out = prefix.copy()
    out[:, -1] = final
    return out


# -- a run -------------------------------------------------------------------------------------


def derive(
    writer: StoreWriter,
    name: str,
    spec: SemanticIdSpec,
    *,
    retrain: bool = False,
    features: dict[str, FeatureVersion] | None = None,
    runner: Runner | None = None,
) -> SemanticIdReport:
    """Bring semantic-ID definition ``name`` up to date with the writer's current vectors:
    train a new version (first run, changed definition or inputs, ``retrain``), or refresh the
    current one with its frozen quantizer. ``runner`` runs the passes (default: this process).
    Publishing is the caller's (``writer.publish``)."""
    from itemlens.store.snapshots import SemanticIdVersion, now_iso

    runner = runner or LocalRunner()
    tasks_before = runner.tasks
    report = SemanticIdReport(name=name)
    t0 = time.perf_counter()
    versions, table_versions = {}, {}
    for feature in spec.weights:
        version = (features or {}).get(feature) or writer.base.feature_version(feature)
        if version is None:
            raise ConfigError(f"semantic IDs {name!r}: the store has no feature {feature!r}")
        versions[feature] = version
        # a feature this job wrote: its latest table version; else the one the base snapshot names
        table_versions[version.table] = (
            None if features and feature in features else writer.base.tables.get(version.table)
        )
    fingerprint = spec.fingerprint({f: v.qualified for f, v in versions.items()})
    entry = writer.base.semantic_ids.get(name)
    existing = (
        None
        if (retrain or entry is None)
        else next((v for v in entry.versions.values() if v.fingerprint == fingerprint), None)
    )
    # the same definition may write its features mapping in another order (the fingerprint sorts
    # keys): a frozen quantizer takes its inputs in the order it was trained on
    stored_order = list(existing.spec["features"]) if existing and isinstance(existing.spec["features"], dict) else []
    weights = {f: spec.weights[f] for f in stored_order} if stored_order else spec.weights
    plan = plan_inputs(writer, weights, versions, table_versions, runner)
    n = len(plan.item_index)
    report.missing_inputs = plan.missing
    report.seconds["plan"] = time.perf_counter() - t0
    params = {**spec.model_dump(mode="json"), "device": _device(spec)}
    nearest_free = spec.uniqueness == "nearest-free"
    width, levels = spec.width, spec.levels
    trained_codes = trained_alternatives = None
    sample = None
    if existing is None:
        if n == 0:
            raise StoreError(f"semantic IDs {name!r}: no item has vectors for all of {', '.join(spec.weights)}")
        label = entry.next_label() if entry else "v1"
        t = time.perf_counter()
        sample = sample_positions(n, spec)
        whole = len(sample) == n  # the sample is every item: its codes as trained
        gpus = 1 if params["device"] == "cuda" else 0
        blob, trained_codes, trained_alternatives, history = runner.call(
            train, spec.method, params, plan.input_dim, plan.rows(sample), whole, nearest_free, gpus=gpus
        )
        report.seconds["train"] = time.perf_counter() - t
        report.trained = True
        version = SemanticIdVersion(
            name=name,
            label=label,
            fingerprint=fingerprint,
            table=f"sid__{name}__{label}",
            quantizer_table=f"sidq__{name}__{label}",
            spec=spec.model_dump(mode="json"),
            inputs=plan.versions,
            input_dim=plan.input_dim,
            width=width,
            created_at=now_iso(),
        )
        old_source = None
    else:
        history = []
        version = existing.model_copy(deep=True)
        if plan.input_dim not in (0, version.input_dim) and n:
            raise StoreError(
                f"{version.qualified} was trained on {version.input_dim}-d inputs; they are "
                f"{plan.input_dim}-d now: retrain"
            )
        # as the published snapshot has them (a run killed after writing left later versions,
        # which this run's overwrite replaces)
        quantizer_data = (
            open_table(writer, version.quantizer_table, writer.base.tables.get(version.quantizer_table))
            .to_table()
            .to_pylist()
        )
        blob = next(r["value"] for r in quantizer_data if r["key"] == "weights")
        old_source = table_source(writer, version.table, writer.base.tables.get(version.table))
    report.version = version.label
    frozen = runner.share((spec.method, params, version.input_dim, blob))

    # what is stored: codes, prefixes and flags (integers), and where each item's active row is
    t = time.perf_counter()
    if old_source is not None:
        stored = old_source.open().to_table(columns=["codes", "prefix", "active"], with_row_address=True)
        old_codes = codes_matrix(stored.column("codes"), width)
        old_prefix = codes_matrix(stored.column("prefix"), levels)
        active = stored.column("active").to_numpy(zero_copy_only=False).copy()
        old_address = stored.column("_rowaddr").to_numpy().astype(np.int64)
        joined_address, joined_item = runner.call(join_item_indexes, old_source, items_source(writer))
        old_item = np.full(len(old_address), -1, np.int64)
        by_address = np.argsort(old_address)
        old_item[by_address[np.searchsorted(old_address[by_address], joined_address)]] = joined_item
        del stored
    else:
        old_codes, old_prefix = np.zeros((0, width), np.int32), np.zeros((0, levels), np.int32)
        active, old_address, old_item = np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # each current item's active stored row (-1: none)
    active_rows = np.flatnonzero(active)
    row_of_item = np.full(n, -1, np.int64)
    if len(active_rows) and n:  # n == 0: no item has every input, and every stored tuple retires
        at = np.searchsorted(plan.item_index, old_item[active_rows])
        hit = (at < n) & (plan.item_index[np.minimum(at, max(n - 1, 0))] == old_item[active_rows])
        row_of_item[at[hit]] = active_rows[hit]
    report.seconds["read_stored"] = time.perf_counter() - t

    # which items keep their tuple, and the quantizer's codes of the others
    t = time.perf_counter()
    same = np.zeros(n, bool)
    new_prefix = np.zeros((n, levels), np.int32)
    alternatives = np.zeros((n, ALTERNATIVES if nearest_free else 0), np.int32)
    if trained_codes is not None:
        new_prefix[:] = trained_codes
        if nearest_free:
            alternatives = trained_alternatives
    else:
        cut = blocks(n)
        stored_address = np.full(n, -1, np.int64)  # each item's active stored row, by address
        has = row_of_item >= 0
        stored_address[has] = old_address[row_of_item[has]]
        args = [(frozen, plan.rows(b), old_source, stored_address[b], nearest_free) for b in cut]
        for b, result in zip(cut, runner.map(assign_block, args)):
            same[b] = result["same"]
            todo = b.start + np.flatnonzero(~result["same"])
            if len(todo):
                new_prefix[todo] = result["prefix"]
                if nearest_free:
                    alternatives = _fill(alternatives, todo, result["alternatives"])
    todo = np.flatnonzero(~same)
    report.seconds["assign"] = time.perf_counter() - t

    kept_rows = row_of_item[same]
    retire = np.zeros(len(active), bool)
    retire[active_rows] = True
    retire[kept_rows] = False
    report.retired = int(retire.sum())
    report.changed = int((row_of_item[todo] >= 0).sum())
    report.unchanged = int(same.sum())
    report.new = len(todo) - report.changed
    report.items = n
    if (
        not report.trained
        and len(todo) == 0
        and report.retired == 0
        and open_table(writer, version.table, None).version == writer.base.tables.get(version.table)
    ):
        report.metrics = dict(version.metrics)  # nothing changed: no new table versions
        writer.stage_semantic_ids(version)  # a definition gone back to: publish makes it current
        return _finish(report, runner, tasks_before, t0)

    t = time.perf_counter()

    def full_order(positions: np.ndarray) -> np.ndarray:
        items = todo[positions]
        return np.concatenate([runner.call(last_level_order, frozen, plan.rows(items[b])) for b in blocks(len(items))])

    codes = make_unique(
        new_prefix[todo],
        spec.uniqueness,
        old_codes,
        alternatives[todo] if nearest_free else None,
        full_order,
        spec.codebook_size,
    )
    report.seconds["unique"] = time.perf_counter() - t

    # metrics, over the active items: each item's quantizer codes
    t = time.perf_counter()
    prefix_of_item = new_prefix  # (int32; the new items' codes, the kept ones' stored)
    prefix_of_item[same] = old_prefix[kept_rows]
    metrics = code_metrics(prefix_of_item, spec.codebook_size)
    picks = (
        np.arange(n)
        if n <= RECONSTRUCTION_ITEMS
        else np.sort(np.random.default_rng(spec.seed).choice(n, RECONSTRUCTION_ITEMS, replace=False))
    )
    if n:
        sums = np.array(
            list(
                runner.map(
                    reconstruction_block,
                    [(frozen, plan.rows(picks[b]), prefix_of_item[picks[b]]) for b in blocks(len(picks))],
                )
            )
        ).sum(axis=0)
        metrics = {**metrics, "reconstruction_error": round(float(sums[0] / max(sums[1], 1e-30)), 6)}
        metrics["reconstruction_items"] = int(len(picks))
    if spec.uniqueness == "suffix":  # suffix values ever handed out (the tokens' vocabulary needs them all)
        metrics["suffix_values"] = int(max(old_codes[:, -1].max(initial=-1), codes[:, -1].max(initial=-1))) + 1
    if report.trained:
        metrics["training_sample"] = int(len(sample))
        if spec.method == "rq-vae":
            metrics["training"] = history[-1] if history else {}
    elif "training_sample" in version.metrics:
        metrics["training_sample"] = version.metrics["training_sample"]
    report.metrics = metrics
    plot = usage_plot(metrics, f"{version.qualified}: code usage per level ({n} items)")
    report.seconds["metrics"] = time.perf_counter() - t

    # the code table: stored rows (changed and gone ones retired now), then the new rows
    t = time.perf_counter()
    uri, opts = writer.location.table_uri(version.table), writer.location.options()
    active_now = active & ~retire
    assigned_at = datetime.now(timezone.utc)
    fragments: list[str] = []
    if old_source is not None and len(active):
        for part in runner.map(
            write_old_rows,
            [
                (uri, opts, old_source, b.start, b.stop, active_now[b], width, levels)
                for b in blocks(len(active), 4 * BLOCK_ITEMS)
            ],
        ):
            fragments += part
    todo_blocks = blocks(len(todo))
    for part in runner.map(
        write_new_rows,
        [
            (uri, opts, plan.rows(todo[b]), codes[b], new_prefix[todo[b]], assigned_at, width, levels)
            for b in todo_blocks
        ],
    ):
        fragments += part
    _commit_overwrite(uri, fragments, codes_schema(width, levels), opts)
    fault_point("semantic-ids:codes")
    import lance

    lance.write_dataset(
        pa.table({"key": ["weights", "plot"], "value": [blob, plot]}, schema=QUANTIZER_SCHEMA),
        writer.location.table_uri(version.quantizer_table),
        mode="overwrite",
        storage_options=opts,
    )
    fault_point("semantic-ids:quantizer")
    report.seconds["write"] = time.perf_counter() - t
    version.count = report.items
    version.retired = int(len(active) + len(todo) - report.items)
    version.metrics = {k: v for k, v in metrics.items() if k != "usage"}
    version.refreshed_at = now_iso()
    writer.stage_semantic_ids(version)
    return _finish(report, runner, tasks_before, t0)


def _fill(alternatives: np.ndarray, rows: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    if values is not None and len(values):
        alternatives[rows, : values.shape[1]] = values
        if values.shape[1] < alternatives.shape[1]:  # fewer codes than ALTERNATIVES: repeat the last
            alternatives[rows, values.shape[1] :] = values[:, -1:]
    return alternatives


def _commit_overwrite(uri: str, fragments: list[str], schema: pa.Schema, options) -> None:
    """Replace the table's rows with ``fragments`` (written by tasks) in one commit."""
    import lance
    from lance.fragment import FragmentMetadata

    from itemlens.store import lance_io

    existing = lance_io.open_dataset(uri, storage_options=options)
    op = lance.LanceOperation.Overwrite(schema, [FragmentMetadata.from_json(f) for f in fragments])
    lance.LanceDataset.commit(
        uri, op, read_version=existing.version if existing is not None else None, storage_options=options
    )


def _finish(report: SemanticIdReport, runner: Runner, tasks_before: int, t0: float) -> SemanticIdReport:
    tasks = runner.tasks - tasks_before
    report.ran_on = runner.where if isinstance(runner, LocalRunner) else f"{tasks} Ray tasks ({runner.where})"
    report.driver_peak_mb = driver_peak_mb()
    report.seconds["total"] = time.perf_counter() - t0
    log.info("%s", report.line())
    return report


def _device(spec: SemanticIdSpec) -> str:
    if spec.device != "auto":
        return spec.device
    if spec.method != "rq-vae":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build(
    uri: str,
    specs: dict[str, SemanticIdSpec | dict[str, Any]],
    *,
    retrain: bool = False,
    lock_wait: float = 0.0,
    storage_options: dict[str, str] | None = None,
    runner: Runner | None = None,
) -> tuple[dict[str, SemanticIdReport], int | None]:
    """Train or refresh semantic-ID definitions from the store's latest snapshot and publish a
    snapshot (``itemlens semantic-ids``). ``runner``: where the passes run (default: this
    process; the command line passes Ray's when Ray runs). Returns the reports and the new
    snapshot id (None when nothing changed)."""
    from itemlens.store.writer import publish_derived

    return publish_derived(
        uri,
        specs,
        SemanticIdSpec,
        lambda w, n, s: derive(w, n, s, retrain=retrain, runner=runner),
        what="semantic IDs",
        section="semantic_ids",
        command="itemlens semantic-ids",
        lock_wait=lock_wait,
        storage_options=storage_options,
    )
