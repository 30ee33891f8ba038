"""``open-clip``: an open_clip CLIP model; image input uses the image tower, text input the
text tower (so an image feature can also be searched with text).

Weights: ``pretrained`` (an open_clip tag, e.g. ``laion2b_s34b_b79k``) or ``checkpoint`` (a
local ``.safetensors``/``.pt`` file, loaded with ``weights_only=True``). One of the two is
required and loading goes through ``open_clip.create_model(..., require_pretrained=True)``:
a model is never left with random weights. ``model_config_file`` registers an architecture
JSON with ``open_clip.add_model_config`` (how the tests build their tiny CLIP).

Preprocessing is open_clip's own ``image_transform_v2`` with the configuration that
``create_model_and_transforms`` would use, built in CPU workers from an architecture
instantiated on the ``meta`` device (no weights, no memory).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors.base import Encoder, autocast
from itemlens.extractors.spec import FeatureSpec
from itemlens.extractors.weights import (
    cached_hub_file,
    check_loadable,
    file_digest,
    hub_offline,
    missing_hub_weights,
    require_local_path,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def _register_model_config(path: str) -> None:
    """Make open_clip's architecture named after ``path``'s stem the one that file defines.
    open_clip keeps one registry keyed by file stem, so two features whose config files share a
    name (two versions of tiny-clip.json) would take each other's: every use registers its own
    file again when the registry holds another."""
    import open_clip

    with open(path) as f:
        wanted = json.load(f)
    if open_clip.get_model_config(Path(path).stem) != wanted:
        open_clip.add_model_config(path)


class OpenClipSpec(FeatureSpec):
    """``open-clip``: an open_clip architecture with a pretrained tag or a local checkpoint."""

    encoder: Literal["open-clip"]
    model: str = Field(description="an open_clip architecture name (open_clip.list_models())")
    pretrained: str | None = Field(None, description="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    checkpoint: str | None = Field(
        None, description="local weights file (.safetensors, or a .pt checkpoint loaded with weights_only)"
    )
    model_config_file: str | None = Field(
        None, description="an open_clip architecture JSON to register (its file stem is the model name)"
    )
    pooling: Literal["mean", "per_image"] = Field(
        "mean", description="several images per item: the mean of their vectors (re-normalized), or kept per image"
    )


class VideoFramesSpec(OpenClipSpec):
    """``video-frames``: the same model over frames sampled from each video."""

    encoder: Literal["video-frames"]
    pooling: Literal["mean", "per_frame"] = Field(
        "mean", description="a video's frames: the mean of their vectors (re-normalized), or kept per frame"
    )


class OpenClipEncoder(Encoder):
    name = "open-clip"
    spec_model = OpenClipSpec
    input_kinds = frozenset({"text", "image"})

    @classmethod
    def validate_spec(cls, spec: OpenClipSpec) -> None:
        super().validate_spec(spec)
        if ":" in spec.model:
            raise ConfigError(
                f"open-clip model {spec.model!r}: give an architecture name (see open_clip.list_models()) "
                "with `pretrained:` (a tag) or `checkpoint:` (a local file), not a schema prefix"
            )
        if spec.input.kind == "text" and spec.pooling != "mean":
            raise ConfigError(
                f"{spec.encoder} feature with text input and pooling {spec.pooling!r}: a text is one vector; "
                f"{spec.pooling} keeps one per {'image' if spec.pooling == 'per_image' else 'frame'}, "
                "so it takes image or video input"
            )
        if (spec.pretrained is None) == (spec.checkpoint is None):
            raise ConfigError(
                f"open-clip feature with model {spec.model!r} needs exactly one of `pretrained:` (an open_clip "
                "tag such as laion2b_s34b_b79k) or `checkpoint:` (a local weights file); itemlens never "
                "encodes with random weights"
            )

    # -- architecture and identity ------------------------------------------------------
    def _model_config(self) -> dict[str, Any]:
        import open_clip

        if self.spec.model_config_file:
            path = require_local_path(self.spec.model_config_file, "open-clip model_config_file")
            if path.stem != self.spec.model:
                raise ConfigError(
                    f"model_config_file {path} defines model {path.stem!r}, but the spec's model is "
                    f"{self.spec.model!r}; open_clip names a model after its config file"
                )
            _register_model_config(str(path.resolve()))
        config = open_clip.get_model_config(self.spec.model)
        if config is None:
            close = difflib.get_close_matches(self.spec.model, open_clip.list_models(), n=5)
            raise ConfigError(
                f"open_clip has no model {self.spec.model!r}"
                + (f"; close names: {', '.join(close)}" if close else "")
                + " (all: open_clip.list_models(); a custom one needs model_config_file)"
            )
        return config

    def _pretrained_cfg(self) -> dict[str, Any]:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.spec.model, self.spec.pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(self.spec.model)
            raise ConfigError(
                f"open_clip has no pretrained tag {self.spec.pretrained!r} for {self.spec.model!r}; "
                f"its tags: {', '.join(tags) or '(none: use checkpoint:)'}"
            )
        return cfg

    def weights_identity(self) -> str:
        arch = json.dumps(self._model_config(), sort_keys=True, default=str)
        identity = f"arch-sha256:{hashlib.sha256(arch.encode()).hexdigest()}"
        if self.spec.checkpoint:
            path = require_local_path(self.spec.checkpoint, "open-clip checkpoint")
            return f"{identity}|file-sha256:{file_digest(path)}"
        cfg = self._pretrained_cfg()
        source = cfg.get("hf_hub") or cfg.get("url") or cfg.get("file") or ""
        return f"{identity}|open_clip:{self.spec.model}/{self.spec.pretrained}:{source}"

    def check_weights(self) -> None:
        self._model_config()
        if self.spec.checkpoint:
            path = require_local_path(self.spec.checkpoint, "open-clip checkpoint")
            check_loadable(path, "open-clip checkpoint")
            return
        cfg = self._pretrained_cfg()
        if not hub_offline():
            return  # workers download on first use
        hub = cfg.get("hf_hub", "")
        if hub:
            from open_clip.constants import HF_WEIGHTS_NAME
            from open_clip.pretrained import _get_safe_alternatives

            repo_id, filename = os.path.split(hub)
            filename = filename or HF_WEIGHTS_NAME
            # the files open_clip's own download looks for, in its order (safetensors first)
            candidates = [*_get_safe_alternatives(filename), filename]
            if cached_hub_file(repo_id, candidates) is None:
                raise missing_hub_weights(
                    f"open_clip weights for {self.spec.model} (pretrained={self.spec.pretrained!r})",
                    repo_id,
                    candidates,
                    None,
                )
        elif cfg.get("url"):
            target = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
            if not target.is_file():
                raise WeightsNotFoundError(
                    f"open_clip weights for {self.spec.model} (pretrained={self.spec.pretrained!r}) not found: "
                    f"looked for {target} (HF_HUB_OFFLINE=1, so nothing was downloaded)"
                )

    # -- CPU side -----------------------------------------------------------------------
    def preprocess_config(self) -> dict[str, Any]:
        """The PreprocessCfg that create_model_and_transforms would use for this spec."""
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        self._model_config()
        cfg = asdict(PreprocessCfg())
        if self.spec.pretrained:
            cfg = merge_preprocess_dict(cfg, self._pretrained_cfg())
        # The architecture without weights, on the meta device: cheap, no memory, never used
        # to encode. Silence open_clip's "initialized randomly" warning for it alone.
        logging.disable(logging.WARNING)
        try:
            with torch.device("meta"):
                skeleton = open_clip.create_model(self.spec.model, device="meta")
        finally:
            logging.disable(logging.NOTSET)
        cfg["size"] = skeleton.visual.image_size
        return cfg

    @functools.cached_property
    def _preprocess(self) -> dict[str, Any]:
        return self.preprocess_config()

    def image_transform(self) -> Callable[[Image.Image], np.ndarray]:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        transform = image_transform_v2(PreprocessCfg(**self._preprocess), is_train=False)

        def preprocess(image: Image.Image) -> np.ndarray:
            return transform(image).numpy().astype(np.float32, copy=False)

        return preprocess

    def preprocessed_size(self, width: int, height: int) -> tuple[int, int]:
        from itemlens.extractors.images import resized_size

        cfg = self._preprocess
        return resized_size(cfg["size"], cfg.get("resize_mode") or "shortest", width, height)

    # -- accelerator side ---------------------------------------------------------------
    def _load(self, device: str) -> None:
        import open_clip

        self._model_config()
        self.check_weights()
        try:
            model = open_clip.create_model(
                self.spec.model,
                pretrained=str(Path(self.spec.checkpoint).expanduser())
                if self.spec.checkpoint
                else self.spec.pretrained,
                device=device,
                precision="fp32",
                require_pretrained=True,
                weights_only=True,
            )
        except RuntimeError as exc:
            if "download" in str(exc).lower():
                cfg = self._pretrained_cfg()
                raise WeightsNotFoundError(
                    f"open_clip weights for {self.spec.model} (pretrained={self.spec.pretrained!r}, "
                    f"{cfg.get('hf_hub') or cfg.get('url')}) could not be fetched: {exc}"
                ) from exc
            raise
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(self.spec.model)
        self._dim = int(self._model_config()["embed_dim"])

    @property
    def dim(self) -> int:
        return self._dim

    def _finish(self, features) -> np.ndarray:
        import torch.nn.functional as F

        features = features.float()
        if self.spec.normalize:
            features = F.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        self.load()
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.device.startswith("cuda"):
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            return self._finish(self.model.encode_image(x))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            return self._finish(self.model.encode_text(tokens))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["weights"] = self.spec.checkpoint or f"{self.spec.model}/{self.spec.pretrained}"
        return info


class VideoFramesEncoder(OpenClipEncoder):
    """``video-frames``: an open_clip image tower over frames sampled from each video (PyAV,
    in CPU workers: see extractors/video.py), mean-pooled per video (``pooling: mean``) or kept
    per frame (``pooling: per_frame``). Text input goes through the text tower, so a video
    feature can be searched with text as an image feature can."""

    name = "video-frames"
    spec_model = VideoFramesSpec
    input_kinds = frozenset({"video", "text"})
