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

    latent_dim: int = Field(32, ge=1, description="size of the latent vector the codebooks quantize")
    hidden: list[int] = Field([512, 256], description="the MLP encoder's hidden layer sizes (the decoder mirrors them)")
    epochs: int = Field(50, ge=1, description="training epochs")
    batch_size: int = Field(1024, ge=1, description="items per training step")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    beta: float = Field(0.25, ge=0, description="weight of the commitment loss at each level")
    gradient: Literal["ste", "rotation"] = Field(
        "ste", description=("how gradients pass the quantizer: ste (straight-through) or rotation (the rotation trick)")
    )
    restart_dead_codes: bool = Field(True, description="codes unused in an epoch restart on residuals of random items")


class SemanticIdSpec(StrictModel):
    """``semantic_ids: {name: spec}`` in the configuration."""

    features: list[str] | dict[str, float] = Field(description="input features, or feature -> weight")
    method: str = Field("rq-kmeans", description="the quantizer: a registered method (rq-kmeans, rq-vae ...)")
    levels: int = Field(3, ge=1, le=16, description="codes per item from the quantizer (before a uniqueness suffix)")
    codebook_size: int = Field(256, ge=2, le=65536, description="codes per level (K)")
    normalize_residual: bool = Field(
        False, description=("GRID: k-means on the L2-normalized residual at each level (rq-kmeans)")
    )
    balanced: bool = Field(False, description="OneRec: at most ceil(N/K) training items per code (rq-kmeans)")
    uniqueness: Literal["suffix", "nearest-free"] = Field(
        "suffix",
        description=(
            "suffix: an extra code numbers the items that share a tuple; nearest-free: the tuple keeps its length and "
            "a taken one moves to the nearest free last-level code"
        ),
    )
    kmeans_iterations: int = Field(20, ge=1, description="k-means iterations per level (rq-kmeans)")
    sample: int | None = Field(
        None,
        ge=2,
        description=(
            "items the quantizer trains on, drawn with the seed (default 256 per code, at most 262,144; every item "
            "when there are fewer); every item is then coded with the trained quantizer"
        ),
    )
    seed: int = Field(0, description="random seed: the same inputs and seed give the same IDs")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "where rq-vae trains (auto: cuda where there is one); k-means runs on faiss-cpu; "
            "not part of the fingerprint"
        ),
    )
    vae: VaeParams = Field(VaeParams(), description="RQ-VAE's training (method: rq-vae only)")

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
        return dict(self.features) if isinstance(self.features, dict) else dict.fromkeys(self.features, 1.0)

    @property
    def width(self) -> int:
        return self.levels + (1 if self.uniqueness == "suffix" else 0)

    def fingerprint(self, inputs: dict[str, str]) -> str:
        """The definition without execution details (device), plus its inputs' versions."""
        doc = self.model_dump(mode="json", exclude={"device"})
        if doc.get("sample") is None:  # the default: definitions written before it keep their versions
            doc.pop("sample", None)
        if self.method != "rq-vae":
            doc.pop("vae")
        blob = json.dumps({"spec": doc, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
