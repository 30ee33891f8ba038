"""Captioning inputs for every shape of vision input, in two halves: the model's own processor on
CPU, batch assembly on the accelerator.

Multimodal LLMs read pictures in different shapes: one fixed-size ``[3, H, W]`` tensor per image
(LLaVA-1.5, BLIP-2, Gemma 3), tiles or splits of the image with its size (LLaVA-OneVision,
SmolVLM/Idefics3, InternVL, Gemma 3's pan-and-scan crops), or a variable-length sequence of
patches with its grid (Qwen2.5-VL, Qwen3-VL: ``image_grid_thw``); a video goes in natively
(frames with their times) where the processor takes video, and as one grid picture of its frames
where it does not. What each model expects is its processor's business, so both halves lean on it:

* CPU side, :meth:`VisionInputs.prepare`: ONE item (its images, or its sampled video frames with
  their timestamps) goes through the model's own processor, images (or video) and prompt together,
  exactly as ``processor(images=..., text=..., return_tensors="pt")`` would for that item alone.
  Its outputs become a :class:`VisionPayload`: each tensor as flat bytes with a dtype and a shape
  (token ids and attention mask, pixel values, ``image_grid_thw`` / ``video_grid_thw`` /
  ``second_per_grid_ts``, ``image_sizes`` / ``batch_num_images``, ``pixel_attention_mask``,
  ``token_type_ids`` / ``mm_token_type_ids``: whatever the processor returns) plus the number of
  tokens the item costs. :meth:`VisionPayload.to_dict` gives plain types (bytes and int lists)
  that travel as one Arrow struct column (:func:`payload_arrow_type`).
* Accelerator side, :meth:`VisionInputs.assemble`: the payloads of several items become the batch
  the processor would have built for them together. Token-aligned tensors are padded on the LEFT
  (so that every prompt ends where generation starts) with the tokenizer's pad id and zero masks;
  vision tensors are concatenated along their first axis, and padded first where the processor
  pads a batch (LLaVA-OneVision's tiles, SmolVLM/Idefics3's images per prompt: zeros, with zero
  pixel masks). No image is processed again and no family's token expansion is re-implemented:
  the expansion happened in the processor, on CPU.

Running the whole processor per item, text included, is what makes the assembled batch exact for
every family: the processor's own code decides how many placeholder tokens an image, a tile or a
frame costs, where the BOS goes and which token-type ids mark the image (Gemma 3). The actor only
pads and concatenates, and a check when the model loads (:attr:`VisionInputs.path`) compares that
with the processor's own batch of two probe images of different shapes; a processor whose batches
cannot be assembled that way is a :class:`ConfigError` before any work. It also keeps an item
independent of its batch-mates where a processor's own batch does not: SmolVLM's processor (in
transformers 5.23) writes the frame count of the batch's longest video into every video's prompt;
here each video's prompt is the one the processor writes for it alone, and its padded frames are
all zeros, which the model drops before it reads them.

Which path a model takes is decided from its processor when it loads (:class:`VisionPath`):
its pixels (``fixed``, ``tiles`` or ``patches``), video (``native`` when the processor has a video
processor and the chat template a video placeholder, else ``frame grid``) and whether a prompt can
hold several images (the chat template places one placeholder per image). Asking a model for what
it cannot do (several images of a one-image model, native video of an image-only one) is a
:class:`ConfigError` at construction; ``video="auto"`` takes the frame grid, the documented fallback,
for image-only models.

:func:`generate` is the one place that runs the model; :func:`plan_batches` cuts items, sorted by
vision tokens, into batches under a token budget; :func:`caption_items` chains the actor's steps
(plan, assemble, generate, decode) for a block of prepared items. Nothing here imports Ray or LanceDB; torch and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from itemlens.errors import ConfigError
from itemlens.extractors.base import ItemError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import torch
    from PIL import Image

VIDEO_CHOICES = ("auto", "native", "frame_grid")

#: Token-aligned outputs: padded on the left, the first with the pad id, the others with 0.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

#: Vision outputs a processor pads across a batch, and the axes it pads (at the end, with zeros).
#: Any other output is concatenated along its first axis; items whose other axes differ are never
#: put in one batch (see :meth:`VisionInputs.batch_key`).
_PADDED_AXES: dict[str, dict[str, tuple[int, ...]]] = {
    # [images, tiles, 3, H, W]: tiles padded to the batch's most (the model reads image_sizes)
    "LlavaOnevisionProcessor": {"pixel_values": (1,)},
    # [prompts, images, 3, H, W] and [prompts, images, H, W]: images per prompt (and their size)
    # padded to the batch's most; the model drops all-zero images before it reads the masks
    "SmolVLMProcessor": {"pixel_values": (1, 3, 4), "pixel_attention_mask": (1, 2, 3)},
    "Idefics3Processor": {"pixel_values": (1, 3, 4), "pixel_attention_mask": (1, 2, 3)},
}

#: The probe images of the load-time check (height, width): a square, a 1 : 4 strip and an icon,
#: among which every tiling family cuts at least two differently (pan-and-scan, anyres, image
#: splitting, InternVL's aspect-ratio crops).
_PROBE_SIZES = ((256, 256), (256, 1024), (32, 32))

#: A clip's times are given to the processor on a millisecond clock (see VideoClip.metadata).
_CLOCK_FPS = 1000.0

#: The most pixels an image is resized to by a dynamic-resolution processor (Qwen-VL kind) unless
#: the spec says otherwise: 1280 x 28 x 28, the bound Qwen's model cards suggest. Their processors'
#: own bound (12,845,056 for Qwen2.5-VL) makes a 4000x3000 photo ~16,000 vision tokens and a 288 MB
#: float32 payload; at this bound it is ~1,280 tokens and ~24 MB. A processor's lower own bound is kept.
DEFAULT_MAX_PIXELS = 1280 * 28 * 28


def dynamic_resolution(processor) -> tuple[int, int] | None:
    """``(min_pixels, max_pixels)`` of an image (or video) processor that resizes each picture to a
    pixel budget and reads it as a variable-length patch sequence (Qwen2-VL's ``smart_resize``:
    ``size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}`` with a ``patch_size`` and a
    ``merge_size``); None for processors that resize to sizes of their own."""
    size = dict(getattr(processor, "size", None) or {})
    if (
        {"shortest_edge", "longest_edge"} <= size.keys()
        and getattr(processor, "patch_size", None)
        and getattr(processor, "merge_size", None)
    ):
        return int(size["shortest_edge"]), int(size["longest_edge"])
    return None


# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoClip:
    """A video's sampled frames as the CPU side reads them.

    ``frames``: uint8 [F, H, W, 3] RGB; ``timestamps``: each frame's time in seconds from the
    video's first frame (ascending); ``duration``: how long the video lasts in seconds (default:
    the last frame's time)."""

    frames: np.ndarray
    timestamps: Sequence[float]
    duration: float | None = None

    def __post_init__(self):
        frames = self.frames
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [F, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
                f"{getattr(frames, 'shape', '')}"
            )
        if len(frames) == 0 or len(self.timestamps) != len(frames):
            raise ValueError(
                f"need one timestamp per frame and at least one frame: {len(frames)} frames, "
                f"{len(self.timestamps)} timestamps"
            )
        if any(b < a for a, b in zip(self.timestamps, self.timestamps[1:])):
            raise ValueError(f"timestamps must ascend, got {list(self.timestamps)}")

    def metadata(self) -> dict[str, Any]:
        """The clip as transformers' ``VideoMetadata`` fields, on a millisecond clock: ``fps``
        1000 and frame ``i`` at index ``round(1000 * t_i)``, so that the times a processor derives
        (``index / fps``: Qwen3-VL's and SmolVLM's prompts; ``frames / total * fps``: Qwen2.5-VL's
        ``second_per_grid_ts``) are the clip's own, for a variable frame rate too."""
        duration = float(self.duration if self.duration is not None else self.timestamps[-1])
        indices = [int(round(t * _CLOCK_FPS)) for t in self.timestamps]
        return {
            "total_num_frames": max(int(round(duration * _CLOCK_FPS)), indices[-1] + 1),
            "fps": _CLOCK_FPS,
            "duration": duration,
            "frames_indices": indices,
            "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]),
        }


