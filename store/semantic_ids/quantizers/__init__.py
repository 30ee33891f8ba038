"""Residual quantizers behind semantic IDs, registered by method name.

A quantizer maps a vector to ``levels`` codes in ``[0, codebook_size)``: level 1 quantizes the
vector, each later level what the earlier ones left (the residual). It is trained once
(``fit``) and then frozen: ``encode`` of new vectors uses the stored codebooks and never
trains, which is what keeps the IDs of a refreshed store stable. Built-in methods: ``rq-kmeans``
(rq_kmeans.py) and ``rq-vae`` (rq_vae.py); a new method is one module with a class of the same
interface (``from_params``, ``fit``, ``fit_encode``, ``encode``, ``decode``, ``state``,
``load_state``) and one :func:`register_quantizer` call.

Everything here imports numpy only at module level; faiss and torch when a quantizer is built.
Weights are saved with safetensors (no pickle)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from itemlens.errors import ConfigError
from itemlens.store.semantic_ids.quantizers.base import TRAININGS, Encoded

__all__ = ["TRAININGS", "Encoded", "build", "load", "quantizer_class", "quantizer_names", "register_quantizer", "save"]


_QUANTIZERS: dict[str, str] = {  # method -> "module:Class"
    "rq-kmeans": "itemlens.store.semantic_ids.quantizers.rq_kmeans:RQKMeans",
    "rq-vae": "itemlens.store.semantic_ids.quantizers.rq_vae:RQVAE",
}


def register_quantizer(name: str, target: str, *, replace: bool = False) -> None:
    """Add a method (``semantic_ids: {sid: {method: NAME}}``): ``target`` is ``"module:Class"``,
    imported when a quantizer of that method is built. A name is registered once unless
    ``replace=True``."""
    if name in _QUANTIZERS and not replace and _QUANTIZERS[name] != target:
        raise ConfigError(
            f"semantic-ID method {name!r} is already registered ({_QUANTIZERS[name]}); pass replace=True to replace it"
        )
    _QUANTIZERS[name] = target


def quantizer_names() -> list[str]:
    return list(_QUANTIZERS)


def quantizer_class(method: str):
    if method not in _QUANTIZERS:
        raise ConfigError(f"unknown semantic-ID method {method!r}; methods: {', '.join(_QUANTIZERS)}")
    module, _, name = _QUANTIZERS[method].partition(":")
    return getattr(importlib.import_module(module), name)


def build(method: str, params: dict[str, Any], input_dim: int):
    """A quantizer from a semantic-ID definition's method and fields."""
    return quantizer_class(method).from_params(params, input_dim)


def save(quantizer) -> bytes:
    from safetensors.numpy import save as save_tensors

    return save_tensors(
        {k: np.ascontiguousarray(v) for k, v in quantizer.state().items()}, metadata={"method": quantizer.method}
    )


def load(method: str, params: dict[str, Any], input_dim: int, blob: bytes):
    from safetensors.numpy import load as load_tensors

    return build(method, {**params, "device": "cpu"}, input_dim).load_state(load_tensors(blob))
