"""A semantic-ID definition: ``semantic_ids: {name: spec}`` in the configuration (input
features and weights, the quantizer and its options, how collisions are made unique) and the
fingerprint of what changes the IDs."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Literal
from pydantic import Field, field_validator
from itemlens.config_types import NAME, StrictModel
if TYPE_CHECKING:  # pragma: no cover
    pass




def check_inputs(value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
    """The ``features:`` of a derived artifact: feature names, or names -> weights > 0."""
    if not list(value):
        raise ValueError("name at least one input feature")
    for name in value:
        if not NAME.match(name):
            raise ValueError(f"{name!r} is not a feature name")
    if isinstance(value, dict) and any(w <= 0 for w in value.values()):
        raise ValueError("feature weights must be > 0")
    return value


class VaeParams(StrictModel):
    """RQ-VAE (TIGER's defaults: latent 32, 512-256 MLP, beta 0.25)."""

    latent_dim: int = Field(32, ge=1)
    hidden: list[int] = [512, 256]
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.25, ge=0)
    gradient: Literal["ste", "rotation"] = "ste"
    restart_dead_codes: bool = True


class SemanticIdSpec(StrictModel):
    """``semantic_ids: {name: spec}`` in the configuration."""

    features: list[str] | dict[str, float] = Field(description="input features, or feature -> weight")
    method: str = Field("rq-kmeans", description="the quantizer: a registered method (rq-kmeans, rq-vae ...)")
    levels: int = Field(3, ge=1, le=16)
    codebook_size: int = Field(256, ge=2, le=65536)
    normalize_residual: bool = False          # GRID: L2-normalize the residual before each level
    balanced: bool = False                    # OneRec: at most ceil(N/K) items per code (rq-kmeans)
    uniqueness: Literal["suffix", "nearest-free"] = "suffix"
    kmeans_iterations: int = Field(20, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"   # rq-vae training; k-means runs on faiss-cpu
    vae: VaeParams = VaeParams()

    @field_validator("features")
    @classmethod
    def _inputs(cls, value):
        return check_inputs(value)

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        from itemlens.store.semantic_ids.quantizers import quantizer_names

        if value not in quantizer_names():
            raise ValueError(f"unknown method {value!r}; methods: {', '.join(quantizer_names())}")
        return value

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.features) if isinstance(self.features, dict) else {f: 1.0 for f in self.features}

    @property
    def width(self) -> int:
        return self.levels + (1 if self.uniqueness == "suffix" else 0)

    def fingerprint(self, inputs: dict[str, str]) -> str:
        """The definition without execution details (device), plus its inputs' versions."""
        doc = self.model_dump(mode="json", exclude={"device"})
        if self.method != "rq-vae":
            doc.pop("vae")
        blob = json.dumps({"spec": doc, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
