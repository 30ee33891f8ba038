"""``caption``: a multimodal LLM from transformers writes a caption for each item.

The model is any image-text-to-text model that ``AutoProcessor`` and
``AutoModelForImageTextToText`` load (LLaVA-1.5, BLIP-2, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision,
SmolVLM2, Idefics3, Gemma 3, InternVL3 ...), from a local folder or a hub id, read the way it
expects its input: one fixed-size tensor per picture, tiles, or a variable-length patch sequence
with its grid; a video natively (its sampled frames with their times) where the processor takes
video, as one grid picture of its frames where it does not; all of an item's photos in one prompt
where the model takes several images. :mod:`itemlens.extractors.encoders.caption_inputs` does the
work in two halves:

* CPU workers run :meth:`CaptionEncoder.prepare_images` / :meth:`CaptionEncoder.prepare_video`:
  one item through the model's own processor (pictures and prompt together), shipped as a
  :class:`~itemlens.extractors.encoders.caption_inputs.VisionPayload` (flat arrays plus shapes);
* the accelerator actor runs :meth:`CaptionEncoder.caption`: items sorted by vision tokens and cut
  into batches under a token budget, each batch assembled exactly as the processor would have
  built it (left padding, the processor's own token expansion), then :meth:`CaptionEncoder.generate`
  (greedy by default, or beam search), the one method that runs the model: a serving engine (vLLM,
  SGLang) would replace it without touching preparation or storage.

Which path a feature takes (pixels fixed / tiles / patches, native video or frame grid, images per
prompt) is decided from the processor on the driver, before any work (:meth:`check_weights`), and
recorded in the feature version's description (``itemlens show`` prints it). Asking a model for
what it cannot do (several images of a one-image model, native video of an image-only one) is a
:class:`ConfigError` then; ``video: auto`` takes the frame grid for image-only models, the
documented fallback. See docs/captions.md.

The stored output is a caption (a string) per item with its vision-token and generated-token
counts, so there is no vector size: ``dim`` is 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from itemlens.errors import ConfigError
from itemlens.extractors.base import Encoder
from itemlens.extractors.spec import FeatureSpec, HubModelSpec, fingerprint
from itemlens.extractors.weights import ModelFiles

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from itemlens.extractors.encoders.caption_inputs import (
        AssembledBatch,
        Caption,
        Generated,
        GenerationSettings,
        VideoClip,
        VisionInputs,
        VisionPayload,
    )

DEFAULT_PROMPT = "Describe this product image in one sentence."
DEFAULT_MAX_NEW_TOKENS = 40
#: token slots per generate call (items x (longest prompt + max_new_tokens)); see CaptionSpec.token_budget
DEFAULT_TOKEN_BUDGET = 32768

_CONFIG_FILES = ["config.json"]
_WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json"]
#: processor call arguments that itemlens sets itself (processor_options may not)
_RESERVED_PROCESSOR_OPTIONS = frozenset(
    {"images", "text", "videos", "audio", "return_tensors", "padding", "padding_side", "add_special_tokens"}
)


class CaptionSpec(HubModelSpec):
    """``caption``: a multimodal LLM (image-text-to-text) writes a caption per item."""

    encoder: Literal["caption"]
    prompt: str | None = Field(
        None,
        description="the instruction given with the item's pictures (through the chat template when the "
        "processor has one); default: " + repr(DEFAULT_PROMPT),
    )
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="longest caption, in tokens (default 40)")
    num_beams: int | None = Field(None, ge=1, le=16, description="beam search width (default 1: greedy)")
    images: Literal["first", "all"] | PositiveInt = Field(
        "first",
        description="an image column's pictures that go in one prompt: first, all, or at most N (a model "
        "that reads one image per prompt takes only first)",
    )
    video: Literal["auto", "native", "frame_grid"] = Field(
        "auto",
        description="a video column: native (the sampled frames with their times through the model's video "
        "processor), frame_grid (one picture of the frames) or auto (native where the model takes "
        "video, else frame_grid)",
    )
    min_pixels: int | None = Field(
        None,
        ge=1,
        description="dynamic-resolution models (Qwen-VL kind): the fewest pixels an image is resized to "
        "(default: processor_options' images_kwargs.size.shortest_edge, else the processor's own)",
    )
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="dynamic-resolution models (Qwen-VL kind): the most pixels an image is resized to "
        "(default: processor_options' images_kwargs.size.longest_edge, else the processor's own, at most "
        "1003520 = 1280 x 28 x 28)",
    )
    processor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to every processor call, e.g. {images_kwargs: {do_pan_and_scan: "
        "true}} (Gemma 3) or {videos_kwargs: {size: {...}}}",
    )
    token_budget: int | None = Field(
        None,
        ge=64,
        description="token slots per generate call: items x (longest prompt + max_new_tokens) "
        f"(default {DEFAULT_TOKEN_BUDGET}); an execution setting, not in the fingerprint",
    )

    #: the token budget only decides how items are batched: captions do not depend on it
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = FeatureSpec.EXECUTION_FIELDS | {"token_budget"}

    @field_validator("images", mode="before")
    @classmethod
    def _images(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"images must be first, all or a number >= 1, got {value!r}")
        return value

    @field_validator("processor_options")
    @classmethod
    def _processor_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(_RESERVED_PROCESSOR_OPTIONS & set(value))
        if reserved:
            raise ValueError(f"processor_options may not set {', '.join(reserved)}: itemlens passes them itself")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> CaptionSpec:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        return self


class CaptionEncoder(Encoder):
    name = "caption"
    spec_model = CaptionSpec
    output_kind = "caption"
    input_kinds = frozenset({"image", "video"})

    @classmethod
    def validate_spec(cls, spec: FeatureSpec) -> None:
        super().validate_spec(spec)
        # options of the other input kind would be ignored: refused, never silently dropped
        if spec.input.kind == "image" and spec.video != "auto":
            raise ConfigError(
                f"video: {spec.video} applies to a video input; this feature reads images ({spec.input.image!r})"
            )
        if spec.input.kind == "video" and spec.images != "first":
            raise ConfigError(
                f"images: {spec.images!r} applies to an image input; this feature reads a video "
                f"({spec.input.video!r}): its frames go in as the model takes video (see video:)"
            )

    # -- settings -----------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return DEFAULT_PROMPT if self.spec.prompt is None else self.spec.prompt

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    @property
    def num_beams(self) -> int:
        return self.spec.num_beams or 1

    @property
    def token_budget(self) -> int:
        return self.spec.token_budget or DEFAULT_TOKEN_BUDGET

    @property
    def settings(self) -> GenerationSettings:
        from itemlens.extractors.encoders.caption_inputs import GenerationSettings

        return GenerationSettings(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    @property
    def images_per_item(self) -> int | None:
        """How many of an item's images go in (None: all): the input hash covers exactly those."""
        return {"first": 1, "all": None}.get(self.spec.images, self.spec.images)

    # -- identity -----------------------------------------------------------------------
    @functools.cached_property
    def files(self) -> ModelFiles:
        return ModelFiles(self.spec, "caption model")

    def weights_identity(self) -> str:
        return self.files.identity()

    def _require_files(self) -> None:
        # safetensors only: transformers' pickled .bin weights are never loaded here
        self.files.require(_CONFIG_FILES, _WEIGHT_FILES, hub_groups=[_CONFIG_FILES])

    def check_weights(self) -> None:
        """The weights' files, then the model's vision path, decided from its processor before any
        work: a model asked for what it cannot do (several images, native video) or whose
        processor's batches cannot be assembled item by item is a ConfigError now."""
        self._require_files()
        self.inputs.path  # noqa: B018  (computing it is the check)

    @functools.cached_property
    def _fingerprint(self) -> str:
        """The spec's fingerprint, with a dynamic-resolution model's effective pixel bounds in its
        recipe (they decide what the model reads: the default cap included); other models' specs
        keep the fingerprints they had before these options existed."""
        spec = self.spec
        bounds = self.inputs.pixel_bounds
        if bounds is not None:
            spec = spec.model_copy(update={"min_pixels": bounds[0], "max_pixels": bounds[1]})
        return fingerprint(spec, self.weights_identity(), f"{self.name}/{self.processing_version}")

    # -- CPU side -----------------------------------------------------------------------
    @functools.cached_property
    def processor(self):
        """The model's own AutoProcessor (tokenizer, image and video processors; no weights)."""
        from transformers import AutoProcessor

        self._require_files()
        try:
            return AutoProcessor.from_pretrained(self.files.source, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES) from exc

    @functools.cached_property
    def inputs(self) -> VisionInputs:
        """Both halves of input preparation (see caption_inputs): the processor, the prompt, which
        images and which video path, the processor options with the pixel bounds."""
        from transformers import AutoConfig

        from itemlens.extractors.encoders.caption_inputs import VisionInputs, dynamic_resolution

        processor = self.processor
        try:
            config = AutoConfig.from_pretrained(self.files.source, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES) from exc
        except ValueError as exc:
            raise ConfigError(f"caption model {self.spec.model!r}: its config cannot be read: {exc}") from exc
        options = {k: dict(v) if isinstance(v, dict) else v for k, v in self.spec.processor_options.items()}
        own = dynamic_resolution(getattr(processor, "image_processor", None))
        if own is None and (self.spec.min_pixels is not None or self.spec.max_pixels is not None):
            raise ConfigError(
                f"caption model {self.spec.model!r}: min_pixels / max_pixels bound dynamic-resolution image "
                f"processors (Qwen-VL kind); {type(getattr(processor, 'image_processor', None)).__name__} resizes "
                "to its own sizes: set its options with processor_options instead"
            )
        if own is not None:
            from itemlens.extractors.encoders.caption_inputs import DEFAULT_MAX_PIXELS

            # the bounds: min_pixels / max_pixels, else a size given in processor_options, else
            # the processor's own (its maximum capped)
            images_kwargs = dict(options.get("images_kwargs") or {})
            given = dict(images_kwargs.get("size") or {})
            high = self.spec.max_pixels or given.get("longest_edge") or min(own[1], DEFAULT_MAX_PIXELS)
            low = self.spec.min_pixels or given.get("shortest_edge") or min(own[0], high)
            if low > high:
                raise ConfigError(
                    f"caption model {self.spec.model!r}: min_pixels {low} is larger than max_pixels {high}"
                )
            images_kwargs["size"] = {**given, "shortest_edge": low, "longest_edge": high}
            options["images_kwargs"] = images_kwargs
        return VisionInputs(
            processor,
            config,
            prompt=self.prompt,
            images=self.spec.images,
            video=self.spec.video,
            processor_kwargs=options,
            name=self.spec.model,
        )

    def prepare_images(self, images: Sequence[Image.Image | bytes]) -> VisionPayload:
        """One item's images (those :attr:`images_per_item` selects) through the processor with the
        prompt. A picture the processor cannot take is the item's ItemError("decode")."""
        return self.inputs.prepare(list(images))

    def prepare_video(self, clip: VideoClip) -> VisionPayload:
        """One video's sampled frames with their times: natively, or as a grid of the frames."""
        return self.inputs.prepare(clip)

    def preprocessed_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size an image takes inside the processor (a dynamic-resolution processor's resize
        to its pixel bounds, an anyres grid's best resolution, a fixed or edge resize)."""
        return self.inputs.preprocessed_size(width, height)

    def frame_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size a frame of a natively read video takes inside the video processor."""
        return self.inputs.preprocessed_size(width, height, video=True)

    # -- accelerator side ---------------------------------------------------------------
    def _dtype(self, device: str):
        import torch

        if not device.startswith("cuda") or self.spec.precision == "fp32":
            return torch.float32
        if self.spec.precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp16": torch.float16, "bf16": torch.bfloat16}[self.spec.precision]

    def _load(self, device: str) -> None:
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor per load is noise in a pipeline
        self._require_files()
        inputs = self.inputs
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                self.files.source, dtype=self._dtype(device), use_safetensors=True, **self.files.options()
            )
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES + _WEIGHT_FILES) from exc
        except ValueError as exc:
            # "Unrecognized configuration class ... for AutoModelForImageTextToText"
            raise ConfigError(f"caption model {self.spec.model!r} is not an image-text-to-text model: {exc}") from exc
        self.model = model.to(device).eval()
        self.vision_inputs = inputs

    @property
    def dim(self) -> int:
        """0: a caption feature stores a string per item, not a vector (workflows branch on
        ``output_kind`` before they size vector columns)."""
        return 0

    def caption(self, payloads: Sequence[VisionPayload]) -> list[Caption]:
        """Captions of prepared items, in their order: sorted by vision tokens and cut into batches
        under the token budget (at most ``resources.batch_size`` items), each assembled as the
        processor builds it and generated by :meth:`generate`."""
        from itemlens.extractors.encoders.caption_inputs import caption_items

        self.load()
        return caption_items(
            self.inputs,
            self.model,
            list(payloads),
            self.settings,
            budget=self.token_budget,
            max_items=self.spec.resources.batch_size,
            generate_fn=lambda model, batch, settings: self.generate(batch, settings),
        )

    def generate(self, batch: AssembledBatch, settings: GenerationSettings) -> Generated:
        """The one place captions are generated: an assembled batch -> each item's new tokens (to
        its end of sequence) and counts. A serving engine (vLLM, SGLang) replaces this method."""
        from itemlens.extractors.encoders.caption_inputs import generate

        self.load()
        return generate(self.model, batch, settings)

    def caption_images(self, images: Sequence[Image.Image | Sequence[Image.Image]]) -> list[str]:
        """A caption per item, each item an image or a list of images (PIL images, or encoded
        bytes), as the pipeline writes them (:attr:`images_per_item` of each list go in)."""
        items = [image if isinstance(image, (list, tuple)) else [image] for image in images]
        return [c.text for c in self.caption([self.prepare_images(item) for item in items])]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            model=self.spec.model,
            revision=self.spec.revision,
            prompt=self.prompt,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            decoding="greedy" if self.num_beams == 1 else "beam search",
            token_budget=self.token_budget,
        )
        inputs = self.inputs
        path = inputs.path.describe()
        path["input"] = self.spec.input.kind
        bounds = inputs.pixel_bounds
        if bounds is not None:
            path["pixel bounds"] = list(bounds)
        if self.spec.processor_options:
            path["processor options"] = self.spec.processor_options
        info["path"] = path
        info["architecture"] = type(self.model).__name__ if hasattr(self, "model") else path["architecture"]
        return info


def describe_path(path: dict[str, Any]) -> str:
    """One line of what a caption feature's description says about its vision path (``itemlens
    show``): e.g. ``patches (256-4096 pixels an image), images: all, video: native; Qwen2_5_VLProcessor
    -> Qwen2_5_VLForConditionalGeneration``."""
    pixels = path.get("pixels", "?")
    if path.get("pixel bounds"):
        low, high = path["pixel bounds"]
        pixels += f" ({low}-{high} pixels an image)"
    if path.get("input") == "video":
        what = f"video: {path.get('video')}"
    else:
        what = f"images: {path.get('images')}" + (
            "" if path.get("several images per prompt") else " (one image per prompt)"
        )
    extra = f", processor options {path['processor options']}" if path.get("processor options") else ""
    return f"{pixels}, {what}{extra}; {path.get('processor')} -> {path.get('architecture')}"
