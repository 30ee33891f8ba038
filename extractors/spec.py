"""Feature specs: how one named feature is made, and the fingerprint of that recipe.

A spec is part of the YAML configuration (``features: {name: spec}``) and is stored with
every feature version, so that a store can rebuild the encoder that wrote it (``lens.search``
with raw text does).

:class:`FeatureSpec` holds what every feature has (encoder, model, input, normalization, dtype,
pooling, resources ...). Each encoder declares its own options as a subclass (``OpenClipSpec``
with ``pretrained`` and ``checkpoint``, ``CaptionSpec`` with ``prompt`` ...) and names it as its
``spec_model``; ``FeatureSpec.model_validate(data)`` picks the encoder's model by the
``encoder`` field, so the YAML is one flat mapping per feature and a field that the chosen
encoder does not have is an error that lists the ones it does.

The fingerprint hashes everything that changes the output vectors: the common recipe, the
encoder's options and the weights' identity. Resources, precision, the index and the note are
execution details and are left out (a GPU bf16 run and a CPU fp32 run of the same spec agree
to ~1e-3 cosine).
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from itemlens.config_types import NAME, StrictModel

_Strict = StrictModel


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


class VideoInput(_Strict):
    """A video column (path/URI per cell). Frames are sampled and decoded on CPU (PyAV; see
    :func:`itemlens.extractors.video.sample_indices` for the exact indices, and that module
    for why not decord):

    * uniform (default): ``frames`` frames, the middle frame of each of ``frames`` equal
      segments of the video (every frame once when it has fewer);
    * ``every_seconds: s``: the frame on screen at 0, s, 2s, ... seconds from the first frame
      (by the container's timestamps, so a variable frame rate is honoured; each time read
      1 ms late against rounding), at most ``frames`` of them (thinned uniformly).
    """

    video: str = Field(description="catalog column with a video path/URI")
    frames: int = Field(8, ge=1, le=256, description="frames per video (the maximum with every_seconds)")
    every_seconds: float | None = Field(None, gt=0, description="sample by time instead of uniformly")

    @property
    def kind(self) -> str:
        return "video"

    @property
    def columns(self) -> list[str]:
        return [self.video]


class AudioInput(_Strict):
    """An audio column: each cell an audio file or a video file (its audio track is used),
    decoded with PyAV, mixed to the model's layout and resampled to its rate with torchaudio."""

    audio: str = Field(description="catalog column with an audio (or video) path/URI")

    @property
    def kind(self) -> str:
        return "audio"

    @property
    def columns(self) -> list[str]:
        return [self.audio]


class FeatureRefInput(_Strict):
    """Another feature's output as input, e.g. a text feature over the captions a caption
    feature wrote in the same run: ``input: {feature: caption}`` (or just ``input: caption``)."""

    feature: str = Field(description="name of the feature whose output (a caption) is the input")

    @property
    def kind(self) -> str:
        return "text"

    @property
    def columns(self) -> list[str]:
        return []

    @property
    def template(self) -> str:
        return "{text}"


FeatureInput = TextInput | ImageInput | VideoInput | AudioInput | FeatureRefInput
_INPUT_KEYS = {
    "template": TextInput,
    "image": ImageInput,
    "video": VideoInput,
    "audio": AudioInput,
    "feature": FeatureRefInput,
}


class Resources(_Strict):
    """Ray resources of one encoder's actor pool (requests: on a machine without GPUs the
    job says so and runs on CPU)."""

    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor (default 1)")
    concurrency: int = Field(1, ge=1, description="actors in the pool")
    batch_size: int = Field(64, ge=1, description="items per encoder call")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per actor, e.g. {a100: 1} for nodes started "
        "with --resources='{\"a100\": 1}'; actors run only where they exist",
    )


class IndexSpec(_Strict):
    """A vector index the ingest builds once the feature has ``min_rows`` vectors, and keeps
    current after that."""

    kind: Literal["IVF_PQ", "IVF_HNSW_SQ"] = Field("IVF_PQ", description="the Lance vector index type")
    min_rows: int = Field(100_000, ge=1, description="build once the table has this many vectors")
    num_partitions: int | None = Field(None, ge=1, description="IVF partitions (default: about sqrt(rows))")
    num_sub_vectors: int | None = Field(
        None, ge=1, description=("IVF_PQ sub-vectors (default: from the dimension, 16 or 8 values each)")
    )


