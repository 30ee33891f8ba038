"""``itemlens ingest``: catalog -> Ray encoders -> versioned store, one snapshot per run.

The flow (see DESIGN.md, "Flow of one ingestion or refresh"):

1. validate the configuration, the catalog's columns and the weights (before any work);
2. take the store's writer lock, start or join Ray; merge what a dead job left staged;
3. register the catalog's ids (refusing duplicates; new ids get item indexes) and remove the
   items a full catalog no longer has (or a delta deletes) from the configured feature versions;
4. per feature (captions first): run read -> prepare -> encode -> write as one streaming Ray
   Data pipeline into the staging table (committed as it goes), and merge the staging table
   into the feature and errors tables;
5. derive the configured semantic IDs (train once, then refresh with the frozen quantizer:
   store/semantic_ids.py) and graphs (recompute only the affected neighbour lists:
   store/graphs.py) from the merged vectors;
6. publish one snapshot naming every table version written (nothing changed: no snapshot).

Items whose input hash matches the stored one (media: whose cheap media key matches, or else
whose bytes hash the same) are dropped in step 4's prepare stage, so a second run over an
unchanged catalog encodes nothing and publishes nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from itemlens.errors import CatalogError, ConfigError, ItemlensError
from itemlens.extractors import build_encoder
from itemlens.store import graphs, semantic_ids
from itemlens.store.layout import staging_schema, value_column
from itemlens.store.location import StoreLocation
from itemlens.store.writer import MergeStats, RemovalPolicy, StoreWriter, check_store_format
from itemlens.workflows.catalog import OP_COLUMN, CatalogSource
from itemlens.workflows.config import IngestConfig, load_config
from itemlens.workflows.runtime import RayRuntime, start_ray
from itemlens.workflows import stages

log = logging.getLogger("itemlens")

# The CPU a write task reserves (it is mostly I/O). How often staging commits (what a killed
# job keeps) is the config's `staging:` section.
WRITE_TASK_CPUS = 0.25


@dataclass
class FeatureReport:
    name: str
    version: str = ""
    fingerprint: str = ""
    encoder: str = ""
    device: str = ""
    actors: int = 0             # encoder actors that ran
    encoded: int = 0            # items given a value by this run
    errors: int = 0             # items given an errors row by this run
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)   # the 10 most frequent reasons
    unchanged: int = 0          # items whose input hash matched the store: not encoded
    recovered: int = 0          # items merged from a previous, interrupted run's staging
    inserted: int = 0           # items that had no value for this version before
    updated: int = 0            # items whose value was replaced
    seconds: float = 0.0
    merge_seconds: float = 0.0  # merging staging into the feature and errors tables (part of seconds)
    fragments: int = 0          # staging data files written (what the driver received: their metadata)
    operators: list[dict[str, Any]] = field(default_factory=list)
    plan: str = ""              # Ray Data's optimized physical plan (not stored in the snapshot)
    stats: str = ""             # Ray Data's execution stats (not stored in the snapshot)

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("plan")
        doc.pop("stats")
        return doc


@dataclass
class IngestReport:
    catalog: str
    store: str
    snapshot: int | None = None        # published snapshot (None: nothing changed)
    run_id: str = ""                   # this job's id (staging rows and encode logs carry it)
    items_seen: int = 0
    new_items: int = 0
    removed_items: int = 0             # items the store held that the catalog no longer has (or a delta deletes)
    delta: bool = False                # the catalog was a delta of upserts and deletions
    digest: str = ""
    ray: str = ""
    features: dict[str, FeatureReport] = field(default_factory=dict)
    semantic_ids: dict[str, semantic_ids.SemanticIdReport] = field(default_factory=dict)
    graphs: dict[str, graphs.GraphReport] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "summary": self.headline(),
            "run_id": self.run_id, "catalog": self.catalog, "delta": self.delta, "items_seen": self.items_seen,
            "new_items": self.new_items, "removed_items": self.removed_items,
            "features": {n: f.to_doc() for n, f in self.features.items()},
            "semantic_ids": {n: r.to_doc() for n, r in self.semantic_ids.items()},
            "graphs": {n: r.to_doc() for n, r in self.graphs.items()},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "ray": self.ray,
        }

    def headline(self) -> str:
        encoded = sum(f.encoded for f in self.features.values())
        errors = sum(f.errors for f in self.features.values())
        what = "delta" if self.delta else "ingest"
        return (f"{what} of {self.items_seen} items ({self.new_items} new, {self.removed_items} removed): "
                f"{encoded} values encoded, {errors} errors")

    def summary(self) -> str:
        lines = [self.headline()]
        if self.snapshot is None:
            lines.append(f"nothing changed: no new snapshot published in {self.store}")
        else:
            lines.append(f"published snapshot {self.snapshot} in {self.store}")
        lines.append(f"{'feature':<14}{'version':<9}{'device':<8}{'encoded':>9}{'errors':>8}"
                     f"{'recovered':>11}{'unchanged':>11}{'seconds':>9}")
        for f in self.features.values():
            lines.append(f"{f.name:<14}{f.version:<9}{f.device:<8}{f.encoded:>9}{f.errors:>8}"
                         f"{f.recovered:>11}{f.unchanged:>11}{f.seconds:>9.1f}")
            for stage, count in sorted(f.errors_by_stage.items()):
                lines.append(f"{'':<14}errors at {stage}: {count}")
        for r in self.semantic_ids.values():
            lines.append(f"semantic IDs {r.line()}")
        for g in self.graphs.values():
            lines.append(f"graph {g.line()}")
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return "\n".join(lines)


def ingest(catalog: str | os.PathLike, config: str | os.PathLike | dict | IngestConfig, store: str | os.PathLike,
           *, address: str | None = None, lock_wait: float = 0.0, retry_errors: bool = False,
           progress: bool | None = None, log_to_driver: bool = False, delta: bool = False,
           encode_log: str | os.PathLike | None = None, allow_removals: int | str | None = None) -> IngestReport:
    """Ingest ``catalog`` into ``store`` as ``config`` says; returns the job report.

    A full catalog (the default) is the whole truth: items the store holds that it lacks are
    removed from the new snapshot. ``delta=True``: ``catalog`` holds upserts and deletions
    (column ``_op``, see workflows/catalog.py) and the items it does not mention stay.
    ``encode_log``: a folder (shared by the workers) where encoder actors log the ids they
    encode, an audit of the work actually done. ``allow_removals``: how many items a full
    catalog may remove from the store (a number, or ``"all"``); by default a catalog that
    would remove more than ``catalog.max_removed_share`` of them (or all) is refused, and an
    empty catalog always is.

    The catalog is pinned at the start (its files' content stamps): if it changes before the
    job publishes, the job stops with :class:`CatalogChangedError` and publishes nothing."""
    if encode_log is not None:
        encode_log = os.path.abspath(os.fspath(encode_log))
        os.makedirs(encode_log, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = load_config(config)
    location = StoreLocation.parse(store, cfg.storage_options)    # refuses credentials before anything is logged
    source = CatalogSource.open(catalog, cfg.catalog, delta=delta)
    removals = RemovalPolicy(cfg.catalog.max_removed_share, _allowed_removals(allow_removals))
    encoders = {}
    for name, spec in cfg.feature_order():     # captions before the features that read them
        encoder = build_encoder(spec)
        encoder.check_weights()           # missing weights: an error now, not after an hour of decoding
        encoder.fingerprint()
        encoders[name] = encoder
    report = IngestReport(catalog=source.uri, store=location.uri, delta=delta)
    timings["validate"] = time.perf_counter() - t_start
    log.info("catalog %s (%s) -> store %s", source.uri, source.format, report.store)

    command = f"itemlens ingest {source.uri}"
    with StoreWriter.open(location.uri, storage_options=cfg.storage_options, lock_wait=lock_wait,
                          command=command) as writer:
        report.run_id = writer.run_id
        pin = source.pin()          # what the catalog is now; checked after each step and before publishing
        runtime = start_ray(address, log_to_driver=log_to_driver, progress=progress)
        report.ray = runtime.describe()
        timings["ray_start"] = runtime.seconds
        log.info("%s", report.ray)
        if runtime.nodes > 1 and writer.location.is_local:
            log.warning("store %s is a local folder and the Ray cluster has %d nodes: every node must mount it "
                        "at the same path (workers write staging files there); an object-storage store "
                        "(s3://, gs://, az://) needs no shared disk", writer.location.uri, runtime.nodes)

        versions = {name: writer.resolve_version(name, e.fingerprint(), e.spec.model_dump(mode="json"),
                                                 dtype=e.spec.dtype, pooling=e.spec.pooling, kind=e.output_kind,
                                                 encoder=e.describe())
                    for name, e in encoders.items()}
        # Work a dead job left staged is merged first, so that this catalog's deletions apply to it too.
        for dropped in writer.discard_other_staging(list(versions.values())):
            log.info("dropped %s, staged by an interrupted run for a spec no longer configured", dropped)
        recovered = {name: writer.recover_staging(version) for name, version in versions.items()}
        t = time.perf_counter()
        deletions = _catalog_read(source, lambda: _check_catalog(source, cfg))
        registration = _run(lambda: _register_items(source, writer, None if delta else list(versions.values()),
                                                    removals))
        pin.check(source, "after registering its ids")
        if delta:
            registration.removed = writer.remove_items(list(versions.values()), deletions)
        report.items_seen, report.new_items, report.digest = registration.seen, registration.new, registration.digest
        report.removed_items = registration.removed
        timings["register_items"] = time.perf_counter() - t
        log.info("%s has %d items (%d new to the store); %d removed from the new snapshot",
                 "delta" if delta else "catalog", registration.seen, registration.new, registration.removed)
        for name, encoder in encoders.items():
            if delta and registration.seen == 0:
                break                       # a delta of deletions only: nothing to encode
            t = time.perf_counter()
            feature = _run(lambda: _ingest_feature(encoder, versions[name], cfg, source, writer, runtime,
                                                   registration.seen, retry_errors, versions, encode_log,
                                                   recovered[name]))
            feature.unchanged = max(registration.seen - feature.encoded - feature.errors - feature.recovered, 0)
            feature.seconds = time.perf_counter() - t
            pin.check(source, f"after feature {name!r}")
            report.features[name] = feature
            timings[f"feature:{name}"] = feature.seconds
            log.info("%s@%s: %d encoded, %d errors, %d unchanged in %.1f s", name, feature.version,
                     feature.encoded, feature.errors, feature.unchanged, feature.seconds)

        for name, sid_spec in cfg.semantic_ids.items():
            t = time.perf_counter()
            report.semantic_ids[name] = _run(lambda: semantic_ids.derive(writer, name, sid_spec, features=versions))
            timings[f"semantic_ids:{name}"] = time.perf_counter() - t
        for name, graph_spec in cfg.graphs.items():
            t = time.perf_counter()
            report.graphs[name] = _run(lambda: graphs.derive(writer, name, graph_spec, features=versions))
            timings[f"graph:{name}"] = time.perf_counter() - t

        t = time.perf_counter()
        pin.check(source, "before publishing")
        # a delta describes changes, not the catalog: the snapshot keeps the catalog it had
        catalog_doc = ({**writer.base.catalog, "delta": {"uri": source.uri, "upserts": registration.seen,
                                                         "deletions": len(deletions)}}
                       if delta else {"uri": source.uri, "format": source.format, "digest": registration.digest,
                                      "items": registration.seen})
        doc = writer.publish(
            catalog=catalog_doc,
            report=report.to_doc())
        report.snapshot = doc.snapshot_id if doc is not None else None
        timings["publish"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
    report.timings = timings
    return report


# -- dry run ---------------------------------------------------------------------------------------

@dataclass
class FeaturePlan:
    name: str
    version: str
    new: int = 0                # items this version has no value or error for (with --retry-errors:
                                #   or only an error)
    changed: int = 0            # items whose input hash differs from the stored one
    dependent: int = 0          # items whose input is a caption this run writes again
    unchanged: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)   # a few ids per reason

    @property
    def to_encode(self) -> int:
        return self.new + self.changed + self.dependent


@dataclass
class PlanReport:
    catalog: str
    store: str
    delta: bool = False
    items_seen: int = 0
    new_items: int = 0
    removed_items: int = 0
    refused: str = ""           # why the real run would be refused ("": it would run)
    features: dict[str, FeaturePlan] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"dry run: {'delta' if self.delta else 'catalog'} of {self.items_seen} items "
                 f"({self.new_items} new to the store); {self.removed_items} would leave the new snapshot"]
        if self.refused:
            lines.append(f"the run would be REFUSED: {self.refused}")
        lines += [
                  f"{'feature':<14}{'version':<9}{'encode':>8}{'new':>7}{'changed':>9}{'dependent':>11}"
                  f"{'unchanged':>11}"]
        for f in self.features.values():
            lines.append(f"{f.name:<14}{f.version:<9}{f.to_encode:>8}{f.new:>7}{f.changed:>9}{f.dependent:>11}"
                         f"{f.unchanged:>11}")
            for reason, ids in f.examples.items():
                lines.append(f"{'':<14}{reason}: e.g. {', '.join(ids)}")
        lines.append("nothing was encoded or written (no encoder was started)")
        return "\n".join(lines)

    def to_doc(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def plan(catalog: str | os.PathLike, config: str | os.PathLike | dict | IngestConfig, store: str | os.PathLike,
         *, address: str | None = None, lock_wait: float = 0.0, retry_errors: bool = False,
         delta: bool = False, examples: int = 5, allow_removals: int | str | None = None) -> PlanReport:
    """What ``ingest`` would encode, per feature and reason (new, changed, dependent), and what
    it would remove, without starting an encoder or writing anything a reader can see."""
    import ray

    cfg = load_config(config)
    location = StoreLocation.parse(store, cfg.storage_options)
    source = CatalogSource.open(catalog, cfg.catalog, delta=delta)
    removals = RemovalPolicy(cfg.catalog.max_removed_share, _allowed_removals(allow_removals))
    encoders = {name: build_encoder(spec) for name, spec in cfg.feature_order()}
    report = PlanReport(catalog=source.uri, store=location.uri, delta=delta)
    check_store_format(location)   # a dry run creates nothing, a store included
    with StoreWriter.open(location.uri, storage_options=cfg.storage_options, lock_wait=lock_wait,
                          command=f"itemlens ingest --dry-run {source.uri}") as writer:
        start_ray(address, progress=False)
        checked = _catalog_read(source, lambda: _check_catalog(source, cfg))
        deletions = checked if delta else None      # None: a full catalog (what it lacks is removed)
        versions = {name: writer.resolve_version(name, e.fingerprint(), e.spec.model_dump(mode="json"),
                                                 dtype=e.spec.dtype, pooling=e.spec.pooling, kind=e.output_kind)
                    for name, e in encoders.items()}
        fragments = _catalog_read(source, lambda: _write_catalog_ids(source, writer))
        preview = writer.preview_catalog_ids(fragments, source.id_column, list(versions.values()),
                                             deletions=deletions, removals=removals)
        report.items_seen, report.new_items, report.removed_items = preview.seen, preview.new, preview.removed
        report.refused = preview.refused
        planned: dict[str, set[str]] = {}
        for name, encoder in encoders.items():
            if delta and preview.seen == 0:
                break
            spec, version = encoder.spec, versions[name]
            ref = getattr(spec.input, "feature", None)
            ds = source.read([source.id_column] + spec.input.columns).map_batches(
                stages.plan_inputs, batch_format="pyarrow", num_cpus=cfg.decode.num_cpus, fn_kwargs={
                    "spec_json": spec.model_dump_json(), "id_column": source.id_column, "base": source.base,
                    "stored": writer.stored_hashes(version, retry_errors=retry_errors),
                    "limits": cfg.decode.limits(spec.input.kind),
                    "source": writer.stored_values(versions[ref]) if ref else None,
                    "dependents": ray.put(planned[ref]) if ref else None})
            feature = FeaturePlan(name=name, version=version.label)
            ids: set[str] = set()
            for batch in _run(lambda: list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))):
                for item_id, reason in zip(batch.column("item_id").to_pylist(), batch.column("reason").to_pylist()):
                    setattr(feature, reason, getattr(feature, reason) + 1)
                    ids.add(item_id)
                    shown = feature.examples.setdefault(reason, [])
                    if len(shown) < examples:
                        shown.append(item_id)
            feature.unchanged = preview.seen - feature.to_encode
            planned[name] = ids
            report.features[name] = feature
    return report


# -- steps -----------------------------------------------------------------------------------------

def _check_catalog(source: CatalogSource, cfg: IngestConfig) -> list[str]:
    """Refuse what cannot be ingested, before any write; returns a delta's deletions."""
    deletions = source.deleted_ids()
    schema = source.read().schema()       # a delta's: its upserts', without the _op column
    if schema is not None and not source.delta and OP_COLUMN in schema.names:
        raise CatalogError(f"catalog {source.uri} has an {OP_COLUMN!r} column: is it a delta? Pass --delta "
                           "(a full catalog's rows are all items)")
    if schema is not None and not (source.delta and source.read().count() == 0):   # deletions only: no columns
        source.check_columns(list(schema.names), {n: s.input.columns for n, s in cfg.features.items()})
    clash = sorted(set(deletions) & set(_run(lambda: _ids(source))))[:5] if deletions else []
    if clash:
        raise CatalogError(f"delta {source.uri} both upserts and deletes {', '.join(map(repr, clash))}: "
                           "which one wins is ambiguous, so nothing was changed")
    return deletions


def _ids(source: CatalogSource) -> list[str]:
    return [i for b in source.read([source.id_column]).iter_batches(batch_size=None, batch_format="pyarrow")
            for i in stages.item_ids(b, source.id_column)]


def _register_items(source: CatalogSource, writer: StoreWriter, remove_missing, removals: RemovalPolicy):
    return writer.register_catalog_ids(_catalog_read(source, lambda: _write_catalog_ids(source, writer)),
                                       source.id_column, remove_missing=remove_missing, removals=removals)


def _allowed_removals(value: int | str | None) -> int | None:
    """``--allow-removals``: a count, ``all``, or None (the configured share decides)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        return RemovalPolicy.ALL
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--allow-removals takes a number of items or 'all', not {value!r}") from None
    if count < 0:
        raise ConfigError(f"--allow-removals takes a number of items (>= 0) or 'all', not {value!r}")
    return count


def _catalog_read(source: CatalogSource, step):
    """Run a step that reads the catalog; a file Ray's readers cannot parse (a malformed JSON
    line, a truncated Parquet file) is one CatalogError naming it, before anything is written."""
    try:
        return _run(step)
    except ItemlensError:
        raise
    except Exception as exc:
        if "ray::Read" not in str(exc) and not _is_arrow_error(exc):
            raise
        detail = source.diagnose() or _root_message(exc)
        raise CatalogError(f"cannot read catalog {source.uri} as {source.format}: {detail}") from None


def _is_arrow_error(exc: BaseException) -> bool:
    import pyarrow as pa

    return isinstance(exc, (pa.ArrowInvalid, pa.ArrowIOError))


def _root_message(exc: BaseException) -> str:
    """The innermost cause's message, one line (Ray wraps the reader's error several times)."""
    seen, current = set(), exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None) or current.__cause__
        if inner is None or inner is current:
            break
        current = inner
    lines = [line.strip() for line in str(current).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Traceback", "File ", "ray::", "\x1b"))]
    return (useful or lines or [type(current).__name__])[0][:500]


def _write_catalog_ids(source: CatalogSource, writer: StoreWriter) -> list[str]:
    """The catalog's ids and row hashes as Lance fragments in the store's scratch folder."""
    ds = source.read()
    # Item indexes of new ids follow the catalog's order.
    ds.context.execution_options.preserve_order = True
    work_uri = writer.reset_work_ids()
    ds = (ds.map_batches(stages.catalog_ids, fn_kwargs={"id_column": source.id_column}, batch_format="pyarrow")
          .map_batches(stages.write_fragments, fn_kwargs={"uri": work_uri,
                                                          "storage_options": writer.location.options()},
                       batch_format="pyarrow"))
    return [f for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for f in batch.column("fragment").to_pylist()]


def _own_stage() -> dict:
    # Ray Data fuses a task stage into the next actor stage when their resource requests are
    # equal, as they are on a CPU-only run; a ray_remote_args_fn stops that fusion, so that
    # decoding stays in its own CPU tasks and the encoder actors only encode. (Ray 2.60 marks
    # ray_remote_args_fn deprecated for 2.64; the pin in constraints.txt keeps it.)
    return {}


@dataclass(frozen=True)
class _Placement:
    device: str             # "cuda" or "cpu"
    num_gpus: float         # per actor, as requested (0 where the cluster has none)
    concurrency: int        # actors, as requested unless the cluster is too small
    cpu_threads: int        # torch threads of an actor running on CPU


def _place(name: str, spec, runtime: RayRuntime, cfg: IngestConfig) -> _Placement:
    """Where a feature's actors run, and how many. GPU counts are requests: without GPUs, run
    on CPU. Actors must leave CPUs to the decode tasks, or the pipeline would wait forever."""
    num_gpus = spec.resources.num_gpus
    if num_gpus > 0 and runtime.gpus == 0:
        log.warning("no GPU in the Ray cluster: feature %r runs on CPU (its spec asks for num_gpus=%g)",
                    name, num_gpus)
        num_gpus = 0.0
    elif num_gpus > runtime.gpus:
        raise ConfigError(f"feature {name!r} asks for num_gpus={num_gpus:g} per actor; the cluster has "
                          f"{runtime.gpus:g} GPUs in all")
    missing = {r: n for r, n in spec.resources.resources.items() if runtime.resources.get(r, 0) < n}
    if missing:
        raise ConfigError(
            f"feature {name!r} asks for resources {missing} per actor; no node of the cluster has them "
            f"(custom resources of its nodes: {', '.join(sorted(_custom(runtime.resources))) or 'none'})")
    actor_cpus = spec.resources.num_cpus or 1.0
    concurrency = spec.resources.concurrency
    fits = int((runtime.cpus - cfg.decode.num_cpus) // actor_cpus)   # write tasks can wait their turn
    if fits < 1:
        raise ConfigError(
            f"feature {name!r}: one encoder actor ({actor_cpus:g} CPU) and the decode tasks ({cfg.decode.num_cpus:g} "
            f"CPU) need more than the cluster's {runtime.cpus:g} CPUs; lower resources.num_cpus or decode.num_cpus")
    if concurrency > fits:
        log.warning("feature %r: %d actors of %g CPU would leave no CPU for decoding on this cluster (%g CPUs): "
                    "running %d", name, concurrency, actor_cpus, runtime.cpus, fits)
        concurrency = fits
    # On CPU an actor reserves num_cpus (default 1) in Ray's accounting, so that decode tasks
    # still get scheduled, but runs torch on its share of the node's cores: encoding is the
    # heavy part, and 2 threads encode text ~1.7x faster than 1 on the 2-CPU test machine.
    share = spec.resources.num_cpus or runtime.node_cpus / concurrency
    return _Placement("cuda" if num_gpus > 0 else "cpu", num_gpus, concurrency, max(1, round(share)))


def _custom(resources: dict) -> list[str]:
    """Resources a node was started with (``--resources``), not Ray's own."""
    return [r for r in resources if r not in ("CPU", "GPU", "memory", "object_store_memory")
            and not r.startswith(("node:", "accelerator_type:"))]


