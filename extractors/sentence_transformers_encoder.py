"""``sentence-transformers``: a SentenceTransformer model (hub name or local folder).

Encoding is the library's own ``encode`` (its tokenizer, pooling and normalisation), so a
stored vector equals what ``SentenceTransformer(model).encode(text,
normalize_embeddings=...)`` returns for the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors.base import Encoder, autocast
from itemlens.extractors.spec import FeatureSpec
from itemlens.extractors.weights import (
    cached_hub_file, folder_digest, hub_offline, missing_hub_weights,
)

_MODEL_FILES = ["modules.json", "config.json"]


class SentenceTransformerEncoder(Encoder):
    name = "sentence-transformers"
    input_kinds = frozenset({"text"})

    @classmethod
    def validate_spec(cls, spec: FeatureSpec) -> None:
        super().validate_spec(spec)
        cls._reject_fields(spec, "pretrained", "checkpoint", "model_config_file", "token_pooling", "instruction",
                           "prompt", "max_new_tokens", "num_beams", "window_seconds")

    # -- identity ---------------------------------------------------------------------
    def _folder(self) -> Path | None:
        path = Path(self.spec.model).expanduser()
        if path.is_dir():
            return path
        if self.spec.model.startswith((".", "/", "~")) or self.spec.model.count("/") > 1:
            raise WeightsNotFoundError(
                f"sentence-transformers model folder not found: looked for {path.resolve()}")
        return None  # a hub id

    def weights_identity(self) -> str:
        folder = self._folder()
        if folder is not None:
            return f"folder-sha256:{folder_digest(folder)}"
        return f"hf:{self.spec.model}@{self.spec.revision or 'main'}"

    def check_weights(self) -> None:
        folder = self._folder()
        if folder is not None:
            if not any((folder / name).is_file() for name in _MODEL_FILES):
                raise WeightsNotFoundError(
                    f"{folder.resolve()} is not a sentence-transformers or transformers model folder "
                    f"(looked for {' or '.join(_MODEL_FILES)})")
        elif hub_offline() and cached_hub_file(self.spec.model, _MODEL_FILES, self.spec.revision) is None:
            error = missing_hub_weights(
                f"sentence-transformers model {self.spec.model!r}", self.spec.model, _MODEL_FILES, self.spec.revision)
            raise WeightsNotFoundError(
                f"{error} (There is no local folder {Path(self.spec.model).resolve()} either.)")

    # -- model ------------------------------------------------------------------------
    def _load(self, device: str) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor per load is noise in a pipeline
        self.check_weights()
        folder = self._folder()
        try:
            model = SentenceTransformer(
                str(folder) if folder is not None else self.spec.model,
                device=device,
                revision=self.spec.revision,
                trust_remote_code=self.spec.trust_remote_code,
                local_files_only=hub_offline(),
            )
        except OSError as exc:
            if folder is None:
                raise missing_hub_weights(
                    f"sentence-transformers model {self.spec.model!r}", self.spec.model, _MODEL_FILES,
                    self.spec.revision) from exc
            raise WeightsNotFoundError(f"cannot load sentence-transformers model from {folder}: {exc}") from exc
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
