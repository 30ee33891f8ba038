"""One feature's work in an ingest: read -> prepare (CPU tasks) -> encode (actor pool) -> write
staging files (CPU tasks), committed to staging as it goes, then merged into the feature and
errors tables. :class:`FeatureJob` holds what the steps share (the job's configuration, catalog,
store writer and Ray runtime) so that they take no long parameter lists.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itemlens.errors import ConfigError
from itemlens.store.layout import ABSENT, staging_schema, value_column
from itemlens.store.writer import MergeStats, StoreWriter
from itemlens.workflows import stages
from itemlens.workflows.catalog import CatalogSource
from itemlens.workflows.config import IngestConfig
from itemlens.workflows.encoder_hosts import model_identity
from itemlens.workflows.reports import FeatureReport
from itemlens.workflows.runtime import RayRuntime

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors import Encoder
    from itemlens.store.snapshots import FeatureVersion

log = logging.getLogger("itemlens")

# The CPU a write task reserves (it is mostly I/O). How often staging commits (what a killed
# job keeps) is the config's `staging:` section.
WRITE_TASK_CPUS = 0.25


@dataclass
class JobContext:
    """What every feature of one ingest shares."""

    cfg: IngestConfig
    source: CatalogSource
    writer: StoreWriter
    runtime: RayRuntime
    items: int  # catalog rows (sizes the decode tasks)
    retry_errors: bool = False
    encode_log: str | None = None  # the audit folder (--encode-log)


@dataclass
class FeatureJob:
    """One feature of an ingest: its encoder, its version and, for a feature whose input is
    another feature's captions, that feature's version."""

    context: JobContext
    encoder: Encoder
    version: FeatureVersion
    captions_from: FeatureVersion | None = None
    recovered: MergeStats | None = None  # what a dead run had staged, merged at the start

    def run(self) -> FeatureReport:
        spec, version, writer = self.encoder.spec, self.version, self.context.writer
        report = FeatureReport(
            name=version.name,
            version=version.label,
            fingerprint=version.fingerprint,
            encoder=spec.encoder,
            output=self.encoder.output_kind,
        )
        if self.recovered is not None:
            report.recovered = self.recovered.inserted + self.recovered.updated + self.recovered.failed
            log.info("%s: merged %d items staged by an interrupted run", version.name, report.recovered)
        placement = place(version.name, spec, self.context.runtime, self.context.cfg)
        report.device, report.actors = placement.device, placement.concurrency
        ds = self.pipeline(placement)
        log.info("%s@%s: %s %s on %s", version.name, version.label, spec.encoder, spec.model, placement.device)
        self.stage(ds, report)
        report.plan = _physical_plan(ds)
        report.stats = ds.stats()
        report.operators = _operators(report.plan, ds)
        t = time.perf_counter()
        merged: MergeStats = writer.merge_staged(version)
        report.merge_seconds = time.perf_counter() - t
        report.inserted, report.updated = merged.inserted, merged.updated
        # an absent input is recorded (the next run knows it saw the item) but is not a failure
        report.absent = merged.by_stage.pop(ABSENT, 0)
        report.errors = max(report.errors - report.absent, 0)
        report.errors_by_stage, report.errors_by_reason = merged.by_stage, merged.by_reason
        self.build_index_when_due()
        return report

    def pipeline(self, placement: Placement):
        """read -> prepare (CPU tasks) -> encode (actor pool) -> write fragments (CPU tasks)."""
        import ray.data

        ctx, spec, version = self.context, self.encoder.spec, self.version
        cfg, source, writer = ctx.cfg, ctx.source, ctx.writer
        spec_json = spec.model_dump_json()
        stored = writer.stored_hashes(version, retry_errors=ctx.retry_errors)
        cpu_args = {"num_cpus": cfg.decode.num_cpus, "ray_remote_args_fn": _own_stage, "batch_format": "pyarrow"}
        kind = spec.input.kind
        ds = source.read([source.id_column] + spec.input.columns)
        common = {"spec_json": spec_json, "id_column": source.id_column, "stored": stored}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
            if kind == "text":
                # ``input: {feature: NAME}``: the texts are that caption feature's, merged earlier in this run
                captions = writer.stored_values(self.captions_from) if self.captions_from else None
                ds = ds.map_batches(
                    stages.prepare_texts,
                    batch_size=cfg.decode.text_batch_size,
                    fn_kwargs={**common, "source": captions},
                    **cpu_args,
                )
            else:
                # A catalog file is read as a few large blocks (its rows are small), and a block is
                # one decode task: cut them (streaming, no shuffle) into about four per CPU so that
                # decoding runs in parallel, but no smaller, since each task has a fixed cost.
                rows_per_block = max(cfg.decode.batch_size, math.ceil(ctx.items / (4 * max(ctx.runtime.cpus, 1))))
                ds = ds.repartition(target_num_rows_per_block=rows_per_block)
                # with an encode log, the CPU tasks also log the media files they read
                read_log = os.path.join(ctx.encode_log, f"{version.name}.{writer.run_id}") if ctx.encode_log else None
                media = {**common, "base": source.base, "read_log": read_log}
                prepare = {
                    "image": stages.prepare_images,
                    "video": stages.prepare_videos,
                    "audio": stages.prepare_audio,
                }[kind]
                if self.encoder.output_kind == "caption":  # the captioner's own processor, per item
                    prepare = {"image": stages.prepare_caption_images, "video": stages.prepare_caption_videos}[kind]
                ds = ds.map_batches(
                    prepare,
                    batch_size=cfg.decode.batch_size,
                    fn_kwargs={**media, "limits": cfg.decode.limits(kind)},
                    **cpu_args,
                )
        ds = ds.map_batches(
            stages.EncodeBatches,
            fn_constructor_kwargs={
                "spec_json": spec_json,
                "fingerprint": version.fingerprint,
                "device": placement.device,
                "cpu_threads": placement.cpu_threads,
                "run_id": writer.run_id,
                "feature": version.name,
                "encode_log": ctx.encode_log,
                # for encoder hosts (workflows/encoder_hosts.py, where the nodes ask for them):
                # computed here, where the weights' identity is known, not again in every actor
                "model_identity": model_identity(self.encoder),
            },
            compute=ray.data.ActorPoolStrategy(size=placement.concurrency),
            num_gpus=placement.num_gpus,
            num_cpus=spec.resources.num_cpus or 1,
            batch_size=spec.resources.batch_size,
            batch_format="pyarrow",
            **_actor_placement(spec.resources),
        )
        return ds.map_batches(
            stages.write_fragments,
            batch_size=cfg.staging.fragment_rows,
            batch_format="pyarrow",
            num_cpus=WRITE_TASK_CPUS,
            fn_kwargs={
                "uri": writer.staging_uri(version),
                "storage_options": writer.location.options(),
                "value_column": value_column(spec.pooling, version.kind),
            },
        )

    def stage(self, ds, report: FeatureReport) -> None:
        """Run the pipeline; commit the fragments it writes to staging as they come."""
        spec, version, writer, staging = self.encoder.spec, self.version, self.context.writer, self.context.cfg.staging
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
            report.vision_tokens += sum(written["vision_tokens"])
            report.generated_tokens += sum(written["generated_tokens"])
            if schema is None and written["dim"]:
                schema = staging_schema(spec.dtype, written["dim"][0], spec.pooling)
            if len(pending) >= staging.commit_fragments or time.monotonic() - last_commit > staging.commit_seconds:
                writer.commit_staged(version, pending, schema)
                pending, last_commit = [], time.monotonic()
                log.info("%s: %d staged", version.name, report.encoded + report.errors)
        if pending:
            writer.commit_staged(version, pending, schema)

    def build_index_when_due(self) -> None:
        """The spec's vector index, once the table is big enough (later merges keep it current)."""
        spec, version, writer = self.encoder.spec, self.version, self.context.writer
        if spec.index is None or version.index is not None or spec.pooling != "mean":
            return
        rows = writer.count_values(version)
        if rows >= spec.index.min_rows:
            params = spec.index.model_dump(exclude={"kind", "min_rows"}, exclude_none=True)
            info = writer.build_index(version, spec.index.kind, params)
            log.info(
                "%s: built a %s index on %d vectors, recall@10 %.3f",
                version.qualified,
                info["kind"],
                rows,
                info["recall_at_10"],
            )