@dataclass(frozen=True)
class VisionPath:
    """How a model reads pictures, decided from its processor when it loads."""

    #: processor and model classes
    processor: str
    architecture: str | None
    #: ``fixed`` (one [3, H, W] tensor per image), ``tiles`` (a number of tiles, splits or crops
    #: that depends on the image) or ``patches`` (a variable-length patch sequence with its grid)
    pixels: str
    #: ``native`` (frames with their times through the video processor) or ``frame grid``
    video: str
    #: whether one prompt can hold several images
    several_images: bool
    #: which of an item's images go in: ``first``, ``all`` or at most N
    images: str | int
    #: vision tokens of the probe images, by ``HxW``
    probe_tokens: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What ``itemlens show`` prints about the model's vision input."""
        return {
            "pixels": self.pixels,
            "video": self.video,
            "images": self.images,
            "several images per prompt": self.several_images,
            "processor": self.processor,
            "architecture": self.architecture,
            "vision tokens": dict(self.probe_tokens),
        }


# -- the payload --------------------------------------------------------------------------------------


@dataclass
class VisionPayload:
    """One item's processor outputs, ready to travel: ``tensors`` as numpy arrays with a leading
    axis of the item alone (``input_ids`` [1, L], pixel values as the processor shapes them),
    ``prompt_tokens`` = L (text and vision), ``vision_tokens`` the part of L its pictures cost
    (placeholders, their wrappers and, for a video, its timestamps), ``kind`` ``images``,
    ``video`` or ``frame grid``, and ``pictures`` the images or frames it holds."""

    tensors: dict[str, np.ndarray]
    vision_tokens: int
    prompt_tokens: int
    kind: str
    pictures: int

    def to_dict(self) -> dict[str, Any]:
        """Plain types for an Arrow struct column (:func:`payload_arrow_type`): tensor names,
        dtypes, shapes and C-order bytes, and the counts. Integer tensors travel in the narrowest
        integer type that holds their values (``stored``; token ids, 0/1 masks: SmolVLM's int64
        pixel masks shrink eightfold) and come back in their own dtype."""
        names = list(self.tensors)
        arrays = [np.ascontiguousarray(self.tensors[n]) for n in names]
        packed = [_narrowed(a) for a in arrays]
        return {
            "names": names,
            "dtypes": [_dtype_name(a) for a in arrays],
            "stored": [_dtype_name(p) for p in packed],
            "shapes": [list(a.shape) for a in arrays],
            "data": [p.tobytes() for p in packed],
            "vision_tokens": int(self.vision_tokens),
            "prompt_tokens": int(self.prompt_tokens),
            "kind": self.kind,
            "pictures": int(self.pictures),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> VisionPayload:
        tensors = {}
        for name, dtype, stored, shape, data in zip(
            row["names"], row["dtypes"], row["stored"], row["shapes"], row["data"]
        ):
            array = np.frombuffer(data, dtype=_numpy_dtype(stored)).reshape(shape)
            tensors[name] = array if stored == dtype else array.astype(_numpy_dtype(dtype))
        return cls(
            tensors=tensors,
            vision_tokens=int(row["vision_tokens"]),
            prompt_tokens=int(row["prompt_tokens"]),
            kind=row["kind"],
            pictures=int(row["pictures"]),
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


def payload_arrow_type() -> pa.DataType:
    """The Arrow type of :meth:`VisionPayload.to_dict` (a struct; one row per item)."""
    import pyarrow as pa

    return pa.struct(
        [
            ("names", pa.list_(pa.string())),
            ("dtypes", pa.list_(pa.string())),
            ("stored", pa.list_(pa.string())),
            ("shapes", pa.list_(pa.list_(pa.int64()))),
            ("data", pa.list_(pa.large_binary())),
            ("vision_tokens", pa.int32()),
            ("prompt_tokens", pa.int32()),
            ("kind", pa.string()),
            ("pictures", pa.int32()),
        ]
    )


def _dtype_name(array: np.ndarray) -> str:
    return "bfloat16" if array.dtype == np.dtype("V2") else array.dtype.str


def _narrowed(array: np.ndarray) -> np.ndarray:
    """An integer array in the narrowest integer type holding its values (others as they are)."""
    if array.dtype.kind not in "iu" or array.size == 0:
        return array
    narrow = np.promote_types(np.min_scalar_type(array.min()), np.min_scalar_type(array.max()))
    return array.astype(narrow) if narrow.itemsize < array.dtype.itemsize else array


def _numpy_dtype(name: str) -> np.dtype:
    # numpy has no bfloat16: such tensors travel as their raw 2-byte words
    return np.dtype("V2") if name == "bfloat16" else np.dtype(name)


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view("V2")
        return value.numpy()
    return np.asarray(value)


def _to_torch(array: np.ndarray) -> torch.Tensor:
    import torch

    if array.dtype == np.dtype("V2"):
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))  # a copy: payload buffers are read-only


