"""``caption``: a multimodal LLM from transformers writes a caption for each image.

The model is anything ``AutoModelForImageTextToText`` loads with one fixed-size image per
prompt (LLaVA-1.5, BLIP-2, BLIP, GIT, ...), from a local folder or a hub id, with its own
``AutoProcessor``. A video arrives as one image too: a grid of its sampled frames, made in
the CPU workers.

The work is split like the other image encoders':

* CPU workers run :meth:`CaptionEncoder.image_transform`, the processor's own image
  processor (resize, crop, normalise), so float32 ``[3, H, W]`` tensors travel to the GPU;
* the accelerator actor runs :meth:`CaptionEncoder.caption_images`: one prompt per image
  (through the processor's chat template when it has one, as plain text otherwise, BLIP-2
  style), tokenized with LEFT padding so that a batch of prompts ends where generation
  starts (with right padding, shorter prompts would continue after their pad tokens and a
  caption would depend on its batch neighbours; with one prompt and fixed-size images the
  prompts are usually of equal length, but a processor may count image tokens per image),
  then ``generate`` (greedy by default, or beam search) and only the newly generated tokens
  are decoded.

The stored output is a caption (a string) per item, so there is no vector size: ``dim`` is 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from itemlens.errors import ConfigError
from itemlens.extractors.base import Encoder, autocast
from itemlens.extractors.spec import HubModelSpec
from itemlens.extractors.weights import ModelFiles

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_PROMPT = "Describe this product image in one sentence."
DEFAULT_MAX_NEW_TOKENS = 40

_CONFIG_FILES = ["config.json"]
_WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json"]
# The image processor's steps, all turned off when the prompt goes through the processor:
# the pixels it gets then are the ones the CPU workers already prepared (see _prompt_inputs).
_IMAGE_STEPS = ("do_resize", "do_center_crop", "do_crop", "do_rescale", "do_normalize", "do_pad",
                "do_convert_rgb")


class CaptionSpec(HubModelSpec):
    """``caption``: a multimodal LLM (image-text-to-text) writes a caption per item."""

    encoder: Literal["caption"]
    prompt: str | None = Field(
        None, description="the instruction given with each image (through the chat template when the processor "
                          "has one); default: " + repr(DEFAULT_PROMPT))
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="longest caption, in tokens (default 40)")
    num_beams: int | None = Field(None, ge=1, le=16, description="beam search width (default 1: greedy)")


class CaptionEncoder(Encoder):
    name = "caption"
    spec_model = CaptionSpec
    output_kind = "caption"
    input_kinds = frozenset({"image", "video"})

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

    # -- identity -----------------------------------------------------------------------
    @functools.cached_property
    def files(self) -> ModelFiles:
        return ModelFiles(self.spec, "caption model")

    def weights_identity(self) -> str:
        return self.files.identity()

    def check_weights(self) -> None:
        # safetensors only: transformers' pickled .bin weights are never loaded here
        self.files.require(_CONFIG_FILES, _WEIGHT_FILES, hub_groups=[_CONFIG_FILES])

    # -- CPU side -----------------------------------------------------------------------
    @functools.cached_property
    def processor(self):
        """The model's own AutoProcessor (tokenizer + image processor; no weights)."""
        from transformers import AutoProcessor

        self.check_weights()
        try:
            processor = AutoProcessor.from_pretrained(self.files.source, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES) from exc
        for part in ("image_processor", "tokenizer"):
            if getattr(processor, part, None) is None:
                raise ConfigError(
                    f"caption model {self.spec.model!r}: its processor ({type(processor).__name__}) has no "
                    f"{part}; the caption encoder needs a processor for images and text")
        # Prompts end where generation starts only with left padding (see the module docstring).
        processor.tokenizer.padding_side = "left"
        return processor

    def image_transform(self) -> Callable[[Image.Image], np.ndarray]:
        image_processor = self.processor.image_processor

        def preprocess(image: Image.Image) -> np.ndarray:
            pixels = np.asarray(image_processor(image, return_tensors="np")["pixel_values"], dtype=np.float32)
            if pixels.ndim != 4 or pixels.shape[:2] != (1, 3):
                # e.g. LLaVA-NeXT's tiles: more than one tensor per image, not one [3, H, W]
                raise ConfigError(
                    f"caption model {self.spec.model!r}: its image processor makes pixel values of shape "
                    f"{tuple(pixels.shape)} per image; the caption encoder takes models with one [3, H, W] "
                    "image per prompt")
            return pixels[0]

        return preprocess

    def preprocessed_size(self, width: int, height: int) -> tuple[int, int] | None:
        from itemlens.extractors.images import hf_preprocessed_size

        return hf_preprocessed_size(getattr(self.processor.image_processor, "size", None), width, height)

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
        self.check_weights()
        processor = self.processor
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                self.files.source, dtype=self._dtype(device), use_safetensors=True, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES + _WEIGHT_FILES) from exc
        except ValueError as exc:
            # "Unrecognized configuration class ... for AutoModelForImageTextToText"
            raise ConfigError(f"caption model {self.spec.model!r} is not an image-text-to-text model: {exc}") from exc
        self.model = model.to(device).eval()
        self.prompt_text = self._render_prompt(processor)

    def _render_prompt(self, processor) -> str:
        """The text each image is captioned with: the processor's chat template around an image
        placeholder and the prompt (LLaVA and other chat models), or the prompt itself when the
        processor has no template (BLIP-2: the processor puts its image tokens in front)."""
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.prompt

    def _prompt_inputs(self, pixels: np.ndarray) -> dict[str, Any]:
        """The processor's inputs for a batch: its tokenized, left-padded prompts with the image
        placeholder expanded into as many image tokens as the model reads.

        Processors expand image tokens while they process images, so the prepared pixels go in
        with every image step turned off (already resized and normalised in the CPU workers):
        they come back unchanged and only the text side does work."""
        processor = self.processor
        image_processor = processor.image_processor
        steps_off = {step: False for step in _IMAGE_STEPS if hasattr(image_processor, step)}
        inputs = processor(
            images=list(pixels), text=[self.prompt_text] * len(pixels), padding=True, return_tensors="pt",
            input_data_format="channels_first", **steps_off)
        got = tuple(inputs["pixel_values"].shape)
        if got != pixels.shape:
            raise ConfigError(
                f"caption model {self.spec.model!r}: its processor turned prepared pixels of shape "
                f"{pixels.shape} into {got}; the caption encoder takes models with one [3, H, W] image per prompt")
        return dict(inputs)

    @property
    def dim(self) -> int:
        """0: a caption feature stores a string per item, not a vector (workflows branch on
        ``output_kind`` before they size vector columns)."""
        return 0

    def caption_images(self, pixels: np.ndarray) -> list[str]:
        tokens = self.generate_tokens(pixels)
        if len(tokens) == 0:
            return []
        texts = self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def generate_tokens(self, pixels: np.ndarray):
        """The caption tokens generated for preprocessed images, float32 [n, 3, H, W] -> a long
        tensor [n, <= max_new_tokens] (the prompt left out; padded after an early EOS)."""
        import torch

        self.load()
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"caption_images takes float32 [n, 3, H, W], got shape {pixels.shape}")
        if len(pixels) == 0:
            return torch.zeros((0, 0), dtype=torch.long)
        inputs = self._prompt_inputs(pixels)
        prompt_length = inputs["input_ids"].shape[1]
        # The prepared pixels themselves, not the processor's copy of them.
        inputs["pixel_values"] = torch.from_numpy(pixels).to(self.model.dtype)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False)
        if not self.model.config.get_text_config().is_encoder_decoder:
            out = out[:, prompt_length:]  # a decoder-only model returns the prompt, then the caption
        return out.cpu()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(model=self.spec.model, revision=self.spec.revision, prompt=self.prompt,
                    max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                    decoding="greedy" if self.num_beams == 1 else "beam search")
        if hasattr(self, "model"):
            info["architecture"] = type(self.model).__name__
        return info