def _actor_placement(resources) -> dict:
    """Custom resources an encoder's actors need (Ray Data already spreads its actors over the
    nodes that have them: its default scheduling strategy is SPREAD)."""
    return {"resources": dict(resources.resources)} if resources.resources else {}


def _pipeline(spec, version, placement: _Placement, stored, cfg: IngestConfig, source: CatalogSource,
              writer: StoreWriter, runtime: RayRuntime, items: int, captions=None, encode_log: str | None = None):
    """read -> prepare (CPU tasks) -> encode (actor pool) -> write fragments (CPU tasks).

    ``captions``: where a feature with ``input: {feature: NAME}`` reads its texts (the caption
    feature's table, merged earlier in this run)."""
    import ray.data

    spec_json = spec.model_dump_json()
    cpu_args = {"num_cpus": cfg.decode.num_cpus, "ray_remote_args_fn": _own_stage, "batch_format": "pyarrow"}
    kind = spec.input.kind
    ds = source.read([source.id_column] + spec.input.columns)
    common = {"spec_json": spec_json, "id_column": source.id_column, "stored": stored}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
        if kind == "text":
            ds = ds.map_batches(stages.prepare_texts, batch_size=cfg.decode.text_batch_size,
                                fn_kwargs={**common, "source": captions}, **cpu_args)
        else:
            # A catalog file is read as a few large blocks (its rows are small), and a block is
            # one decode task: cut them (streaming, no shuffle) into about four per CPU so that
            # decoding runs in parallel, but no smaller, since each task has a fixed cost.
            rows_per_block = max(cfg.decode.batch_size, math.ceil(items / (4 * max(runtime.cpus, 1))))
            ds = ds.repartition(target_num_rows_per_block=rows_per_block)
            # with an encode log, the CPU tasks also log the media files they read
            read_log = os.path.join(encode_log, f"{version.name}.{writer.run_id}") if encode_log else None
            media = {**common, "base": source.base, "read_log": read_log}
            prepare = {"image": stages.prepare_images, "video": stages.prepare_videos,
                       "audio": stages.prepare_audio}[kind]
            ds = ds.map_batches(prepare, batch_size=cfg.decode.batch_size,
                                fn_kwargs={**media, "limits": cfg.decode.limits(kind)}, **cpu_args)
    ds = ds.map_batches(
        stages.EncodeBatches,
        fn_constructor_kwargs={"spec_json": spec_json, "fingerprint": version.fingerprint,
                               "device": placement.device, "cpu_threads": placement.cpu_threads,
                               "run_id": writer.run_id, "feature": version.name, "encode_log": encode_log},
        compute=ray.data.ActorPoolStrategy(size=placement.concurrency),
        num_gpus=placement.num_gpus, num_cpus=spec.resources.num_cpus or 1,
        batch_size=spec.resources.batch_size, batch_format="pyarrow", **_actor_placement(spec.resources))
    return ds.map_batches(
        stages.write_fragments, batch_size=cfg.staging.fragment_rows, batch_format="pyarrow", num_cpus=WRITE_TASK_CPUS,
        fn_kwargs={"uri": writer.staging_uri(version), "storage_options": writer.location.options(),
                   "value_column": value_column(spec.pooling, version.kind)})


