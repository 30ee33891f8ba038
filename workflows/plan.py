"""``itemlens ingest --dry-run``: what an ingest would encode, per feature and reason (new,
changed, dependent), and what it would remove, without starting an encoder or writing anything
a reader can see. The same decision as the pipeline's (``stages.InputCheck``) on the same
inputs: media are read and hashed where their media key changed, as a refresh does.
"""

from __future__ import annotations

import os

from itemlens.store.location import StoreLocation
from itemlens.store.writer import RemovalPolicy, StoreWriter
from itemlens.workflows import stages
from itemlens.workflows.catalog import CatalogSource
from itemlens.workflows.config import IngestConfig, load_config
from itemlens.workflows.ingest import (
    allowed_removals,
    catalog_read,
    check_catalog,
    checked_encoders,
    write_catalog_ids,
)
from itemlens.workflows.reports import FeaturePlan, PlanReport
from itemlens.workflows.runtime import run_ray_step, start_ray


def plan(
    catalog: str | os.PathLike,
    config: str | os.PathLike | dict | IngestConfig,
    store: str | os.PathLike,
    *,
    address: str | None = None,
    lock_wait: float = 0.0,
    retry_errors: bool = False,
    delta: bool = False,
    examples: int = 5,
    allow_removals: int | str | None = None,
) -> PlanReport:
    """What ``ingest`` would encode, per feature and reason (new, changed, dependent), and what
    it would remove, without starting an encoder or writing anything a reader can see."""
    import ray

    cfg = load_config(config)
    location = StoreLocation.parse(store, cfg.storage_options)
    source = CatalogSource.open(catalog, cfg.catalog, delta=delta)
    removals = RemovalPolicy(cfg.catalog.max_removed_share, allowed_removals(allow_removals))
    encoders = checked_encoders(cfg)
    report = PlanReport(catalog=source.uri, store=location.uri, delta=delta)
    with StoreWriter.open(
        location.uri,
        storage_options=cfg.storage_options,
        lock_wait=lock_wait,
        command=f"itemlens ingest --dry-run {source.uri}",
        create=False,  # a dry run creates nothing, a store included
    ) as writer:
        start_ray(address, progress=False)
        checked = catalog_read(source, lambda: check_catalog(source, cfg))
        deletions = checked if delta else None  # None: a full catalog (what it lacks is removed)
        versions = {
            name: writer.resolve_version(
                name,
                e.fingerprint(),
                e.spec.model_dump(mode="json"),
                dtype=e.spec.dtype,
                pooling=e.spec.pooling,
                kind=e.output_kind,
            )
            for name, e in encoders.items()
        }
        fragments = catalog_read(source, lambda: write_catalog_ids(source, writer))
        preview = writer.preview_catalog_ids(
            fragments, source.id_column, list(versions.values()), deletions=deletions, removals=removals
        )
        report.items_seen, report.new_items, report.removed_items = preview.seen, preview.new, preview.removed
        report.refused = preview.refused
        planned: dict[str, set[str]] = {}
        for name, encoder in encoders.items():
            if delta and preview.seen == 0:
                break
            spec, version = encoder.spec, versions[name]
            ref = getattr(spec.input, "feature", None)
            ds = source.read([source.id_column] + spec.input.columns).map_batches(
                stages.plan_inputs,
                batch_format="pyarrow",
                num_cpus=cfg.decode.num_cpus,
                fn_kwargs={
                    "spec_json": spec.model_dump_json(),
                    "id_column": source.id_column,
                    "base": source.base,
                    # work a dead job staged is merged by the next run before it encodes
                    "stored": writer.stored_hashes(version, retry_errors=retry_errors, with_staging=True),
                    "limits": cfg.decode.limits(spec.input.kind),
                    "source": writer.stored_values(versions[ref]) if ref else None,
                    "dependents": ray.put(planned[ref]) if ref else None,
                },
            )
            feature = FeaturePlan(name=name, version=version.label)
            ids: set[str] = set()
            for batch in run_ray_step(lambda ds=ds: list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))):
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