def _own_stage() -> dict:
    # Ray Data fuses a task stage into the next actor stage when their resource requests are
    # equal, as they are on a CPU-only run; a ray_remote_args_fn stops that fusion, so that
    # decoding stays in its own CPU tasks and the encoder actors only encode. (Ray 2.60 marks
    # ray_remote_args_fn deprecated for 2.64; the pin in constraints.txt keeps it.)
    return {}


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    num_gpus: float  # per actor, as requested (0 where the cluster has none)
    concurrency: int  # actors, as requested unless the cluster is too small
    cpu_threads: int  # torch threads of an actor running on CPU


def place(name: str, spec, runtime: RayRuntime, cfg: IngestConfig) -> Placement:
    """Where a feature's actors run, and how many. GPU counts are requests: without GPUs, run
    on CPU. Actors must leave CPUs to the decode tasks, or the pipeline would wait forever."""
    num_gpus = spec.resources.num_gpus
    if num_gpus > 0 and runtime.gpus == 0:
        log.warning("no GPU in the Ray cluster: feature %r runs on CPU (its spec asks for num_gpus=%g)", name, num_gpus)
        num_gpus = 0.0
    elif num_gpus > runtime.resources.get("GPU", runtime.gpus):
        # an actor runs on one node: a request no node can meet would leave the pool waiting forever
        raise ConfigError(
            f"feature {name!r} asks for num_gpus={num_gpus:g} per actor; no node of the cluster has that many "
            f"(the largest has {runtime.resources.get('GPU', runtime.gpus):g} of its {runtime.gpus:g} GPUs)"
        )
    missing = {r: n for r, n in spec.resources.resources.items() if runtime.resources.get(r, 0) < n}
    if missing:
        raise ConfigError(
            f"feature {name!r} asks for resources {missing} per actor; no node of the cluster has them "
            f"(custom resources of its nodes: {', '.join(sorted(_custom(runtime.resources))) or 'none'})"
        )
    actor_cpus = spec.resources.num_cpus or 1.0
    if actor_cpus > runtime.node_cpus:
        raise ConfigError(
            f"feature {name!r} asks for num_cpus={actor_cpus:g} per actor; no node of the cluster has that many "
            f"(the largest has {runtime.node_cpus:g} of its {runtime.cpus:g} CPUs)"
        )
    concurrency = spec.resources.concurrency
    fits = int((runtime.cpus - cfg.decode.num_cpus) // actor_cpus)  # write tasks can wait their turn
    if fits < 1:
        raise ConfigError(
            f"feature {name!r}: one encoder actor ({actor_cpus:g} CPU) and the decode tasks ({cfg.decode.num_cpus:g} "
            f"CPU) need more than the cluster's {runtime.cpus:g} CPUs; lower resources.num_cpus or decode.num_cpus"
        )
    if concurrency > fits:
        log.warning(
            "feature %r: %d actors of %g CPU would leave no CPU for decoding on this cluster (%g CPUs): running %d",
            name,
            concurrency,
            actor_cpus,
            runtime.cpus,
            fits,
        )
        concurrency = fits
    # On CPU an actor reserves num_cpus (default 1) in Ray's accounting, so that decode tasks
    # still get scheduled, but runs torch on its share of the node's cores: encoding is the
    # heavy part, and 2 threads encode text ~1.7x faster than 1 on the 2-CPU test machine.
    share = spec.resources.num_cpus or runtime.node_cpus / concurrency
    return Placement("cuda" if num_gpus > 0 else "cpu", num_gpus, concurrency, max(1, round(share)))


def _custom(resources: dict) -> list[str]:
    """Resources a node was started with (``--resources``), not Ray's own."""
    return [
        r
        for r in resources
        if r not in ("CPU", "GPU", "memory", "object_store_memory") and not r.startswith(("node:", "accelerator_type:"))
    ]


def _actor_placement(resources) -> dict:
    """Custom resources an encoder's actors need (Ray Data already spreads its actors over the
    nodes that have them: its default scheduling strategy is SPREAD)."""
    return {"resources": dict(resources.resources)} if resources.resources else {}


def _physical_plan(ds) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        ds.explain()
    text = buffer.getvalue()
    marker = "-------- Physical Plan (Optimized) --------"
    return text[text.index(marker) + len(marker) :].strip() if marker in text else text


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
        ops.append(
            {
                "operator": match.group(2),
                "kind": kind,
                "wall_s": round(sum(walls.get(part, 0.0) for part in match.group(2).split("->")), 3),
            }
        )
    return ops