def _stage(ds, spec, version, writer: StoreWriter, report: FeatureReport, staging) -> None:
    """Run the pipeline; commit the fragments it writes to staging as they come."""
    pending: list[str] = []
    # A vector table's schema needs the dimension, known from the first fragment written.
    schema = staging_schema(spec.dtype, None, spec.pooling, "caption") if version.kind == "caption" else None
    last_commit = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        written = batch.to_pydict()
        pending += written["fragment"]
        report.fragments += len(written["fragment"])
        report.errors += sum(written["errors"])
        report.encoded += sum(written["rows"]) - sum(written["errors"])
        if schema is None and written["dim"]:
            schema = staging_schema(spec.dtype, written["dim"][0], spec.pooling)
        if len(pending) >= staging.commit_fragments or time.monotonic() - last_commit > staging.commit_seconds:
            writer.commit_staged(version, pending, schema)
            pending, last_commit = [], time.monotonic()
            log.info("%s: %d staged", version.name, report.encoded + report.errors)
    if pending:
        writer.commit_staged(version, pending, schema)


def _ingest_feature(encoder, version, cfg: IngestConfig, source: CatalogSource, writer: StoreWriter,
                    runtime: RayRuntime, items: int, retry_errors: bool, versions: dict,
                    encode_log: str | None, recovered: MergeStats | None) -> FeatureReport:
    spec, name = encoder.spec, version.name
    report = FeatureReport(name=name, version=version.label, fingerprint=version.fingerprint,
                           encoder=spec.encoder)
    if recovered is not None:
        report.recovered = recovered.inserted + recovered.updated + recovered.failed
        log.info("%s: merged %d items staged by an interrupted run", name, report.recovered)

    placement = _place(name, spec, runtime, cfg)
    report.device, report.actors = placement.device, placement.concurrency
    stored = writer.stored_hashes(version, retry_errors=retry_errors)
    ref = getattr(spec.input, "feature", None)
    captions = writer.stored_values(versions[ref]) if ref else None
    ds = _pipeline(spec, version, placement, stored, cfg, source, writer, runtime, items, captions, encode_log)
    log.info("%s@%s: %s %s on %s", name, version.label, spec.encoder, spec.model, placement.device)
    _stage(ds, spec, version, writer, report, cfg.staging)

    report.plan = _physical_plan(ds)
    report.stats = ds.stats()
    report.operators = _operators(report.plan, ds)
    t = time.perf_counter()
    merged: MergeStats = writer.merge_staged(version)
    report.merge_seconds = time.perf_counter() - t
    report.inserted, report.updated = merged.inserted, merged.updated
    report.errors_by_stage, report.errors_by_reason = merged.by_stage, merged.by_reason
    _build_index_when_due(spec, version, writer)
    return report


