"""The encoder interface every registered encoder implements.

An encoder is built from a :class:`FeatureSpec` and used in three places:

* on the driver, without loading the model: :meth:`Encoder.check_weights` (fail before any
  work when weights are missing) and :meth:`Encoder.fingerprint`;
* in CPU workers: :meth:`Encoder.image_transform`, the encoder's own preprocessing, so that
  tensors, not images, travel to the accelerator;
* in the accelerator actor (or the client, for online queries): :meth:`Encoder.load`, then
  :meth:`Encoder.encode_texts` / :meth:`Encoder.encode_images`.

Encoders return float32 arrays; casting to the stored dtype is the store's business.
No module here imports torch at import time.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from itemlens.errors import ConfigError
from itemlens.extractors.spec import FeatureSpec, fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@dataclass(frozen=True)
class AudioFormat:
    """What an audio encoder takes: waveforms at ``sample_rate`` with ``channels`` channels,
    at most ``window_seconds`` long (longer clips are cut into windows and pooled)."""

    sample_rate: int
    channels: int = 1
    window_seconds: float = 30.0

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))


class ItemError(Exception):
    """One item's input cannot be encoded; it becomes an errors row and the job goes on.

    ``stage`` is where it failed: ``input`` (a wrong-typed cell, a text with no word),
    ``read`` (file missing or unreadable), ``decode`` (not a usable image) or ``encode``; or
    ``absent`` when the item has no such input at all (an empty cell: a song has no photo),
    recorded apart from failures.
    """

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason

    def __reduce__(self):  # pickled as itself (from an encoder host, workflows/encoder_hosts.py)
        return type(self), (self.stage, self.reason)


class Encoder(ABC):
    """Base class of the registered encoders."""

    name: ClassVar[str]
    #: the encoder's options: a FeatureSpec subclass with the fields a feature of this encoder
    #: may set beyond the common ones (FeatureSpec itself: no options of its own)
    spec_model: ClassVar[type[FeatureSpec]] = FeatureSpec
    #: catalog inputs it can encode ("text", "image", "video", "audio")
    input_kinds: ClassVar[frozenset[str]]
    #: what a feature of this encoder stores per item: "vector" or "caption"
    output_kind: ClassVar[str] = "vector"
    #: bump when itemlens changes how inputs become vectors, so fingerprints change too
    processing_version: ClassVar[str] = "1"

    def __init__(self, spec: FeatureSpec):
        self.validate_spec(spec)
        self.spec = spec
        self.device: str | None = None

    # -- configuration ---------------------------------------------------------------
    @classmethod
    def validate_spec(cls, spec: FeatureSpec) -> None:
        """Raise ConfigError for a spec this encoder cannot honour (its fields are checked by
        ``spec_model`` already: here, what depends on several of them)."""
        if not isinstance(spec, cls.spec_model):
            raise ConfigError(
                f"encoder {cls.name!r} takes a {cls.spec_model.__name__}, not a "
                f"{type(spec).__name__}: build specs with FeatureSpec.model_validate"
            )
        if spec.input.kind not in cls.input_kinds:
            raise ConfigError(
                f"encoder {cls.name!r} cannot encode {spec.input.kind} input; "
                f"it takes: {', '.join(sorted(cls.input_kinds))}"
            )

    # -- identity (driver side, no model load) ----------------------------------------
    @abstractmethod
    def weights_identity(self) -> str:
        """A string that changes whenever the weights (or architecture) change."""

    def check_weights(self) -> None:  # noqa: B027 (an optional hook: most encoders have nothing to check)
        """Raise WeightsNotFoundError now if the weights can be seen to be missing."""

    @functools.cached_property
    def _fingerprint(self) -> str:
        return fingerprint(self.spec, self.weights_identity(), f"{self.name}/{self.processing_version}")

    def fingerprint(self) -> str:
        return self._fingerprint

    # -- CPU side ---------------------------------------------------------------------
    def image_transform(self) -> Callable[[Image.Image], np.ndarray]:
        """The encoder's own image preprocessing: RGB PIL image -> float32 [3, H, W]."""
        raise ConfigError(f"encoder {self.name!r} does not take images")

    def preprocessed_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The largest size (width, height) an image of ``width`` x ``height`` takes inside
        :meth:`image_transform` (after its resize, before any crop), or None when the encoder
        cannot say. The decode stage refuses images this would blow up (a 1 x 100,000 strip
        resized to 224 pixels on its short side) before the transform runs."""
        return None

    # -- accelerator side -------------------------------------------------------------
    def load(self, device: str | None = None) -> Encoder:
        """Load the weights (once) onto ``device`` (default: cuda if available, else cpu)."""
        if self.device is None:
            self.device = device or default_device()
            self._load(self.device)
        return self

    @abstractmethod
    def _load(self, device: str) -> None: ...

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output vector size (after load)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ConfigError(f"encoder {self.name!r} does not take text")

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """Encode preprocessed images, float32 [n, 3, H, W] -> float32 [n, dim]."""
        raise ConfigError(f"encoder {self.name!r} does not take images")

    def audio_format(self) -> AudioFormat:
        """The model's sample rate, channels and window (from its config files, without
        loading weights): CPU workers decode and resample audio to it."""
        raise ConfigError(f"encoder {self.name!r} does not take audio")

    def encode_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Encode waveforms at :meth:`audio_format`'s rate, each float32 [channels, samples]
        and at most one window long, -> float32 [n, dim] (one vector per clip, unnormalized:
        the caller pools an item's windows, then normalizes)."""
        raise ConfigError(f"encoder {self.name!r} does not take audio")

    def describe(self) -> dict[str, Any]:
        """What `itemlens show` prints about the model besides the spec."""
        return {"encoder": self.name}


# -- device and precision helpers shared by the torch encoders --------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device: str, precision: str):
    """Mixed precision on GPU (bf16 where supported, else fp16); full precision on CPU."""
    import torch

    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return contextlib.nullcontext()
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
