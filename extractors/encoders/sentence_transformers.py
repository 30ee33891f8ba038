"""``sentence-transformers``: a SentenceTransformer model (hub name or local folder).

Encoding is the library's own ``encode`` (its tokenizer, pooling and normalisation), so a
stored vector equals what ``SentenceTransformer(model).encode(text,
normalize_embeddings=...)`` returns for the same text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from itemlens.errors import ConfigError
from itemlens.extractors.base import Encoder, autocast
from itemlens.extractors.spec import HubModelSpec
from itemlens.extractors.weights import ModelFiles

_MODEL_FILES = ["modules.json", "config.json"]


class SentenceTransformersSpec(HubModelSpec):
    """``sentence-transformers``: a SentenceTransformer model (hub id or local folder)."""

    encoder: Literal["sentence-transformers"]
    max_seq_length: int | None = Field(None, ge=1, description="truncation, in tokens (default: the model's)")


class SentenceTransformerEncoder(Encoder):
    name = "sentence-transformers"
    spec_model = SentenceTransformersSpec
    input_kinds = frozenset({"text"})

    # -- identity ---------------------------------------------------------------------
    @functools.cached_property
    def files(self) -> ModelFiles:
        return ModelFiles(self.spec, "sentence-transformers model")

    def weights_identity(self) -> str:
        return self.files.identity()

    def check_weights(self) -> None:
        self.files.require(_MODEL_FILES, kind="sentence-transformers or transformers model")

    # -- model ------------------------------------------------------------------------
    def _load(self, device: str) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor per load is noise in a pipeline
        self.check_weights()
        try:
            model = SentenceTransformer(self.files.source, device=device, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _MODEL_FILES) from exc
        if self.spec.max_seq_length is not None:
            model.max_seq_length = self.spec.max_seq_length
        model.eval()
        self.model = model

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"cannot tell the output size of {self.spec.model!r}")
        return int(dim)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            out = self.model.encode(
                texts,
                batch_size=len(texts),
                normalize_embeddings=self.spec.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if hasattr(self, "model"):
            info.update(max_seq_length=self.model.max_seq_length, dim=self.dim)
        return info