def _build_index_when_due(spec, version, writer: StoreWriter) -> None:
    """The spec's vector index, once the table is big enough (later merges keep it current)."""
    if spec.index is None or version.index is not None or spec.pooling != "mean":
        return
    rows = writer.count_values(version)
    if rows >= spec.index.min_rows:
        params = spec.index.model_dump(exclude={"kind", "min_rows"}, exclude_none=True)
        info = writer.build_index(version, spec.index.kind, params)
        log.info("%s: built a %s index on %d vectors, recall@10 %.3f", version.qualified, info["kind"], rows,
                 info["recall_at_10"])


# -- helpers -----------------------------------------------------------------------------------------

def _run(step):
    """Run a step that executes Ray work; an itemlens error raised inside a Ray worker is
    re-raised here as itself, without the wall of Ray frames around it."""
    try:
        return step()
    except ItemlensError:
        raise
    except Exception as exc:
        cause = _itemlens_cause(exc)
        if cause is not None:
            log.debug("error raised in a Ray worker", exc_info=exc)
            raise cause from None
        raise


_REMOTE_ERROR = re.compile(r"itemlens\.errors\.(\w+): (.+)")


def _itemlens_cause(exc: BaseException) -> ItemlensError | None:
    """The itemlens error behind a Ray error. Ray keeps a remote exception's type and message
    only as text (in the traceback it carries), so the error is rebuilt from that text."""
    from itemlens import errors

    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ItemlensError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    for name, message in _REMOTE_ERROR.findall(str(exc)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, ItemlensError) and cls is not errors.UnknownItemsError:
            return cls(message.strip())
    return None


