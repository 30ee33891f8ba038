"""The ingestion configuration: one YAML file, validated before any work starts.

.. code-block:: yaml

    catalog:
      id_column: item_id          # default item_id
      format: auto                # auto (by extension) | parquet | jsonl | csv
    decode:                       # the CPU stage that reads, decodes and preprocesses inputs
      batch_size: 32              # items per decode task call (images)
      text_batch_size: 1024       # items per text-preparation call (sorted by length within)
      num_cpus: 1
      max_image_pixels: 64000000  # larger images are decompression-bomb errors
      max_image_bytes: 67108864
      max_media_bytes: 2147483648 # largest video or audio file
    staging:                      # what a killed job keeps: encoded rows are committed as they come
      commit_seconds: 30
      commit_fragments: 16
      fragment_rows: 1024
    features:
      text:                       # a feature name: letters, digits, _
        encoder: sentence-transformers
        model: sentence-transformers/all-MiniLM-L6-v2
        input: {template: "{title}. {bullet_points}"}
        resources: {num_gpus: 0.25, concurrency: 1, batch_size: 128}
      image:
        encoder: open-clip
        model: ViT-B-32
        pretrained: laion2b_s34b_b79k
        input: {image: images}    # a path/URI per item, or a list of them
        pooling: mean             # or per_image
    storage_options:              # optional: for an s3:// gs:// az:// store (Lance's option names)
      aws_region: us-east-1
      aws_secret_access_key: ${MY_SECRET}   # ${VAR}: read from the environment
    semantic_ids:                 # optional: derived after the features, in the same snapshot
      sid:
        features: {image: 0.1, text: 0.9}   # or a list of feature names (weight 1)
        method: rq-kmeans         # or rq-vae
        levels: 3
        codebook_size: 256
        uniqueness: suffix        # or nearest-free

Errors name the field, the bad value and what is allowed. Relative paths in a spec
(``checkpoint``, ``model_config_file``, a ``model`` folder) resolve against the YAML file's
folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from itemlens.config_types import NAME, StrictModel
from itemlens.errors import ConfigError
from itemlens.extractors.media import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_TIMEOUT,
    MediaLimits,
)
from itemlens.extractors.registry import encoder_class
from itemlens.extractors.spec import FeatureRefInput, FeatureSpec
from itemlens.store.graphs import GraphSpec
from itemlens.store.semantic_ids import SemanticIdSpec

#: ``${NAME}`` in a storage option: the environment variable NAME
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: default limit on a video or audio file's size (read whole: its hash is the input hash)
DEFAULT_MAX_MEDIA_BYTES = 2 * 1024**3


_Strict = StrictModel


class CatalogConfig(_Strict):
    id_column: str = Field("item_id", description="the column of item ids (strings or integers)")
    format: Literal["auto", "parquet", "jsonl", "csv"] = Field(
        "auto",
        description="auto: by the file's extension (in a local folder, its files'); "
        "a folder on object storage needs it named",
    )
    max_removed_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "a full catalog that would remove more than this share of the items a feature holds (or all of them) "
            "is refused unless the run passes --allow-removals; an empty catalog is always refused"
        ),
    )


class DecodeConfig(_Strict):
    batch_size: int = Field(32, ge=1, description="items per decode task call (images, videos, audio)")
    text_batch_size: int = Field(
        1024,
        ge=1,
        description=(
            "items per text-preparation call; texts are sorted by length within it, so encoder batches pad little"
        ),
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs each decode task reserves (fractions run more tasks at once)")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description=("larger images (and video frames) are errors: the decompression-bomb guard"),
    )
    max_image_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="largest image file, in bytes")
    max_media_bytes: int = Field(DEFAULT_MAX_MEDIA_BYTES, ge=1, description="largest video or audio file")
    max_aspect_ratio: float = Field(
        DEFAULT_MAX_ASPECT_RATIO,
        ge=1,
        description=("images (and video frames) whose longer side is more than this many times the shorter are errors"),
    )
    read_timeout: float = Field(
        DEFAULT_READ_TIMEOUT,
        gt=0,
        description=("seconds one media file may take to read; a slower read is an errors row"),
    )

    def limits(self, kind: str) -> MediaLimits:
        """The bounds of one kind of media input (image, video or audio)."""
        image = kind == "image"
        return MediaLimits(
            max_bytes=self.max_image_bytes if image else self.max_media_bytes,
            max_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
            timeout=self.read_timeout,
            bytes_field="max_image_bytes" if image else "max_media_bytes",
        )


class StagingConfig(_Strict):
    """How often encoded rows are committed to staging: what a killed job keeps."""

    commit_seconds: float = Field(
        30.0, gt=0, description="commit staged rows once this long has passed (checked as encoded data files arrive)"
    )
    commit_fragments: int = Field(16, ge=1, description="... or after this many data files")
    fragment_rows: int = Field(1024, ge=1, description="rows per staging data file")


class IngestConfig(_Strict):
    catalog: CatalogConfig = Field(CatalogConfig(), description="how the catalog is read")
    decode: DecodeConfig = Field(DecodeConfig(), description="the CPU stage that reads and decodes inputs")
    staging: StagingConfig = Field(StagingConfig(), description="how often a running job commits its encoded rows")
    features: dict[str, SerializeAsAny[FeatureSpec]] = Field(
        min_length=1,
        description=("feature name -> how it is made; captions are made before the features that read them"),
    )
    semantic_ids: dict[str, SemanticIdSpec] = Field(
        default_factory=dict,
        description=(
            "name -> a semantic-ID definition, derived from the stored vectors after the features, in the same snapshot"
        ),
    )
    graphs: dict[str, GraphSpec] = Field(
        default_factory=dict,
        description=("name -> a kNN item graph definition, derived from the stored vectors after the features"),
    )
    # Options for an object-storage store (Lance's keys: aws_region, aws_endpoint, ...). Values
    # may name environment variables (``${AWS_SECRET_ACCESS_KEY}``) so that secrets stay out of
    # the file; never logged, never written into the store.
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description=(
            "for an s3:// gs:// az:// store, Lance's option names (aws_region, aws_endpoint, ...); ${VAR} reads the "
            "environment variable VAR, so that secrets stay out of the file; never logged or written into the store"
        ),
    )

    @field_validator("storage_options")
    @classmethod
    def _expand_env(cls, options: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, value in options.items():
            for var in _ENV_VAR.findall(value):
                if var not in os.environ:
                    raise ValueError(f"{key}: environment variable {var} is not set")
            out[key] = _ENV_VAR.sub(lambda m: os.environ[m.group(1)], value)
        return out

    @field_validator("features", "semantic_ids", "graphs")
    @classmethod
    def _names(cls, entries: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        what = {"features": "feature", "semantic_ids": "semantic-ID", "graphs": "graph"}[info.field_name]
        for name in entries:
            if not NAME.match(name):
                raise ValueError(f"{what} name {name!r}: use a letter, then letters, digits or '_'")
        return entries

    @model_validator(mode="after")
    def _inputs_are_features(self) -> IngestConfig:
        for name, spec in self.features.items():  # what each encoder can and cannot take
            try:
                encoder_class(spec.encoder).validate_spec(spec)
            except ConfigError as exc:
                raise ValueError(f"features.{name}: {exc}") from None
        captions = [n for n, s in self.features.items() if encoder_class(s.encoder).output_kind == "caption"]
        for name, spec in self.features.items():
            if isinstance(spec.input, FeatureRefInput) and spec.input.feature not in captions:
                raise ValueError(
                    f"features.{name}.input: {spec.input.feature!r} is not a caption feature of this configuration "
                    f"(caption features: {', '.join(captions) or 'none'})"
                )
        derived = [("semantic_ids", n, list(s.weights)) for n, s in self.semantic_ids.items()]
        derived += [("graphs", n, list(s.features)) for n, s in self.graphs.items()]
        for section, name, inputs in derived:
            unknown = [f for f in inputs if f not in self.features]
            if unknown:
                raise ValueError(
                    f"{section}.{name}.features: {', '.join(map(repr, unknown))} is not a feature "
                    f"of this configuration (features: {', '.join(self.features)})"
                )
            texts = [f for f in inputs if f in captions]
            if texts:
                raise ValueError(
                    f"{section}.{name}.features: {', '.join(map(repr, texts))} holds captions, not "
                    "vectors; embed them with a text feature (input: {feature: ...}) and use that"
                )
        return self

    def feature_order(self) -> list[tuple[str, FeatureSpec]]:
        """Features in the order an ingest runs them: captions before the features that read them."""

        def reads_captions(item: tuple[str, FeatureSpec]) -> bool:
            return isinstance(item[1].input, FeatureRefInput)

        return sorted(self.features.items(), key=reads_captions)


class DerivedConfig(_Strict):
    """A configuration with only derived sections (``semantic_ids:``, ``graphs:``) and the store's
    storage options: for ``itemlens semantic-ids`` and ``itemlens graph`` over whatever the store
    holds, features ingested or vectors put with ``lens.put_vectors`` (the input features are
    checked against the store, not against a ``features:`` section)."""

    semantic_ids: dict[str, SemanticIdSpec] = Field(default_factory=dict)
    graphs: dict[str, GraphSpec] = Field(default_factory=dict)
    storage_options: dict[str, str] = Field(default_factory=dict, repr=False)

    _expand_env = field_validator("storage_options")(IngestConfig._expand_env.__func__)
    _names = field_validator("semantic_ids", "graphs")(IngestConfig._names.__func__)


def load_config(source: str | os.PathLike | dict[str, Any] | IngestConfig) -> IngestConfig:
    """Parse and validate a configuration (a YAML path, a dict or an IngestConfig)."""
    if isinstance(source, IngestConfig):
        return source
    raw, label = _read(source)
    try:
        return IngestConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{label} is invalid:\n" + format_validation_error(exc, raw)) from None


def load_derived_config(source: str | os.PathLike | dict[str, Any]) -> IngestConfig | DerivedConfig:
    """A configuration for ``itemlens semantic-ids`` and ``itemlens graph``: a whole one (with
    ``features:``, validated as for an ingest), or only the derived sections."""
    raw, label = _read(source)
    if "features" in raw:
        return load_config(source)
    try:
        return DerivedConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{label} is invalid:\n" + format_validation_error(exc, raw)) from None


def _read(source: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The configuration as a mapping (relative paths resolved against a YAML file's folder)."""
    base: Path | None = None
    label = "configuration"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path.resolve()}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{label} is not valid YAML: {exc}") from None
        base = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{label} must be a mapping with a `features:` section")
    if base is not None:
        raw = _resolve_paths(raw, base)
    return raw, label


