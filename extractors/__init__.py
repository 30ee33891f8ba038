"""itemlens.extractors: encoders and media decoding. No Ray, no LanceDB.

``build_encoder(spec)`` returns the registered encoder for a :class:`FeatureSpec`; nothing
heavy (torch, open_clip, sentence-transformers) is imported until a model is loaded or a
preprocessing transform is built.
"""

from __future__ import annotations

from itemlens.extractors.base import Encoder, ItemError
from itemlens.extractors.registry import encoder_class, encoder_names, register_encoder
from itemlens.extractors.spec import FeatureSpec, ImageInput, Resources, TextInput

__all__ = [
    "Encoder",
    "FeatureSpec",
    "ImageInput",
    "ItemError",
    "Resources",
    "TextInput",
    "build_encoder",
    "encoder_class",
    "encoder_names",
    "register_encoder",
]


def build_encoder(spec: FeatureSpec) -> Encoder:
    """The encoder for ``spec`` (validated; weights not loaded yet)."""
    return encoder_class(spec.encoder)(spec)