def _physical_plan(ds) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        ds.explain()
    text = buffer.getvalue()
    marker = "-------- Physical Plan (Optimized) --------"
    return text[text.index(marker) + len(marker):].strip() if marker in text else text


_OPERATOR = re.compile(r"(\w+)\[(.+)\]")


def _operators(plan: str, ds) -> list[dict[str, Any]]:
    """The pipeline's physical operators, in execution order, with their kind and wall time."""
    walls: dict[str, float] = {}
    with contextlib.suppress(Exception):
        def walk(summary):
            for op in summary.operators_stats:
                wall = op.wall_time.get("sum") if isinstance(op.wall_time, dict) else getattr(op.wall_time, "sum", None)
                walls[op.operator_name] = float(wall or 0.0)
            for parent in summary.parents:
                walk(parent)
        walk(ds.get_stats_summary())
    ops = []
    for line in reversed(plan.splitlines()):
        match = _OPERATOR.search(line)
        if not match or match.group(1) == "InputDataBuffer":
            continue
        kind = {"TaskPoolMapOperator": "tasks", "ActorPoolMapOperator": "actors"}.get(match.group(1), match.group(1))
        ops.append({"operator": match.group(2), "kind": kind,
                    "wall_s": round(sum(walls.get(part, 0.0) for part in match.group(2).split("->")), 3)})
    return ops


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("itemlens: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