def format_validation_error(exc: ValidationError, raw: dict[str, Any] | None = None) -> str:
    """One line per error: the field's path, the bad value and what is allowed. A field that
    the feature's encoder does not have is listed with the options that encoder does have."""
    lines = []
    for err in exc.errors():
        path = [p for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        loc = ".".join(str(p) for p in path)
        value = err.get("input")
        shown = "" if err["type"] == "missing" else f" = {value!r}"
        if isinstance(value, dict) and err["type"] != "extra_forbidden":
            shown = ""
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
            if len(path) == 3 and path[0] == "features":
                message = _not_an_option(raw, str(path[1]), str(path[2])) or message
        lines.append(f"  {loc}{shown}: {message}")
    return "\n".join(lines)


def _not_an_option(raw: dict[str, Any] | None, feature: str, field: str) -> str | None:
    """'not an option of encoder X; its options: ...' for a feature's unknown field."""
    from itemlens.extractors.registry import spec_model

    spec = ((raw or {}).get("features") or {}).get(feature)
    encoder = spec.get("encoder") if isinstance(spec, dict) else None
    model = spec_model(encoder) if isinstance(encoder, str) else None
    if model is None:
        return None
    import difflib

    common = set(FeatureSpec.model_fields)
    own = [f for f in model.model_fields if f not in common]
    close = difflib.get_close_matches(field, list(model.model_fields), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown field for encoder {encoder!r}; {hint}its own options: {', '.join(own) or 'none'}, "
        f"besides the common {', '.join(sorted(common - {'encoder'}))}"
    )


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    graphs = raw.get("graphs")
    if isinstance(graphs, dict):  # an interactions file, relative to the YAML's folder
        resolved_graphs = {}
        for name, spec in graphs.items():
            interactions = spec.get("interactions") if isinstance(spec, dict) else None
            if (
                isinstance(interactions, dict)
                and isinstance(interactions.get("path"), str)
                and not os.path.isabs(os.path.expanduser(interactions["path"]))
            ):
                spec = {**spec, "interactions": {**interactions, "path": str((base / interactions["path"]).resolve())}}
            resolved_graphs[name] = spec
        raw = {**raw, "graphs": resolved_graphs}
    features = raw.get("features")
    if not isinstance(features, dict):
        return raw
    resolved = {}
    for name, spec in features.items():
        if isinstance(spec, dict):
            spec = dict(spec)
            for key in ("checkpoint", "model_config_file"):
                if isinstance(spec.get(key), str) and not os.path.isabs(os.path.expanduser(spec[key])):
                    spec[key] = str((base / spec[key]).resolve())
            model = spec.get("model")
            if isinstance(model, str) and model.startswith(".") and (base / model).exists():
                spec["model"] = str((base / model).resolve())
        resolved[name] = spec
    return {**raw, "features": resolved}
