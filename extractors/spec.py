"""Feature specs: how one named feature is made, and the fingerprint of that recipe.

A spec is part of the YAML configuration (``features: {name: spec}``) and is stored with
every feature version, so that a store can rebuild the encoder that wrote it (``lens.search``
with raw text does). The fingerprint hashes everything that changes the output vectors,
the weights' identity included; resources and precision are execution details and are
left out (a GPU bf16 run and a CPU fp32 run of the same spec agree to ~1e-3 cosine).
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    # extra="forbid" turns a typo in the YAML into an error that names the field.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class TextInput(_Strict):
    """A text built from catalog columns: ``template: "{title}. {description}"``."""

    template: str = Field(description="Python format string over catalog columns")

    @field_validator("template")
    @classmethod
    def _parse(cls, value: str) -> str:
        columns = template_columns(value)
        if not columns:
            raise ValueError(f"template {value!r} names no column; write e.g. '{{title}}. {{description}}'")
        return value

    @property
    def kind(self) -> str:
        return "text"

    @property
    def columns(self) -> list[str]:
        return template_columns(self.template)


class ImageInput(_Strict):
    """An image column: each cell a path or URI, or a list of them."""

    image: str = Field(description="catalog column with an image path/URI or a list of them")

    @property
    def kind(self) -> str:
        return "image"

    @property
    def columns(self) -> list[str]:
        return [self.image]


FeatureInput = Union[TextInput, ImageInput]


class Resources(_Strict):
    """Ray resources of one encoder's actor pool (requests: on a machine without GPUs the
    job says so and runs on CPU)."""

    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor (default 1)")
    concurrency: int = Field(1, ge=1, description="actors in the pool")
    batch_size: int = Field(64, ge=1, description="items per encoder call")


class IndexSpec(_Strict):
    """A vector index the ingest builds once the feature has ``min_rows`` vectors, and keeps
    current after that."""

    kind: Literal["IVF_PQ", "IVF_HNSW_SQ"] = "IVF_PQ"
    min_rows: int = Field(100_000, ge=1, description="build once the table has this many vectors")
    num_partitions: int | None = Field(None, ge=1)
    num_sub_vectors: int | None = Field(None, ge=1)


class FeatureSpec(_Strict):
    """How one feature is made. See README, "Configuration"."""

    encoder: str = Field(description="registered encoder name, e.g. open-clip, sentence-transformers")
    model: str = Field(description="model name, hub id or local folder")
    pretrained: str | None = Field(None, description="open-clip pretrained tag")
    checkpoint: str | None = Field(None, description="local weights file (open-clip)")
    model_config_file: str | None = Field(
        None, description="open-clip architecture JSON to register (its file stem is the model name)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = False
    input: FeatureInput
    normalize: bool = True
    dtype: Literal["float32", "float16"] = "float32"
    pooling: Literal["mean", "per_image"] = Field(
        "mean", description="several images per item: mean of their vectors, or kept per image")
    max_seq_length: int | None = Field(None, ge=1, description="sentence-transformers truncation")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16/fp16 autocast on GPU, fp32 on CPU")
    resources: Resources = Resources()
    index: IndexSpec | None = Field(None, description="a vector index to build and keep current")
    note: str | None = Field(None, description="free text shown by `itemlens show` (e.g. a stand-in label)")

    @field_validator("input", mode="before")
    @classmethod
    def _input_kind(cls, value: Any) -> Any:
        if isinstance(value, (TextInput, ImageInput)):
            return value
        kinds = {"template": TextInput, "image": ImageInput}
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in kinds:
            key = next(iter(value))
            try:
                return kinds[key](**value)
            except ValidationError as exc:
                raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        raise ValueError(
            "input must be {template: '...'} (a text built from columns, e.g. '{title}. {description}') "
            "or {image: COLUMN} (a column of image paths/URIs)")

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        from itemlens.extractors.registry import encoder_names

        names = encoder_names()
        if value not in names:
            raise ValueError(f"unknown encoder {value!r}; registered encoders: {', '.join(names)}")
        return value

    # Fields that change the stored output, besides the model itself: which model and
    # weights (name, tag, revision, checkpoint, config file) enter the fingerprint through
    # the encoder's weights identity, where a local file counts by its content, not by
    # where it lies (moving it does not make a new version). The rest is execution detail.
    OUTPUT_FIELDS: ClassVar[tuple[str, ...]] = (
        "encoder", "trust_remote_code", "input", "normalize", "dtype", "pooling", "max_seq_length",
    )

    def output_recipe(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(self.OUTPUT_FIELDS))


def fingerprint(spec: FeatureSpec, weights_identity: str, processing_version: str) -> str:
    """A stable hash of everything that changes a feature's output."""
    payload = {
        "recipe": spec.output_recipe(),
        "weights": weights_identity,
        "processing": processing_version,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def template_columns(template: str) -> list[str]:
    """Column names a template refers to, in order, without duplicates."""
    columns: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError(f"template {template!r}: use column names in braces, e.g. {{title}}")
        if "." in field or "[" in field:
            raise ValueError(f"template {template!r}: {{{field}}} reaches into a column; use plain column "
                             "names (a list column is joined with '; ')")
        if field not in columns:
            columns.append(field)
    return columns