# -- the model's processor on both sides ---------------------------------------------------------------


@dataclass
class AssembledBatch:
    """The processor's batch for several items (``inputs``, torch tensors on CPU) and each item's
    token counts."""

    inputs: dict[str, torch.Tensor]
    vision_tokens: list[int]
    prompt_tokens: list[int]

    def __len__(self) -> int:
        return len(self.vision_tokens)


class VisionInputs:
    """A captioning model's processor, its prompt and its vision path; both halves of input
    preparation. Built from the processor and the model's config only (no weights), so the
    driver can build one to check a feature before any work.

    ``prompt``: the instruction, rendered through the processor's chat template with one image
    placeholder per image (or one video placeholder); without a template it is passed as it is
    (BLIP-2: the processor puts its image tokens in front).
    ``images``: ``"first"``, ``"all"`` or an int N (at most N): which of an item's images go in.
    ``video``: ``"auto"`` (native where the processor takes video, else a grid of the frames),
    ``"native"`` or ``"frame_grid"``.
    ``processor_kwargs``: passed to every processor call, e.g. the dynamic-resolution bounds:
    ``{"images_kwargs": {"size": {"shortest_edge": 3136, "longest_edge": 1003520}}}`` (Qwen-VL's
    ``min_pixels`` / ``max_pixels``), ``{"images_kwargs": {"do_pan_and_scan": True}}`` (Gemma 3).
    """

    def __init__(
        self,
        processor,
        config=None,
        *,
        prompt: str,
        images: str | int = "first",
        video: str = "auto",
        processor_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ):
        self.processor = processor
        self.config = config
        self.prompt = prompt
        self.name = name or getattr(config, "_name_or_path", None) or type(processor).__name__
        self.processor_kwargs = dict(processor_kwargs or {})
        self._prompts: dict[tuple[int, bool], str] = {}
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
            raise ConfigError(
                f"caption model {self.name!r}: its processor ({type(processor).__name__}) needs a "
                "tokenizer and an image processor"
            )
        self.images = _images_choice(images)
        if video not in VIDEO_CHOICES:
            raise ConfigError(f"video must be one of {', '.join(VIDEO_CHOICES)}, got {video!r}")
        self.several_images = self._counts_placeholders("image", 2)
        self.native_video = getattr(processor, "video_processor", None) is not None and self._counts_placeholders(
            "video", 1
        )
        if self.images != 1 and not self.several_images:
            raise ConfigError(
                f"caption model {self.name!r} reads one image per prompt (its processor, "
                f"{type(processor).__name__}, places no image placeholder per image), so images: {images!r} "
                "cannot be honoured; use images: first, or a model that takes several images"
            )
        if video == "native" and not self.native_video:
            raise ConfigError(
                f"caption model {self.name!r} does not take video natively (its processor, "
                f"{type(processor).__name__}, has no video processor or video placeholder); use video: auto or "
                "frame_grid to caption a grid of the sampled frames"
            )
        self.video = "native" if self.native_video and video != "frame_grid" else "frame grid"
        self.padded_axes = _PADDED_AXES.get(type(processor).__name__, {})

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        prompt: str,
        images: str | int = "first",
        video: str = "auto",
        processor_kwargs: Mapping[str, Any] | None = None,
        **load_options,
    ) -> VisionInputs:
        """``AutoProcessor`` and ``AutoConfig`` of a local folder or hub id (no weights)."""
        from transformers import AutoConfig, AutoProcessor

        processor = AutoProcessor.from_pretrained(source, **load_options)
        config = AutoConfig.from_pretrained(source, **load_options)
        return cls(
            processor,
            config,
            prompt=prompt,
            images=images,
            video=video,
            processor_kwargs=processor_kwargs,
            name=str(source),
        )

    # -- the prompt ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt_text(self, images: int = 0, video: bool = False) -> str:
        """The prompt for ``images`` images (or one video): the chat template around their
        placeholders and the instruction, with the generation prompt; the instruction alone when
        the processor has no template."""
        key = (images, video)
        if key not in self._prompts:
            if not getattr(self.processor, "chat_template", None):
                self._prompts[key] = self.prompt
            else:
                content = [{"type": "image"}] * images + ([{"type": "video"}] if video else [])
                messages = [{"role": "user", "content": [*content, {"type": "text", "text": self.prompt}]}]
                self._prompts[key] = self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
        return self._prompts[key]

    def _counts_placeholders(self, kind: str, n: int) -> bool:
        """Whether the template places ``n`` placeholders of ``kind`` for ``n`` parts of it."""
        token = str(getattr(self.processor, f"{kind}_token", None) or "")
        if not token or not getattr(self.processor, "chat_template", None):
            return False
        text = self.prompt_text(images=n) if kind == "image" else self.prompt_text(video=True)
        return text.count(token) == n

    def _text_kwargs(self, text: str) -> dict[str, Any]:
        # As transformers' own apply_chat_template: a template that writes the BOS itself gets none
        # added by the tokenizer (Gemma 3's), or the prompt would start with two.
        bos = self.tokenizer.bos_token
        return {"add_special_tokens": False} if bos and text.startswith(bos) else {}

    @functools.cached_property
    def _text_only_tokens(self) -> int:
        """Tokens of the prompt without any picture: what an item's vision tokens are counted from."""
        text = self.prompt_text()
        return len(self.tokenizer(text, **self._text_kwargs(text))["input_ids"])

    # -- the path -----------------------------------------------------------------------------------
    @functools.cached_property
    def path(self) -> VisionPath:
        """The model's vision path, from three probe images (a square, a 1 : 4 strip and an icon)
        through the processor; also checks that batches of them assemble as the processor builds
        them (ConfigError otherwise)."""
        from PIL import Image

        probes = [Image.fromarray(_probe_pixels(h, w)) for h, w in _PROBE_SIZES]
        try:
            payloads = [self.prepare([image]) for image in probes]
        except ItemError as error:
            raise ConfigError(
                f"caption model {self.name!r}: its processor fails on a probe image "
                f"({', '.join(f'{h}x{w}' for h, w in _PROBE_SIZES)}): {error.reason}"
            ) from None
        pixels = [p.tensors["pixel_values"].shape if "pixel_values" in p.tensors else None for p in payloads]
        if pixels[0] is not None and len(pixels[0]) == 2:
            layout = "patches"
        elif len(set(pixels)) == 1:
            layout = "fixed"
        else:
            layout = "tiles"
        self.verify_assembly(probes)
        architectures = getattr(self.config, "architectures", None) or [None]
        return VisionPath(
            processor=type(self.processor).__name__,
            architecture=architectures[0],
            pixels=layout,
            video=self.video,
            several_images=self.several_images,
            images=self.images_label,
            probe_tokens={f"{h}x{w}": p.vision_tokens for (h, w), p in zip(_PROBE_SIZES, payloads)},
        )

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def pixel_bounds(self) -> tuple[int, int] | None:
        """The pixel bounds a dynamic-resolution image processor resizes each image to, with the
        ``size`` of ``processor_kwargs["images_kwargs"]`` applied; None for other processors."""
        return self._bounds(getattr(self.processor, "image_processor", None), "images_kwargs")

    def _bounds(self, processor, kwargs_key: str) -> tuple[int, int] | None:
        own = dynamic_resolution(processor)
        if own is None:
            return None
        size = dict((self.processor_kwargs.get(kwargs_key) or {}).get("size") or {})
        return int(size.get("shortest_edge", own[0])), int(size.get("longest_edge", own[1]))

    def preprocessed_size(self, width: int, height: int, *, video: bool = False) -> tuple[int, int] | None:
        """The largest size (width, height) a picture of ``width`` x ``height`` takes inside the
        processor, for the pipeline's size guard (:func:`itemlens.extractors.images.check_preprocessed_size`):
        a dynamic-resolution processor's resize to its pixel bounds, an anyres processor's best grid
        resolution (LLaVA-NeXT/OneVision), a fixed or edge resize otherwise; None when it cannot say.
        ``video``: a frame through the video processor."""
        from itemlens.extractors.images import hf_preprocessed_size

        processor = getattr(self.processor, "video_processor" if video else "image_processor", None)
        if processor is None:
            return None
        bounds = self._bounds(processor, "videos_kwargs" if video else "images_kwargs")
        if bounds is not None:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

            try:
                h, w = smart_resize(
                    height,
                    width,
                    processor.patch_size * processor.merge_size,
                    min_pixels=bounds[0],
                    max_pixels=bounds[1],
                )
            except ValueError:
                return None  # an aspect ratio the processor refuses itself: the item's error there
            return w, h
        pinpoints = getattr(processor, "image_grid_pinpoints", None)
        if pinpoints and not video:
            from transformers.image_processing_utils import select_best_resolution

            h, w = select_best_resolution((height, width), pinpoints)
            return int(w), int(h)
        return hf_preprocessed_size(getattr(processor, "size", None), width, height)

    def probe_payload(self) -> VisionPayload:
        """A known-good prepared item (the 32x32 probe image): the pipeline's canary that tells a
        broken model from bad inputs."""
        from PIL import Image

        h, w = _PROBE_SIZES[-1]
        return self.prepare([Image.fromarray(_probe_pixels(h, w))])

    @property
    def images_label(self) -> str | int:
        return {1: "first", None: "all"}.get(self.images, self.images)

    def select_images(self, images: Sequence) -> list:
        """The images of an item that go in: the first, all, or the first N."""
        return list(images[: self.images]) if self.images is not None else list(images)

    def verify_assembly(self, images: Sequence[Image.Image]) -> None:
        """Check that :meth:`assemble` of the images prepared one by one equals the processor's
        own batch of them (one image per prompt; images that cannot share a batch are compared in
        groups that can), tensor for tensor; ConfigError where not."""
        import torch

        payloads = [self.prepare([image]) for image in images]
        groups: dict[Hashable, list[int]] = {}
        for i, payload in enumerate(payloads):
            groups.setdefault(self.batch_key(payload), []).append(i)
        text = self.prompt_text(images=1)
        for members in groups.values():
            theirs = self._call([[images[i]] for i in members], [text] * len(members))
            theirs = {k: v for k, v in theirs.items() if isinstance(v, torch.Tensor)}
            ours = self.assemble([payloads[i] for i in members]).inputs
            if ours.keys() != theirs.keys():
                raise ConfigError(
                    f"caption model {self.name!r}: its processor's batch holds {sorted(theirs)}, the "
                    f"assembled one {sorted(ours)}"
                )
            for key, value in theirs.items():
                if ours[key].shape != value.shape or not torch.equal(ours[key], value):
                    raise ConfigError(
                        f"caption model {self.name!r}: batches of its processor ({type(self.processor).__name__}) "
                        f"cannot be assembled from items prepared one by one ({key!r} differs: "
                        f"{tuple(value.shape)} from the processor, {tuple(ours[key].shape)} assembled)"
                    )

    # -- CPU side -----------------------------------------------------------------------------------
    def _call(self, images: list | None, text: list[str], videos: list | None = None, **extra) -> dict[str, Any]:
        kwargs = {**self.processor_kwargs, **extra, **self._text_kwargs(text[0])}
        if self.tokenizer.padding_side != "left":
            self.tokenizer.padding_side = "left"  # the processor's own batches, as generation needs them
        inputs = self.processor(images=images, text=text, videos=videos, padding=True, return_tensors="pt", **kwargs)
        return dict(inputs)

    def prepare(self, item: Sequence[Image.Image | bytes] | Image.Image | bytes | VideoClip) -> VisionPayload:
        """One item through the model's processor, pictures and prompt together: its images (PIL
        images, or encoded bytes decoded here; :meth:`select_images` picks which), or a
        :class:`VideoClip` (native video, or the grid of its frames). A picture that cannot be
        decoded or processed is the item's ItemError ("decode"); a processor call that fails for a
        reason of its own is raised."""
        if isinstance(item, VideoClip):
            return self._prepare_video(item)
        images = [item] if not isinstance(item, (list, tuple)) else list(item)
        if not images:
            raise ItemError("input", "no image")
        images = [_decoded(image) for image in self.select_images(images)]
        text = self.prompt_text(images=len(images))
        outputs = self._processed(lambda: self._call([images], [text]))
        return self._payload(outputs, kind="images", pictures=len(images))

    def _prepare_video(self, clip: VideoClip) -> VisionPayload:
        if self.video != "native":
            from itemlens.extractors.video import frame_grid

            grid = frame_grid(clip.frames)
            outputs = self._processed(lambda: self._call([[grid]], [self.prompt_text(images=1)]))
            return self._payload(outputs, kind="frame grid", pictures=len(clip.frames))
        videos_kwargs = {
            **self.processor_kwargs.get("videos_kwargs", {}),
            "video_metadata": [clip.metadata()],
            "do_sample_frames": False,
        }
        outputs = self._processed(
            lambda: self._call(None, [self.prompt_text(video=True)], videos=[clip.frames], videos_kwargs=videos_kwargs)
        )
        return self._payload(outputs, kind="video", pictures=len(clip.frames))

    @staticmethod
    def _processed(call) -> dict[str, Any]:
        try:
            return call()
        except ItemError:
            raise
        except (ValueError, OSError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as exc:
            # a picture the processor cannot take (too small, too thin, truncated data): this item's
            raise ItemError("decode", f"preprocessing failed: {type(exc).__name__}: {exc}") from None

    def _payload(self, outputs: dict[str, Any], *, kind: str, pictures: int) -> VisionPayload:
        tensors = {k: _to_numpy(v) for k, v in outputs.items() if v is not None}
        length = int(tensors["input_ids"].shape[-1])
        return VisionPayload(
            tensors=tensors,
            vision_tokens=length - self._text_only_tokens,
            prompt_tokens=length,
            kind=kind,
            pictures=pictures,
        )

    # -- accelerator side ---------------------------------------------------------------------------
    def batch_key(self, payload: VisionPayload) -> Hashable:
        """Items with equal keys can share a batch: the same outputs, with equal shapes on every
        axis the batch neither pads nor concatenates along."""
        parts = []
        for name, array in sorted(payload.tensors.items()):
            if name in _TOKEN_KEYS:
                parts.append((name, array.ndim))
            else:
                padded = self.padded_axes.get(name, ())
                parts.append(
                    (name, tuple(-1 if axis in padded else size for axis, size in enumerate(array.shape) if axis > 0))
                )
        return tuple(parts)

    def assemble(self, payloads: Sequence[VisionPayload]) -> AssembledBatch:
        """The processor's batch for these items: token-aligned tensors padded on the left, vision
        tensors (padded where the processor pads, then) concatenated along their first axis."""
        if not payloads:
            raise ValueError("assemble needs at least one item")
        keys = {self.batch_key(p) for p in payloads}
        if len(keys) > 1:
            raise ValueError(
                "these items cannot share a batch (their outputs differ in shape: "
                f"{sorted(map(str, keys))}); cut batches with plan_batches(..., keys=[batch_key(p) ...])"
            )
        length = max(p.prompt_tokens for p in payloads)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        inputs: dict[str, torch.Tensor] = {}
        for name in payloads[0].tensors:
            arrays = [p.tensors[name] for p in payloads]
            if name in _TOKEN_KEYS and arrays[0].ndim == 2:
                fill = pad_id if name == "input_ids" else 0
                arrays = [np.pad(a, ((0, 0), (length - a.shape[1], 0)), constant_values=fill) for a in arrays]
            elif name in self.padded_axes:
                axes = self.padded_axes[name]
                target = [max(a.shape[axis] for a in arrays) for axis in range(arrays[0].ndim)]
                arrays = [
                    np.pad(a, [(0, target[axis] - a.shape[axis] if axis in axes else 0) for axis in range(a.ndim)])
                    for a in arrays
                ]
            inputs[name] = _to_torch(np.concatenate(arrays, axis=0))
        return AssembledBatch(
            inputs=inputs,
            vision_tokens=[p.vision_tokens for p in payloads],
            prompt_tokens=[p.prompt_tokens for p in payloads],
        )

    def decode(self, tokens: Sequence[Sequence[int]]) -> list[str]:
        """Captions from generated tokens (special tokens dropped, whitespace stripped)."""
        return [text.strip() for text in self.tokenizer.batch_decode(list(tokens), skip_special_tokens=True)]


def _images_choice(images: str | int) -> int | None:
    """``first`` -> 1, ``all`` -> None (no limit), N -> N."""
    if images == "first":
        return 1
    if images == "all":
        return None
    if isinstance(images, int) and not isinstance(images, bool) and images >= 1:
        return images
    raise ConfigError(f"images must be 'first', 'all' or a number >= 1, got {images!r}")


def _decoded(image):
    if isinstance(image, (bytes, bytearray, memoryview)):
        from itemlens.extractors.images import decode_image

        return decode_image(bytes(image))
    return image


def _probe_pixels(height: int, width: int) -> np.ndarray:
    """A smooth colour ramp (deterministic, not flat: flat images can be special-cased)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)


# -- generation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated: greedy (``num_beams`` 1) or beam search, at most
    ``max_new_tokens`` tokens each."""

    max_new_tokens: int = 40
    num_beams: int = 1


@dataclass
class Generated:
    """Per item: the new tokens (up to and including the first end-of-sequence token, nothing
    after it), the vision tokens its prompt held and the tokens generated (``len(tokens)``)."""

    tokens: list[list[int]]
    vision_tokens: list[int]
    generated_tokens: list[int]


def generate(model, batch: AssembledBatch, settings: GenerationSettings = GenerationSettings()) -> Generated:
    """Run ``model.generate`` on an assembled batch; the one place captions are generated (a
    serving engine would replace this function, not preparation). Pixel inputs take the model's
    dtype; other floating-point inputs keep theirs: Qwen2.5-VL multiplies ``second_per_grid_ts``
    into its temporal position ids, which bf16 would round (the model card moves the inputs to
    the device and leaves their dtypes)."""
    import torch

    inputs = {
        k: v.to(model.device, dtype=model.dtype)
        if k.startswith("pixel_values") and torch.is_floating_point(v)
        else v.to(model.device)
        for k, v in batch.inputs.items()
    }
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, do_sample=False
        )
    if not getattr(model.config.get_text_config(), "is_encoder_decoder", False):
        out = out[:, inputs["input_ids"].shape[1] :]  # a decoder-only model returns the prompt first
    stop = _eos_ids(model)
    tokens = []
    for row in out.cpu().tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        tokens.append(row[:end])
    return Generated(tokens=tokens, vision_tokens=list(batch.vision_tokens), generated_tokens=[len(t) for t in tokens])


