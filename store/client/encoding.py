"""Online encoding with a feature's stored spec, and vector search: ``encode`` embeds raw
texts or media exactly as the catalog was (torch is imported only here), ``search`` finds the
nearest stored vectors (a Lance vector index where one exists)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from itemlens.errors import (
    ConfigError,
    QueryError,
    StoreError,
)

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors.base import Encoder
from itemlens.store.client.base import LensBase, snapshot_guard


class SearchResult(NamedTuple):
    item_id: str
    score: float  # cosine similarity


class Encoding(LensBase):
    # -- encoding raw inputs and search ---------------------------------------------------------
    def encoder(self, name: str) -> Encoder:
        """The encoder that wrote feature ``name``, rebuilt from its stored spec (loaded once)."""
        version = self._version(name)
        key = version.qualified
        if key not in self._encoders:
            if version.spec.get("encoder") == "external":
                raise ConfigError(
                    f"{version.qualified} holds vectors put by the user (put_vectors): there is no encoder "
                    "to embed raw inputs; pass a vector"
                )
            from itemlens.extractors import FeatureSpec, build_encoder

            encoder = build_encoder(FeatureSpec.model_validate(version.spec))
            if encoder.fingerprint() != version.fingerprint:
                raise StoreError(
                    f"the model behind {version.qualified} has changed since its vectors were written "
                    f"(fingerprint {encoder.fingerprint()} now, {version.fingerprint} stored): queries would "
                    "not be comparable; ingest again or pass a vector"
                )
            self._encoders[key] = encoder.load()
        return self._encoders[key]

    def encode(self, name: str, inputs: Sequence[Any], *, kind: str = "auto") -> np.ndarray | list[np.ndarray]:
        """Embed raw inputs with feature ``name``'s own spec: texts, or media paths/URIs (PIL
        images too) of the kind the feature was made from: images, videos (frames sampled and
        pooled as in the ingest) or audio clips (windowed and pooled). A video feature kept per
        frame (``pooling: per_frame``) gives a list of [frames, dim] arrays, one per video.

        Texts are taken as they are (not as catalog rows for the feature's template);
        ``kind="media"`` (or ``"image"``) forces a string to be read as a path.
        """
        encoder = self.encoder(name)
        if encoder.output_kind != "vector":
            raise ConfigError(f"feature {name!r} holds captions: there are no vectors to encode into")
        inputs = list(inputs)
        media = encoder.spec.input.kind  # what the feature's catalog column held
        kinds = {_query_kind(x, kind, media) for x in inputs}
        if len(kinds) > 1:
            raise ConfigError("encode() takes texts or media in one call, not both")
        if not inputs:
            return np.zeros((0, encoder.dim), np.float32)
        if kinds == {"text"}:
            return encoder.encode_texts([str(x) for x in inputs])
        from itemlens.extractors import ItemError, items
        from itemlens.extractors.images import check_preprocessed_size, decode_image, upright_rgb
        from itemlens.extractors.media import MediaLimits

        # the pipeline's default bounds (the decode section of a configuration)
        media_limits, image_limits = MediaLimits(max_bytes=_MAX_MEDIA_BYTES), MediaLimits()
        image_transform = None if media == "audio" else encoder.image_transform()

        def transform(image):
            check_preprocessed_size(
                image.size, encoder, max_pixels=image_limits.max_pixels, max_aspect_ratio=image_limits.max_aspect_ratio
            )
            return image_transform(image)

        try:
            if media == "audio":
                return np.stack(
                    items.encode_audio_items(
                        encoder, [items.audio_waveform(media_limits.read(_path(x)), encoder) for x in inputs]
                    )
                )
            if media == "video":
                vectors = items.encode_pixel_items(
                    encoder,
                    [
                        items.video_pixels(
                            media_limits.read(_path(x)), encoder.spec, transform, max_pixels=media_limits.max_pixels
                        )
                        for x in inputs
                    ],
                )
                return np.stack(vectors) if encoder.spec.pooling == "mean" else vectors
            pixels = [
                transform(
                    decode_image(image_limits.read(_path(x)), image_limits.max_pixels)
                    if isinstance(x, (str, os.PathLike))
                    else upright_rgb(x)
                )
                for x in inputs
            ]  # a PIL image: the same orientation and mode rules as the pipeline
        except ItemError as error:
            raise QueryError(f"cannot use {media} query: {error.reason}") from None
        return encoder.encode_images(np.stack(pixels))

    @snapshot_guard
    def search(
        self,
        name: str,
        query: Any,
        k: int = 10,
        *,
        kind: str = "auto",
        exact: bool = False,
        nprobes: int | None = None,
        refine_factor: int | None = None,
    ) -> list[SearchResult]:
        """The ``k`` items nearest to ``query`` by cosine similarity.

        ``query`` is a vector, or raw text / an image (path, URI or PIL image) encoded with the
        feature's own spec; an open-clip image feature takes text queries through its text tower.
        With a vector index (``create_index``) the search is approximate: the candidates are
        re-ranked on the stored vectors (IVF_PQ: at least 500 unless ``refine_factor`` says
        otherwise), so every score is the stored vectors' cosine; ``exact=True`` scans every
        vector instead.
        """
        version = self._version(name)
        if version.kind != "vector":
            raise ConfigError(
                f"{version.qualified} holds {version.kind}s, not vectors: search a feature encoded from them "
                "(input: {feature: NAME})"
            )
        if version.pooling != "mean":
            raise ConfigError(f"{version.qualified} keeps one vector per image; search needs a pooled feature")
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a whole number of at least 1, not {k!r}")
        k = int(k)
        if version.count == 0:
            return []
        if _is_vector(query):
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
        else:
            vector = self.encode(name, [query], kind=kind)[0]
        if vector.shape[0] != version.dim:
            raise ConfigError(f"query has {vector.shape[0]} dimensions, {version.qualified} has {version.dim}")
        import lancedb

        self._here()
        if self._db is None:
            self._db = lancedb.connect(self.location.uri, storage_options=self.location.options())
        table = self._db.open_table(version.table, version=self.doc.tables[version.table])
        query_builder = table.search(vector, vector_column_name="vector").distance_type("cosine").limit(k)
        if exact:
            query_builder = query_builder.bypass_vector_index()
        elif version.index is not None:
            from itemlens.store.indexes import refine_factor as refine

            if nprobes is not None:
                query_builder = query_builder.nprobes(nprobes)
            query_builder = query_builder.refine_factor(refine(version.index["kind"], k, refine_factor))
        hits = query_builder.select(["item_id", "_distance"]).to_arrow()
        return [
            SearchResult(i, 1.0 - float(d))
            for i, d in zip(hits.column("item_id").to_pylist(), hits.column("_distance").to_pylist())
        ]


def _is_vector(query: Any) -> bool:
    """An array of numbers (numpy, a torch tensor, anything with ``__array__``) or a list of them;
    never an image, whatever array protocol its library gives it."""
    if type(query).__module__.split(".")[0] == "PIL":
        return False
    if hasattr(query, "__array__") and not isinstance(query, (str, bytes)):
        try:
            return np.asarray(query).dtype.kind in "fiu"
        except (TypeError, ValueError, RuntimeError):  # e.g. a PIL image that cannot be read
            return False
    return (
        isinstance(query, (list, tuple))
        and bool(query)
        and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in query)
    )


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")


_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac") + _VIDEO_SUFFIXES


# Limits for online queries: those of the ingest's defaults.
_MAX_MEDIA_BYTES = 2 * 1024**3


def _path(query: Any) -> str:
    if not isinstance(query, (str, os.PathLike)):
        raise ConfigError(f"a video or audio query is a path or URI, not {type(query).__name__}")
    return os.fspath(query)


def _query_kind(query: Any, kind: str, media: str = "image") -> str:
    """ "text" or "image" (a media path, URI or PIL image) for one query. A string is a path when
    it names a file, a URI, or ends like a file of the feature's own media kind."""
    if kind in ("text", "image", "media"):
        return "text" if kind == "text" else "image"
    if kind != "auto":
        raise ConfigError(f"kind must be 'auto', 'text' or 'media' (or 'image'), not {kind!r}")
    if isinstance(query, os.PathLike):
        return "image"
    if isinstance(query, str):
        from itemlens.uris import has_scheme

        # A string naming an image file is an image query, also when the file is missing (a
        # mistyped path must fail, not be embedded as text); pass kind="text" to force text.
        suffixes = {"video": _VIDEO_SUFFIXES, "audio": _AUDIO_SUFFIXES}.get(media, ()) + _IMAGE_SUFFIXES
        looks_like_image = query.lower().endswith(suffixes) and " " not in query.strip()
        return "image" if has_scheme(query) or os.path.isfile(query) or looks_like_image else "text"
    if type(query).__module__.startswith("PIL."):
        return "image"
    raise ConfigError(f"cannot tell whether {type(query).__name__} is a text or an image query")
