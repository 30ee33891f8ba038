"""A graph definition: ``graphs: {name: spec}`` in the configuration (features and fusion
weights, k, self-loops, the preset, exact or approximate search, an optional co-occurrence
input) and the fingerprint of what changes its stored lists."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator

from itemlens.config_types import StrictModel
from itemlens.store.graphs.presets import COOCCURRENCE, preset_names
from itemlens.store.semantic_ids import check_inputs


class InteractionsSpec(StrictModel):
    """Item co-occurrence from interactions: items two users' histories share, top-N per item."""

    path: str = Field(description="the interactions file (.csv, .tsv, .parquet, .jsonl), relative to the configuration")
    user_column: str = Field("user_id", description="its user id column")
    item_column: str = Field("item_id", description="its item id column (items the store does not know are ignored)")
    top_n: int = Field(10, ge=1, description="co-occurring items kept per item, by count")
    weight: float = Field(1.0, gt=0, description="the co-occurrence input's fusion weight")


class GraphSpec(StrictModel):
    """``graphs: {name: spec}`` in the configuration."""

    features: list[str] | dict[str, float] = Field(description="features, or feature -> fusion weight")
    k: int = Field(10, ge=1, le=1000, description="neighbours per item in the graph")
    depth: int | None = Field(
        None,
        ge=1,
        description=(
            "neighbours stored per item (default 2k): slack that lets a refresh merge lists instead of recomputing them"
        ),
    )
    self_loops: bool = Field(True, description="an item counts itself among its k, as FREEDOM and LATTICE build them")
    preset: str = Field(
        "freedom",
        description="how the lists become the matrix a model reads (a registered "
        "preset: freedom, dragon, lattice, mgcn, row, cosine, hypergraph ...)",
    )
    method: Literal["exact", "approximate"] = Field(
        "exact",
        description=(
            "exact: blocked matrix products; approximate: a faiss IVF index (a refresh searches with the stored "
            "centroids; --rebuild trains new ones)"
        ),
    )
    nprobe: int = Field(32, ge=1, description="approximate: IVF lists searched per item")
    nlist: int | None = Field(
        None,
        ge=1,
        description=(
            "approximate: IVF lists (default 4 x the square root of the items); each item costs about nlist + nprobe x "
            "items / nlist products"
        ),
    )
    block: int = Field(4096, ge=64, description="exact: rows per block of products")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description=("where the products run (auto: cuda where there is one); not part of the fingerprint")
    )
    interactions: InteractionsSpec | None = Field(
        None, description=("an item co-occurrence input from interactions, fused with the features")
    )

    @field_validator("features")
    @classmethod
    def _inputs(cls, value):
        return check_inputs(value)

    @field_validator("preset")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in preset_names():
            raise ValueError(f"unknown preset {value!r}; presets: {', '.join(preset_names())}")
        return value

    @property
    def list_depth(self) -> int:
        return max(self.depth or 2 * self.k, self.k)

    @property
    def weights(self) -> dict[str, float]:
        weights = dict(self.features) if isinstance(self.features, dict) else dict.fromkeys(self.features, 1.0)
        if self.interactions is not None:
            weights[COOCCURRENCE] = self.interactions.weight
        return weights

    def fingerprint(self, inputs: dict[str, str]) -> str:
        """What changes the stored lists: k, self-loops, method and the inputs' versions (the
        preset and fusion weights apply when read)."""
        doc = {
            "k": self.k,
            "depth": self.list_depth,
            "self_loops": self.self_loops,
            "method": self.method,
            "inputs": inputs,
            "nprobe": self.nprobe if self.method == "approximate" else None,
            **({"nlist": self.nlist} if self.nlist is not None and self.method == "approximate" else {}),
            "interactions": self.interactions.model_dump(exclude={"weight"}) if self.interactions else None,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
