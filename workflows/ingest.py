"""``itemlens ingest``: catalog -> Ray encoders -> versioned store, one snapshot per run.

The flow (see DESIGN.md, "Flow of one ingestion or refresh"):

1. validate the configuration and the weights (before any work);
2. take the store's writer lock, start or join Ray; check the catalog's columns (and a delta's
   operations); merge what a dead job left staged;
3. register the catalog's ids (refusing duplicates; new ids get item indexes) and remove the
   items a full catalog no longer has (or a delta deletes) from the configured feature versions;
4. per feature (captions first): run read -> prepare -> encode -> write as one streaming Ray
   Data pipeline into the staging table (committed as it goes), and merge the staging table
   into the feature and errors tables;
5. derive the configured semantic IDs (train once, then refresh with the frozen quantizer:
   store/semantic_ids/) and graphs (recompute only the affected neighbour lists:
   store/graphs/) from the merged vectors;
6. publish one snapshot naming every table version written (nothing changed: no snapshot).

Items whose input hash matches the stored one (media: whose cheap media key matches, or else
whose bytes hash the same) are dropped in step 4's prepare stage, so a second run over an
unchanged catalog encodes nothing and publishes nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import time

from itemlens.errors import CatalogError, ConfigError, ItemlensError
from itemlens.extractors import build_encoder
from itemlens.store import graphs, semantic_ids
from itemlens.store.location import StoreLocation
from itemlens.store.writer import RemovalPolicy, StoreWriter
from itemlens.workflows import stages
from itemlens.workflows.catalog import OP_COLUMN, CatalogSource
from itemlens.workflows.config import IngestConfig, load_config
from itemlens.workflows.derive import RayRunner
from itemlens.workflows.feature_job import FeatureJob, JobContext
from itemlens.workflows.reports import IngestReport
from itemlens.workflows.runtime import run_ray_step, start_ray

log = logging.getLogger("itemlens")


def ingest(
    catalog: str | os.PathLike,
    config: str | os.PathLike | dict | IngestConfig,
    store: str | os.PathLike,
    *,
    address: str | None = None,
    lock_wait: float = 0.0,
    retry_errors: bool = False,
    progress: bool | None = None,
    log_to_driver: bool = False,
    delta: bool = False,
    encode_log: str | os.PathLike | None = None,
    allow_removals: int | str | None = None,
) -> IngestReport:
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
    location = StoreLocation.parse(store, cfg.storage_options)  # refuses credentials before anything is logged
    source = CatalogSource.open(catalog, cfg.catalog, delta=delta)
    removals = RemovalPolicy(cfg.catalog.max_removed_share, allowed_removals(allow_removals))
    encoders = checked_encoders(cfg)
    report = IngestReport(catalog=source.uri, store=location.uri, delta=delta)
    timings["validate"] = time.perf_counter() - t_start
    log.info("catalog %s (%s) -> store %s", source.uri, source.format, report.store)

    command = f"itemlens ingest {source.uri}"
    with StoreWriter.open(
        location.uri, storage_options=cfg.storage_options, lock_wait=lock_wait, command=command
    ) as writer:
        report.run_id = writer.run_id
        pin = source.pin()  # what the catalog is now; checked after each step and before publishing
        runtime = start_ray(address, log_to_driver=log_to_driver, progress=progress)
        report.ray = runtime.describe()
        timings["ray_start"] = runtime.seconds
        log.info("%s", report.ray)
        if runtime.nodes > 1 and writer.location.is_local:
            log.warning(
                "store %s is a local folder and the Ray cluster has %d nodes: every node must mount it "
                "at the same path (workers write staging files there); an object-storage store "
                "(s3://, gs://, az://) needs no shared disk",
                writer.location.uri,
                runtime.nodes,
            )

        # the catalog's columns, an _op column in a full catalog, a delta's clashes: refused
        # before any item is registered or staged work merged (reading the catalog needs Ray)
        deletions = catalog_read(source, lambda: check_catalog(source, cfg))
        versions = {
            name: writer.resolve_version(
                name,
                e.fingerprint(),
                e.spec.model_dump(mode="json"),
                dtype=e.spec.dtype,
                pooling=e.spec.pooling,
                kind=e.output_kind,
                encoder=e.describe(),
            )
            for name, e in encoders.items()
        }
        # Work a dead job left staged is merged first, so that this catalog's deletions apply to it too.
        for dropped in writer.discard_other_staging(list(versions.values())):
            log.info("dropped %s, staged by an interrupted run for a spec no longer configured", dropped)
        recovered = {name: writer.recover_staging(version) for name, version in versions.items()}
        t = time.perf_counter()
        registration = run_ray_step(
            lambda: register_items(source, writer, None if delta else list(versions.values()), removals)
        )
        pin.check(source, "after registering its ids")
        if delta:
            registration.removed = writer.remove_items(list(versions.values()), deletions)
        report.items_seen, report.new_items, report.digest = registration.seen, registration.new, registration.digest
        report.removed_items = registration.removed
        timings["register_items"] = time.perf_counter() - t
        context = JobContext(
            cfg, source, writer, runtime, items=registration.seen, retry_errors=retry_errors, encode_log=encode_log
        )
        log.info(
            "%s has %d items (%d new to the store); %d removed from the new snapshot",
            "delta" if delta else "catalog",
            registration.seen,
            registration.new,
            registration.removed,
        )
        for name, encoder in encoders.items():
            if delta and registration.seen == 0:
                break  # a delta of deletions only: nothing to encode
            t = time.perf_counter()
            ref = getattr(encoder.spec.input, "feature", None)
            job = FeatureJob(
                context,
                encoder,
                versions[name],
                captions_from=versions[ref] if ref else None,
                recovered=recovered[name],
            )
            feature = run_ray_step(job.run)
            feature.unchanged = max(
                registration.seen - feature.encoded - feature.errors - feature.absent - feature.recovered, 0
            )
            feature.seconds = time.perf_counter() - t
            pin.check(source, f"after feature {name!r}")
            report.features[name] = feature
            timings[f"feature:{name}"] = feature.seconds
            log.info(
                "%s@%s: %d encoded, %d errors, %d absent, %d unchanged in %.1f s",
                name,
                feature.version,
                feature.encoded,
                feature.errors,
                feature.absent,
                feature.unchanged,
                feature.seconds,
            )

        # derived artifacts by blocks in Ray tasks (workflows/derive.py): the driver holds no vectors
        derive_runner = RayRunner() if cfg.semantic_ids or cfg.graphs else None
        for name, sid_spec in cfg.semantic_ids.items():
            t = time.perf_counter()
            report.semantic_ids[name] = run_ray_step(
                functools.partial(semantic_ids.derive, writer, name, sid_spec, features=versions, runner=derive_runner)
            )
            timings[f"semantic_ids:{name}"] = time.perf_counter() - t
        for name, graph_spec in cfg.graphs.items():
            t = time.perf_counter()
            report.graphs[name] = run_ray_step(
                functools.partial(graphs.derive, writer, name, graph_spec, features=versions, runner=derive_runner)
            )
            timings[f"graph:{name}"] = time.perf_counter() - t

        t = time.perf_counter()
        pin.check(source, "before publishing")
        # a delta describes changes, not the catalog: the snapshot keeps the catalog it had
        catalog_doc = (
            {
                **writer.base.catalog,
                "delta": {
                    "uri": source.uri,
                    "format": source.format,  # browse reads it as the ingest did
                    "upserts": registration.seen,
                    "deletions": len(deletions),
                },
            }
            if delta
            else {
                "uri": source.uri,
                "format": source.format,
                "id_column": source.id_column,  # browse reads the catalog's rows by it
                "digest": registration.digest,
                "items": registration.seen,
            }
        )
        doc = writer.publish(catalog=catalog_doc, report=report.to_doc())
        report.snapshot = doc.snapshot_id if doc is not None else None
        timings["publish"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
    report.timings = timings
    return report


# -- catalog steps -----------------------------------------------------------------------------------------


def checked_encoders(cfg: IngestConfig) -> dict:
    """The configured features' encoders, captions before the features that read them, each
    with its weights found and its fingerprint taken: a missing model is an error now, not
    after an hour of decoding (the dry run refuses what the run refuses)."""
    encoders = {}
    for name, spec in cfg.feature_order():
        encoder = build_encoder(spec)
        encoder.check_weights()
        encoder.fingerprint()
        encoders[name] = encoder
    return encoders


def check_catalog(source: CatalogSource, cfg: IngestConfig) -> list[str]:
    """Refuse what cannot be ingested, before any write; returns a delta's deletions."""
    deletions = source.deleted_ids()
    needed = {n: s.input.columns for n, s in cfg.features.items()}
    names = source.column_names()  # a delta's: its upserts', without the _op column
    if not source.delta and OP_COLUMN in names:
        raise CatalogError(
            f"catalog {source.uri} has an {OP_COLUMN!r} column: is it a delta? Pass --delta "
            "(a full catalog's rows are all items)"
        )
    if names and not (source.delta and source.read().count() == 0):  # deletions only: no columns
        source.check_columns(names, needed)
    clash = sorted(set(deletions) & set(run_ray_step(lambda: _ids(source))))[:5] if deletions else []
    if clash:
        raise CatalogError(
            f"delta {source.uri} both upserts and deletes {', '.join(map(repr, clash))}: "
            "which one wins is ambiguous, so nothing was changed"
        )
    return deletions


