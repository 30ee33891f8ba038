"""Encoders registered by name, imported on first use.

Like fsspec's ``registry.py``: a name maps to a dotted ``module:Class`` path and the pip
extra that provides its dependencies; nothing heavy is imported until an encoder is asked
for. Third-party encoders register themselves through the ``itemlens.encoders`` entry-point
group (``name = "package.module:Class"``) or :func:`register_encoder`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from itemlens.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors.base import Encoder

ENTRY_POINT_GROUP = "itemlens.encoders"


@dataclass(frozen=True)
class EncoderEntry:
    target: str  # "package.module:Class"
    extra: str | None  # pip extra providing its dependencies: pip install 'itemlens[extra]'


_BUILTIN: dict[str, EncoderEntry] = {
    "open-clip": EncoderEntry("itemlens.extractors.encoders.open_clip:OpenClipEncoder", "image"),
    "sentence-transformers": EncoderEntry(
        "itemlens.extractors.encoders.sentence_transformers:SentenceTransformerEncoder", "text"
    ),
    "hf-text": EncoderEntry("itemlens.extractors.encoders.hf_text:HFTextEncoder", "text"),
    "video-frames": EncoderEntry("itemlens.extractors.encoders.open_clip:VideoFramesEncoder", "video"),
    "audio": EncoderEntry("itemlens.extractors.encoders.audio:AudioEncoder", "audio"),
    "caption": EncoderEntry("itemlens.extractors.encoders.caption:CaptionEncoder", "caption"),
}
_registry: dict[str, EncoderEntry] = dict(_BUILTIN)
_entry_points_loaded = False


def register_encoder(name: str, target: str, *, extra: str | None = None, replace: bool = False) -> None:
    """Register an encoder class under ``name`` (``target`` = ``"module:Class"``).

    A second registration of the same name is an error unless ``replace=True``: a plug-in
    must not silently replace another.
    """
    _load_entry_points()
    if ":" not in target:
        raise ConfigError(f"encoder target must look like 'package.module:Class', got {target!r}")
    if name in _registry and not replace and _registry[name].target != target:
        raise ConfigError(
            f"encoder {name!r} is already registered ({_registry[name].target}); pass replace=True to replace it"
        )
    _registry[name] = EncoderEntry(target, extra)


def encoder_names() -> list[str]:
    _load_entry_points()
    return sorted(_registry)


def encoder_class(name: str) -> type[Encoder]:
    """The encoder class registered as ``name``, imported now."""
    _load_entry_points()
    entry = _registry.get(name)
    if entry is None:
        raise ConfigError(f"unknown encoder {name!r}; registered encoders: {', '.join(encoder_names())}")
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'itemlens[{entry.extra}]'" if entry.extra else "install its package"
        raise MissingDependencyError(
            f"encoder {name!r} needs a package that is not installed ({exc.name or exc}): {hint}"
        ) from exc
    return getattr(module, class_name)


def spec_model(name: str):
    """The spec model of the encoder registered as ``name`` (its own options), or None for a
    name nobody registered (the spec's own validation then says so)."""
    _load_entry_points()
    if name not in _registry:
        return None
    return getattr(encoder_class(name), "spec_model", None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry and _registry[ep.name].target != ep.value:
            raise ConfigError(
                f"entry point {ep.name!r} = {ep.value!r} clashes with the registered encoder "
                f"{_registry[ep.name].target!r}"
            )
        _registry[ep.name] = EncoderEntry(ep.value, None)