class FeatureSpec(_Strict):
    """How one feature is made: what every encoder's spec has. See docs/configuration.md."""

    encoder: str = Field(description="registered encoder name, e.g. open-clip, sentence-transformers")
    model: str = Field(description="model name, hub id or local folder")
    input: FeatureInput = Field(
        description=(
            "{template: '...'} (text from columns), {image: COLUMN}, {video: COLUMN, frames: N}, {audio: COLUMN}, "
            "or {feature: NAME} (another feature's captions)"
        )
    )
    normalize: bool = Field(True, description="L2-normalize the vectors")
    dtype: Literal["float32", "float16"] = Field("float32", description="the stored vectors' dtype")
    pooling: Literal["mean"] = Field(
        "mean", description="several inputs per item (images, frames, windows): the mean of their vectors"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16/fp16 autocast on GPU, fp32 on CPU"
    )
    resources: Resources = Field(Resources(), description="the encoder's actor pool")
    index: IndexSpec | None = Field(None, description="a vector index to build and keep current")
    note: str | None = Field(None, description="free text shown by `itemlens show` (e.g. a stand-in label)")

    #: fields that do not change the stored output (left out of the fingerprint)
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = frozenset({"precision", "resources", "index", "note"})
    #: fields that name the weights: they enter the fingerprint through the encoder's weights
    #: identity, where a local file counts by its content, not by where it lies
    WEIGHTS_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"model", "revision", "pretrained", "checkpoint", "model_config_file"}
    )
    #: the recipe's keys when every option lived on one spec: they stay in every recipe (None
    #: where an encoder does not have them), so that stores written then keep their versions
    LEGACY_RECIPE: ClassVar[dict[str, Any]] = {
        "trust_remote_code": False,
        "max_seq_length": None,
        "token_pooling": None,
        "instruction": None,
        "prompt": None,
        "max_new_tokens": None,
        "num_beams": None,
        "window_seconds": None,
    }

    @model_validator(mode="wrap")
    @classmethod
    def _encoder_model(cls, data: Any, handler):
        """``FeatureSpec.model_validate(data)`` validates with the spec model of the encoder
        that ``data`` names (its own options); a subclass validates as itself."""
        if cls is FeatureSpec and isinstance(data, dict) and isinstance(data.get("encoder"), str):
            from itemlens.extractors.registry import spec_model

            model = spec_model(data["encoder"])
            if model is not None and model is not FeatureSpec:
                return model.model_validate(data)
        return handler(data)

    def __new__(cls, *args: Any, **data: Any):
        """``FeatureSpec(encoder="open-clip", ...)`` builds the encoder's own spec model too."""
        if cls is FeatureSpec and isinstance(data.get("encoder"), str):
            from itemlens.extractors.registry import spec_model

            model = spec_model(data["encoder"])
            if model is not None and issubclass(model, FeatureSpec):
                cls = model
        return super().__new__(cls)

    @field_validator("input", mode="before")
    @classmethod
    def _input_kind(cls, value: Any) -> Any:
        if isinstance(value, tuple(_INPUT_KEYS.values())):
            return value
        if isinstance(value, str) and NAME.match(value):
            value = {"feature": value}  # `input: caption`: another feature's output
        if isinstance(value, dict):
            keys = [k for k in value if k in _INPUT_KEYS]
            if len(keys) == 1:
                try:
                    return _INPUT_KEYS[keys[0]](**value)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"])
                    raise ValueError(
                        f"{where}: " + error["msg"].removeprefix("Value error, ")
                        if where
                        else error["msg"].removeprefix("Value error, ")
                    ) from None
        raise ValueError(
            "input must be {template: '...'} (a text built from columns, e.g. '{title}. {description}'), "
            "{image: COLUMN} (image paths/URIs), {video: COLUMN, frames: 8} (video paths/URIs), "
            "{audio: COLUMN} (audio or video paths/URIs) or {feature: NAME} (another feature's captions)"
        )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        from itemlens.extractors.registry import encoder_names

        names = encoder_names()
        if value not in names:
            raise ValueError(f"unknown encoder {value!r}; registered encoders: {', '.join(names)}")
        return value

    @classmethod
    def options(cls) -> list[str]:
        """The fields of this spec (what a feature of this encoder may set)."""
        return list(cls.model_fields)

    def output_recipe(self) -> dict[str, Any]:
        """What changes the stored output, besides the weights: the common recipe, the legacy
        keys, and every option of the encoder that is not at its default (a new option with
        its default value keeps the fingerprints of stores written before it existed)."""
        values = self.model_dump(mode="json", exclude=set(self.EXECUTION_FIELDS | self.WEIGHTS_FIELDS))
        recipe = dict(self.LEGACY_RECIPE)
        for name, value in values.items():
            if name in recipe or name in _COMMON_RECIPE or value != self._default(name):
                recipe[name] = value
        return recipe

    @classmethod
    def _default(cls, name: str) -> Any:
        field = cls.model_fields[name]
        value = field.get_default(call_default_factory=True)
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


#: the recipe keys every spec has (always in the fingerprint)
_COMMON_RECIPE = frozenset({"encoder", "input", "normalize", "dtype", "pooling"})


class HubModelSpec(FeatureSpec):
    """The options of models loaded with transformers-family ``from_pretrained``: a local folder
    or a hub id at a pinned revision, with remote code off unless asked for."""

    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to pin the weights")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off by default)")


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
    for _, field, format_spec, conversion in parsed:
        if field is None:
            continue
        if conversion in ("r", "a"):  # repr() of a cell is no text anyone meant to embed
            raise ValueError(f"template {template!r}: {{{field}!{conversion}}} is not supported; write {{{field}}}")
        if format_spec and "{" in format_spec:
            raise ValueError(
                f"template {template!r}: a field inside a format spec ({{{field}:{format_spec}}}) is not "
                "supported; give the format spec itself, e.g. {price:.2f}"
            )
        if field == "" or field.isdigit():
            raise ValueError(f"template {template!r}: use column names in braces, e.g. {{title}}")
        if "." in field or "[" in field:
            raise ValueError(
                f"template {template!r}: {{{field}}} reaches into a column; use plain column "
                "names (a list column is joined with '; ')"
            )
        if field not in columns:
            columns.append(field)
    return columns