def _ids(source: CatalogSource) -> list[str]:
    return [
        i
        for b in source.read([source.id_column]).iter_batches(batch_size=None, batch_format="pyarrow")
        for i in stages.item_ids(b, source.id_column)
    ]


def register_items(source: CatalogSource, writer: StoreWriter, remove_missing, removals: RemovalPolicy):
    return writer.register_catalog_ids(
        catalog_read(source, lambda: write_catalog_ids(source, writer)),
        source.id_column,
        remove_missing=remove_missing,
        removals=removals,
    )


def allowed_removals(value: int | str | None) -> int | None:
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


def catalog_read(source: CatalogSource, step):
    """Run a step that reads the catalog; a file Ray's readers cannot parse (a malformed JSON
    line, a truncated Parquet file) is one CatalogError naming it, before anything is written."""
    try:
        return run_ray_step(step)
    except ItemlensError:
        raise
    except Exception as exc:
        if isinstance(exc, ValueError) and ("No input files found" in str(exc) or "No files found" in str(exc)):
            # a folder (on object storage: not listed beforehand) without a file of the format
            raise CatalogError(f"catalog {source.uri} holds no {source.format} files") from None
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


def write_catalog_ids(source: CatalogSource, writer: StoreWriter) -> list[str]:
    """The catalog's ids and row hashes as Lance fragments in the store's scratch folder."""
    ds = source.read()
    # Item indexes of new ids follow the catalog's order.
    ds.context.execution_options.preserve_order = True
    work_uri = writer.reset_work_ids()
    ds = ds.map_batches(
        stages.catalog_ids, fn_kwargs={"id_column": source.id_column}, batch_format="pyarrow"
    ).map_batches(
        stages.write_fragments,
        fn_kwargs={"uri": work_uri, "storage_options": writer.location.options()},
        batch_format="pyarrow",
    )
    return [
        f
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow")
        for f in batch.column("fragment").to_pylist()
    ]