@dataclass(frozen=True)
class Caption:
    """One item's caption, its tokens and its counts (see :class:`Generated`)."""

    text: str
    tokens: list[int]
    vision_tokens: int
    generated_tokens: int


def caption_items(
    inputs: VisionInputs,
    model,
    payloads: Sequence[VisionPayload],
    settings: GenerationSettings = GenerationSettings(),
    *,
    budget: int | None = None,
    max_items: int | None = None,
    generate_fn=None,
) -> list[Caption]:
    """The actor's whole job for a block of prepared items: cut them into batches
    (:func:`plan_batches`: by vision tokens, under ``budget`` token slots, items that cannot
    share a batch apart), assemble and generate each batch, decode; captions in the order of
    ``payloads``. ``generate_fn(model, batch, settings) -> Generated`` replaces :func:`generate`
    (a serving engine)."""
    generate_fn = generate_fn or generate
    batches = plan_batches(
        [p.vision_tokens for p in payloads],
        [p.prompt_tokens for p in payloads],
        budget=budget if budget is not None else 2**62,
        max_new_tokens=settings.max_new_tokens,
        keys=[inputs.batch_key(p) for p in payloads],
        max_items=max_items,
    )
    captions: list[Caption | None] = [None] * len(payloads)
    for members in batches:
        out = generate_fn(model, inputs.assemble([payloads[i] for i in members]), settings)
        for i, tokens, text, vision, generated in zip(
            members, out.tokens, inputs.decode(out.tokens), out.vision_tokens, out.generated_tokens
        ):
            captions[i] = Caption(text=text, tokens=tokens, vision_tokens=vision, generated_tokens=generated)
    return captions


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


