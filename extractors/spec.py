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
import re
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


FeatureInput = Union[TextInput, ImageInput, VideoInput, AudioInput, FeatureRefInput]
_INPUT_KEYS = {"template": TextInput, "image": ImageInput, "video": VideoInput, "audio": AudioInput,
               "feature": FeatureRefInput}


class Resources(_Strict):
    """Ray resources of one encoder's actor pool (requests: on a machine without GPUs the
    job says so and runs on CPU)."""

    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor (default 1)")
    concurrency: int = Field(1, ge=1, description="actors in the pool")
    batch_size: int = Field(64, ge=1, description="items per encoder call")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per actor, e.g. {a100: 1} for nodes started "
                                          "with --resources='{\"a100\": 1}'; actors run only where they exist")


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
    pooling: Literal["mean", "per_image", "per_frame"] = Field(
        "mean", description="several images (or a video's frames) per item: mean of their vectors, or kept "
                            "per image / per frame")
    max_seq_length: int | None = Field(None, ge=1, description="text truncation, in tokens")
    token_pooling: Literal["mean", "last_token", "cls"] | None = Field(
        None, description="hf-text: how token states become one vector (default mean)")
    instruction: str | None = Field(
        None, description="hf-text: prefixed to every text (instruction-tuned embedders, e.g. 'query: ')")
    prompt: str | None = Field(
        None, description="caption: the instruction given with each image (through the chat template "
                          "when the processor has one)")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="caption: longest caption, in tokens")
    num_beams: int | None = Field(None, ge=1, le=16, description="caption: beam search width (default 1: greedy)")
    window_seconds: float | None = Field(
        None, gt=0, description="audio: window length; longer clips are cut into windows and pooled "
                                "(default: the model's own, 10 s for CLAP, 30 s otherwise)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16/fp16 autocast on GPU, fp32 on CPU")
    resources: Resources = Resources()
    index: IndexSpec | None = Field(None, description="a vector index to build and keep current")
    note: str | None = Field(None, description="free text shown by `itemlens show` (e.g. a stand-in label)")

    @field_validator("input", mode="before")
    @classmethod
    def _input_kind(cls, value: Any) -> Any:
        if isinstance(value, tuple(_INPUT_KEYS.values())):
            return value
        if isinstance(value, str) and FEATURE_NAME_PATTERN.match(value):
            value = {"feature": value}      # `input: caption`: another feature's output
        if isinstance(value, dict):
            keys = [k for k in value if k in _INPUT_KEYS]
            if len(keys) == 1:
                try:
                    return _INPUT_KEYS[keys[0]](**value)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"])
                    raise ValueError(f"{where}: " + error["msg"].removeprefix("Value error, ") if where
                                     else error["msg"].removeprefix("Value error, ")) from None
        raise ValueError(
            "input must be {template: '...'} (a text built from columns, e.g. '{title}. {description}'), "
            "{image: COLUMN} (image paths/URIs), {video: COLUMN, frames: 8} (video paths/URIs), "
            "{audio: COLUMN} (audio or video paths/URIs) or {feature: NAME} (another feature's captions)")

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
        "token_pooling", "instruction", "prompt", "max_new_tokens", "num_beams", "window_seconds",
    )

    def output_recipe(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(self.OUTPUT_FIELDS))


FEATURE_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


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
