"""The reports of a job: what ``itemlens ingest`` did (per feature: encoded, errors by stage and
reason, recovered, unchanged, time) and what a dry run would do (per feature and reason). The
job report is printed, stored in the snapshot document (``itemlens show`` prints it as "last
job") and written as JSON with ``--report``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from itemlens.store import graphs, semantic_ids


@dataclass
class FeatureReport:
    name: str
    version: str = ""
    fingerprint: str = ""
    encoder: str = ""
    device: str = ""
    actors: int = 0  # encoder actors that ran
    encoded: int = 0  # items given a value by this run
    errors: int = 0  # items whose input failed in this run (an errors row)
    absent: int = 0  # items without such an input (a song has no photo): recorded, not a failure
    errors_by_stage: dict[str, int] = field(default_factory=dict)  # failures per stage (input, read, ...)
    errors_by_reason: dict[str, int] = field(default_factory=dict)  # the 10 most frequent reasons
    unchanged: int = 0  # items whose input hash matched the store: not encoded
    recovered: int = 0  # items merged from a previous, interrupted run's staging
    inserted: int = 0  # items that had no value for this version before
    updated: int = 0  # items whose value was replaced
    seconds: float = 0.0
    merge_seconds: float = 0.0  # merging staging into the feature and errors tables (part of seconds)
    fragments: int = 0  # staging data files written (what the driver received: their metadata)
    output: str = "vector"  # "vector" or "caption"
    vision_tokens: int = 0  # captions: the vision tokens their prompts held
    generated_tokens: int = 0  # captions: the tokens the model generated
    operators: list[dict[str, Any]] = field(default_factory=list)
    plan: str = ""  # Ray Data's optimized physical plan (not stored in the snapshot)
    stats: str = ""  # Ray Data's execution stats (not stored in the snapshot)

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("plan")
        doc.pop("stats")
        if self.output == "caption":
            doc.update(
                captions_per_second=round(self.captions_per_second, 3),
                generated_tokens_per_second=round(self.generated_tokens_per_second, 3),
            )
        return doc

    # a caption feature's throughput over its whole time (reading, preparing, generating, merging)
    @property
    def captions_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def generated_tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def caption_line(self) -> str:
        return (
            f"{self.encoded} captions, {self.generated_tokens} generated tokens ({self.vision_tokens} vision "
            f"tokens read) in {self.seconds:.1f} s: {self.captions_per_second:.2f} captions/s, "
            f"{self.generated_tokens_per_second:.1f} generated tokens/s"
        )


@dataclass
class IngestReport:
    catalog: str
    store: str
    snapshot: int | None = None  # published snapshot (None: nothing changed)
    run_id: str = ""  # this job's id (staging rows and encode logs carry it)
    items_seen: int = 0
    new_items: int = 0
    removed_items: int = 0  # items the store held that the catalog no longer has (or a delta deletes)
    delta: bool = False  # the catalog was a delta of upserts and deletions
    digest: str = ""
    ray: str = ""
    features: dict[str, FeatureReport] = field(default_factory=dict)
    semantic_ids: dict[str, semantic_ids.SemanticIdReport] = field(default_factory=dict)
    graphs: dict[str, graphs.GraphReport] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "summary": self.headline(),
            "run_id": self.run_id,
            "catalog": self.catalog,
            "delta": self.delta,
            "items_seen": self.items_seen,
            "new_items": self.new_items,
            "removed_items": self.removed_items,
            "features": {n: f.to_doc() for n, f in self.features.items()},
            "semantic_ids": {n: r.to_doc() for n, r in self.semantic_ids.items()},
            "graphs": {n: r.to_doc() for n, r in self.graphs.items()},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "ray": self.ray,
        }

    def headline(self) -> str:
        encoded = sum(f.encoded for f in self.features.values())
        errors = sum(f.errors for f in self.features.values())
        absent = sum(f.absent for f in self.features.values())
        what = "delta" if self.delta else "ingest"
        return (
            f"{what} of {self.items_seen} items ({self.new_items} new, {self.removed_items} removed): "
            f"{encoded} values encoded, {errors} errors" + (f", {absent} inputs absent" if absent else "")
        )

    def summary(self) -> str:
        lines = [self.headline()]
        if self.snapshot is None:
            lines.append(f"nothing changed: no new snapshot published in {self.store}")
        else:
            lines.append(f"published snapshot {self.snapshot} in {self.store}")
        lines.append(
            f"{'feature':<14}{'version':<9}{'device':<8}{'encoded':>9}{'errors':>8}{'absent':>8}"
            f"{'recovered':>11}{'unchanged':>11}{'seconds':>9}"
        )
        for f in self.features.values():
            lines.append(
                f"{f.name:<14}{f.version:<9}{f.device:<8}{f.encoded:>9}{f.errors:>8}{f.absent:>8}"
                f"{f.recovered:>11}{f.unchanged:>11}{f.seconds:>9.1f}"
            )
            for stage, count in sorted(f.errors_by_stage.items()):
                lines.append(f"{'':<14}errors at {stage}: {count}")
            if f.output == "caption":
                lines.append(f"{'':<14}{f.caption_line()}")
        captions = [f for f in self.features.values() if f.output == "caption"]
        if len(captions) > 1:
            total = FeatureReport(
                name="captions",
                output="caption",
                encoded=sum(f.encoded for f in captions),
                seconds=sum(f.seconds for f in captions),
                vision_tokens=sum(f.vision_tokens for f in captions),
                generated_tokens=sum(f.generated_tokens for f in captions),
            )
            lines.append(f"captions in all: {total.caption_line()}")
        for r in self.semantic_ids.values():
            lines.append(f"semantic IDs {r.line()}")
        for g in self.graphs.values():
            lines.append(f"graph {g.line()}")
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return "\n".join(lines)


@dataclass
class FeaturePlan:
    name: str
    version: str
    new: int = 0  # items this version has no value or error for (with --retry-errors:
    #   or only an error)
    changed: int = 0  # items whose input hash differs from the stored one
    dependent: int = 0  # items whose input is a caption this run writes again
    unchanged: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few ids per reason

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
    refused: str = ""  # why the real run would be refused ("": it would run)
    features: dict[str, FeaturePlan] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"dry run: {'delta' if self.delta else 'catalog'} of {self.items_seen} items "
            f"({self.new_items} new to the store); {self.removed_items} would leave the new snapshot"
        ]
        if self.refused:
            lines.append(f"the run would be REFUSED: {self.refused}")
        lines += [
            f"{'feature':<14}{'version':<9}{'encode':>8}{'new':>7}{'changed':>9}{'dependent':>11}{'unchanged':>11}"
        ]
        for f in self.features.values():
            lines.append(
                f"{f.name:<14}{f.version:<9}{f.to_encode:>8}{f.new:>7}{f.changed:>9}{f.dependent:>11}{f.unchanged:>11}"
            )
            for reason, ids in f.examples.items():
                lines.append(f"{'':<14}{reason}: e.g. {', '.join(ids)}")
        lines.append("nothing was encoded or written (no encoder was started)")
        return "\n".join(lines)

    def to_doc(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}