# -- batching -------------------------------------------------------------------------------------------


def plan_batches(
    vision_tokens: Sequence[int],
    prompt_tokens: Sequence[int],
    *,
    budget: int,
    max_new_tokens: int,
    keys: Sequence[Hashable] | None = None,
    max_items: int | None = None,
) -> list[list[int]]:
    """Cut items into batches under a token budget: indices grouped by ``keys`` (items of
    different keys never share a batch), ordered by vision tokens (then prompt tokens), and a
    batch closed when one more item would make ``items x (longest prompt + max_new_tokens)``,
    the token slots of a left-padded batch, exceed ``budget`` (or ``max_items``). An item over
    the budget alone is a batch of its own. Returns lists of indices into the inputs."""
    if len(vision_tokens) != len(prompt_tokens) or (keys is not None and len(keys) != len(vision_tokens)):
        raise ValueError("vision_tokens, prompt_tokens and keys need one entry per item")
    if budget < 1 or max_new_tokens < 0:
        raise ValueError(f"budget must be >= 1 and max_new_tokens >= 0, got {budget}, {max_new_tokens}")
    groups: dict[Hashable, list[int]] = {}
    for i in range(len(vision_tokens)):
        groups.setdefault(keys[i] if keys is not None else None, []).append(i)
    batches: list[list[int]] = []
    for members in groups.values():
        members.sort(key=lambda i: (vision_tokens[i], prompt_tokens[i], i))
        current: list[int] = []
        longest = 0
        for i in members:
            longest_with = max(longest, prompt_tokens[i])
            full = max_items is not None and len(current) >= max_items
            if current and (full or (len(current) + 1) * (longest_with + max_new_tokens) > budget):
                batches.append(current)
                current, longest_with = [], prompt_tokens[i]
            current.append(i)
            longest = longest_with
        if current:
            batches.append(current)
    return batches
