"""itemlens: multimodal item features for recommender systems.

``import itemlens`` stays light (no torch, no Ray, no transformers): it hands on
:func:`connect` (and :func:`create`) and the public types, importing the store client on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "connect": "itemlens.store.client",
    "create": "itemlens.store.client",
    "Lens": "itemlens.store.client",
    "FeatureInfo": "itemlens.store.client",
    "SearchResult": "itemlens.store.client",
    "ItemlensError": "itemlens.errors",
    "ConfigError": "itemlens.errors",
    "CatalogError": "itemlens.errors",
    "StoreError": "itemlens.errors",
    "StoreFormatError": "itemlens.errors",
    "StoreLockedError": "itemlens.errors",
    "StoreNotFoundError": "itemlens.errors",
    "SnapshotNotFoundError": "itemlens.errors",
    "UnknownFeatureError": "itemlens.errors",
    "UnknownItemsError": "itemlens.errors",
    "InputError": "itemlens.errors",
    "QueryError": "itemlens.errors",
    "MissingDependencyError": "itemlens.errors",
    "WeightsNotFoundError": "itemlens.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.errors import (  # noqa: F401
        CatalogError,
        ConfigError,
        InputError,
        ItemlensError,
        MissingDependencyError,
        QueryError,
        SnapshotNotFoundError,
        StoreError,
        StoreFormatError,
        StoreLockedError,
        StoreNotFoundError,
        UnknownFeatureError,
        UnknownItemsError,
        WeightsNotFoundError,
    )
    from itemlens.store.client import FeatureInfo, Lens, SearchResult, connect, create  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'itemlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
