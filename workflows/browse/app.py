"""The web app of ``itemlens browse``: Starlette routes over one :class:`Browser`, pages
rendered on the server from Jinja2 templates (no JavaScript).

==========================================  ================================================
``/``                                       the store: features and versions, counts, errors,
                                            semantic IDs and graphs with their plots, snapshots
``/items?page=N``                           items in item-index order, a page at a time
``/item/{id}`` (``/item?id=`` for . and ..)  one item: catalog fields, photos, video with the
                                            frames that were embedded, audio, captions,
                                            semantic IDs, errors, neighbours per feature/graph
``/search?feature=F&q=TEXT`` (POST: a file) the feature's own encoder through ``lens.search``
``/sid/{name}?prefix=3.1``                  the semantic-ID tree under a prefix, its items
``/errors?feature=F&stage=S``               errors by feature and stage, their items
``/diff?a=text@v1&b=text@v2&k=10``          what ``itemlens diff`` computes, as a page
``/media``, ``/thumb``, ``/frame``          media named by the item's catalog row (media.py)
==========================================  ================================================

Read-only: the app opens the store through the client and never takes the writer lock.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from itemlens.errors import (
    ItemlensError,
    MissingDependencyError,
    SnapshotNotFoundError,
    UnknownFeatureError,
    UnknownItemsError,
)
from itemlens.extractors.base import ItemError
from itemlens.extractors.media import read_bytes, resolve_uri
from itemlens.uris import local_path
from itemlens.workflows.browse.media import (
    ByteCache,
    Frames,
    MediaColumn,
    cell_values,
    named_media,
    read_image,
    sampled_frames,
    thumb_size,
    thumbnail,
)

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates
except ImportError as missing:  # pragma: no cover - the extra is part of dev
    raise MissingDependencyError(
        f"itemlens browse needs the browse extra ({missing.name} is missing): pip install 'itemlens[browse]'"
    ) from None

log = logging.getLogger("itemlens.browse")

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 48
#: an uploaded search query larger than this is refused
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: file name endings an uploaded query may keep (the encoder reads the file by its kind)
_UPLOAD_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".mp4",
    ".mov",
    ".webm",
    ".mkv",
    ".avi",
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
)
#: a diff over more items than this is computed on a sample of DIFF_SAMPLE items (each against all)
DIFF_ALL_UP_TO = 20_000
DIFF_SAMPLE = 500
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")

#: what /media sends with a catalog's file: the file is data, never a page of this origin (a
#: seller's SVG or HTML would otherwise run its scripts where every page of the store is readable)
MEDIA_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff"}


def answered_hosts(host: str) -> tuple[bool, list[str]]:
    """Whether ``host`` (what ``--host`` names) is loopback, and the Host headers the app then
    answers: on loopback, the loopback names and ``host`` itself as a URL spells it (``[::1]``,
    ``127.0.0.2``), so that a page served to another site through DNS rebinding is refused;
    elsewhere any."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return False, ["*"]
    return True, list(dict.fromkeys([*LOOPBACK_HOSTS, f"[{host}]" if ":" in host else host]))


class PageError(Exception):
    """A request the app answers with an explanation page (404: no such item/feature; 403: a
    media file the catalog does not name for the item; 400: a query that cannot be used)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Browser:
    """What the pages read: one reader pinned to a snapshot (all client calls hold ``lock``: a
    Lens is not meant for several threads at once), the catalog rows, and in-memory caches of
    thumbnails, video frames, graph matrices, semantic-ID codes and diffs."""

    def __init__(
        self,
        store: str | os.PathLike,
        *,
        snapshot: int | None = None,
        catalog: str | None = None,
        id_column: str | None = None,
        storage_options: dict[str, str] | None = None,
        media_cache_bytes: int = 256 * 1024**2,
        k: int = 10,
        catalog_format: str | None = None,
    ):
        import itemlens

        self.store = os.fspath(store)
        self.storage_options = storage_options
        self.lens = itemlens.connect(store, snapshot=snapshot, storage_options=storage_options)
        self.latest = self.lens.snapshots()[-1]["snapshot_id"] if self.lens.snapshot else 0
        self.lock = threading.RLock()
        self.k = k
        self.media_columns = self._media_columns()
        self.video_features = self._video_features()
        self.catalogs, self.catalog_problem = self._open_catalogs(catalog, id_column, catalog_format)
        self.thumbs = ByteCache(media_cache_bytes)
        self.frames = ByteCache(media_cache_bytes // 2)
        self._order: tuple[list[str], Any] | None = None
        self._errors = None
        self._codes: dict[str, tuple[list[str], np.ndarray]] = {}
        self._diffs: OrderedDict[tuple, Any] = OrderedDict()

    # -- what the snapshot names ------------------------------------------------------------------
    def _media_columns(self) -> list[MediaColumn]:
        """Catalog columns that a feature of this snapshot reads as an image, a video or audio."""
        out: dict[str, MediaColumn] = {}
        for entry in self.lens.doc.features.values():
            for version in entry.versions.values():
                spec_input = version.spec.get("input")
                if isinstance(spec_input, dict):
                    for kind in ("image", "video", "audio"):
                        column = spec_input.get(kind)
                        if isinstance(column, str) and column not in out:
                            out[column] = MediaColumn(column, kind)
        return list(out.values())

    def _video_features(self) -> dict[str, Any]:
        """Current video features -> their VideoInput (how frames were sampled)."""
        from pydantic import ValidationError

        from itemlens.extractors.spec import VideoInput

        out = {}
        for info in self.lens.features():
            spec_input = info.spec.get("input")
            if info.current and isinstance(spec_input, dict) and "video" in spec_input:
                try:
                    out[info.name] = VideoInput.model_validate(spec_input)
                except ValidationError:  # a put_vectors spec in words of its own: its frames not shown
                    log.info("feature %s: input %r is not an ingest's video input", info.name, spec_input)
        return out

    def _open_catalogs(self, catalog: str | None, id_column: str | None, catalog_format: str | None = None):
        from itemlens.workflows.browse.catalog_rows import CatalogRows

        record = self.lens.doc.catalog
        uri = catalog or record.get("uri")
        if not uri:
            return [], (
                "this snapshot records no catalog (vectors put with put_vectors?): pass --catalog to show "
                "catalog fields and media"
            )
        id_column = id_column or record.get("id_column") or "item_id"
        fmt = catalog_format or ("auto" if catalog else record.get("format", "auto"))
        catalogs, problems = [], []
        delta = None if catalog else record.get("delta")
        if delta and delta.get("uri"):  # the last delta's rows are newer than the catalog's
            try:  # read with the format the ingest read it with (its catalog.format)
                catalogs.append(
                    CatalogRows(delta["uri"], id_column=id_column, delta=True, fmt=delta.get("format", fmt))
                )
            except ItemlensError as problem:
                problems.append(f"{problem} (item pages show the catalog's rows, not the delta's)")
        try:
            catalogs.append(CatalogRows(uri, id_column=id_column, fmt=fmt))
        except ItemlensError as problem:
            problems.append(f"{problem} (item pages show no catalog fields or media)")
        return catalogs, "; ".join(problems) or None

    def rows_of(self, ids: list[str]) -> list[tuple[dict[str, Any] | None, str | None]]:
        """(catalog row, the folder its media resolve against) per id; (None, None) where the
        catalog has no row."""
        out: list[tuple[dict[str, Any] | None, str | None]] = [(None, None)] * len(ids)
        pending = list(range(len(ids)))
        for catalog in self.catalogs:
            if not pending:
                break
            try:
                rows = catalog.rows([ids[i] for i in pending])
            except Exception as problem:  # unreadable catalog: the pages say so and go on without it
                log.warning("cannot read catalog %s: %s", catalog.uri, problem)
                self.catalog_problem = f"cannot read catalog {catalog.uri}: {type(problem).__name__}: {problem}"
                self.catalogs = []
                break
            still = []
            for i, row in zip(pending, rows):
                if row is None:
                    still.append(i)
                else:
                    out[i] = (row, catalog.base)
            pending = still
        return out

    # -- items -------------------------------------------------------------------------------------
    def order(self) -> tuple[list[str], Any]:
        """Item ids in item-index order, and the client's id index over them (read once)."""
        if self._order is None:
            from itemlens.store.cache import IdIndex

            with self.lock:
                items = self.lens.items().sort_by("item_index")
            ids = items.column("item_id")
            self._order = (ids.to_pylist(), IdIndex(ids))
        return self._order

    def known(self, item_id: str) -> bool:
        return bool(self.order()[1].rows([item_id])[0] >= 0)

    def require_item(self, item_id: str) -> None:
        if not self.known(item_id):
            raise PageError(404, f"no item {item_id!r} in snapshot {self.lens.snapshot} of {self.store}")

    def tiles(self, ids: list[str], scores: list[float] | None = None, extra: list[dict] | None = None) -> list[dict]:
        """What a thumbnail of each item shows: its id, a title, a picture URL and a score."""
        out = []
        for n, (item_id, (row, _)) in enumerate(zip(ids, self.rows_of(ids))):
            title = next((row[c] for c in ("title", "name") if row and isinstance(row.get(c), str)), None)
            tile = {
                "id": item_id,
                "title": title,
                "thumb": self.thumb_url(item_id, row),
                "score": None if scores is None else scores[n],
            }
            if extra:
                tile.update(extra[n])
            out.append(tile)
        return out

    def thumb_url(self, item_id: str, row: dict | None, size: int = 160) -> str | None:
        """A picture of the item: its first photo, else the first frame of its video."""
        for media in self.media_columns:
            values = cell_values((row or {}).get(media.column))
            if values and media.kind == "image":
                return f"/thumb?item={_q(item_id)}&src={_q(values[0])}&size={size}"
        for feature, video in self.video_features.items():
            if cell_values((row or {}).get(video.video)):
                return f"/frame?item={_q(item_id)}&feature={_q(feature)}&n=0&size={size}"
        return None

    # -- media -------------------------------------------------------------------------------------
    def media_uri(self, item_id: str, src: str) -> tuple[str, str]:
        """(resolved URI, kind) of ``src`` when the item's catalog row names it in a media column;
        PageError otherwise (see media.py for the rule)."""
        self.require_item(item_id)
        row, base = self.rows_of([item_id])[0]
        if row is None:
            raise PageError(
                404,
                f"the catalog has no row for item {item_id!r}"
                + (f" ({self.catalog_problem})" if self.catalog_problem else ""),
            )
        kind = named_media(row, self.media_columns).get(src)
        if kind is None:
            raise PageError(403, f"refused: {src!r} is not a media file that the catalog names for item {item_id!r}")
        return resolve_uri(src, base), kind

    def thumbnail(self, item_id: str, src: str, size: int | None) -> bytes:
        uri, kind = self.media_uri(item_id, src)
        if kind != "image":
            raise PageError(404, f"{src!r} is a {kind}, not an image: no thumbnail")
        size = thumb_size(size)

        def make():
            try:
                data = thumbnail(read_image(uri), size)
            except ItemError as error:
                raise PageError(404, f"cannot show {src!r}: {error.reason}") from None
            return data, len(data)

        return self.thumbs.get(("thumb", uri, size), make)

    def video_frames(self, item_id: str, feature: str) -> tuple[str, Frames]:
        """The frames video feature ``feature`` sampled from the item's video (decoded on first
        request, cached)."""
        self.require_item(item_id)
        video = self.video_features.get(feature)
        if video is None:
            raise PageError(
                404,
                f"no video feature {feature!r} in snapshot {self.lens.snapshot}; video features: "
                f"{', '.join(self.video_features) or 'none'}",
            )
        row, base = self.rows_of([item_id])[0]
        values = cell_values((row or {}).get(video.video))
        if not values:
            raise PageError(404, f"item {item_id!r} has no video in column {video.video!r}")
        uri = resolve_uri(values[0], base)

        def make():
            try:
                frames = sampled_frames(uri, video)
            except ItemError as error:
                raise PageError(404, f"cannot decode {values[0]!r}: {error.reason}") from None
            return frames, frames.nbytes

        return values[0], self.frames.get(("frames", uri, video.frames, video.every_seconds), make)

    # -- neighbours --------------------------------------------------------------------------------
    def vector_neighbours(self, feature: str, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """The item's k nearest items by ``lens.search`` on its own vector (itself left out);
        None when it has no vector."""
        with self.lock:
            vector = self.lens.vectors(feature, [item_id], fill=np.nan)[0]
            if not np.isfinite(vector).all():
                return None
            hits = self.lens.search(feature, vector, k=k + 1)
        return [(h.item_id, h.score) for h in hits if h.item_id != item_id][:k]

    def graph_neighbours(self, name: str, item_id: str) -> list[tuple[str, float]]:
        """``lens.neighbors(name, [item_id])[0]`` (the reader builds each graph's matrix once and
        keeps it); an id the graph does not know has none."""
        from itemlens.errors import UnknownItemsError

        with self.lock:
            try:
                return self.lens.neighbors(name, [item_id])[0]
            except UnknownItemsError:
                return []

    # -- errors ------------------------------------------------------------------------------------
    def errors(self):
        """The errors rows of every feature's current version, failures and absent inputs (stage
        ``absent``) alike (read once)."""
        if self._errors is None:
            import pyarrow as pa

            with self.lock:
                self._errors = pa.concat_tables([self.lens.errors(), self.lens.errors(absent=True)])
        return self._errors

    def errors_of(self, item_id: str) -> list[dict]:
        import pyarrow.compute as pc

        table = self.errors()
        return table.filter(pc.equal(table.column("item_id"), item_id)).to_pylist()

    # -- semantic IDs ------------------------------------------------------------------------------
    def codes(self, qualified: str) -> tuple[list[str], np.ndarray]:
        """Every item that has an ID of version ``qualified`` and its codes, sorted by the codes
        (read and sorted once): the items under a prefix are then one run of rows, and items that
        share a tuple sit next to each other."""
        if qualified not in self._codes:
            ids, _ = self.order()
            with self.lock:
                codes = self.lens.semantic_ids(qualified, ids, fill=-1)
            present = np.flatnonzero(codes[:, 0] >= 0) if len(codes) else np.zeros(0, np.int64)
            present = present[np.lexsort(codes[present].T[::-1])] if len(present) else present
            self._codes[qualified] = ([ids[i] for i in present], codes[present])
        return self._codes[qualified]

    # -- diff --------------------------------------------------------------------------------------
    def diff(self, a: str, b: str, k: int):
        """``itemlens diff``'s result for two sides (cached: the last few)."""
        from itemlens.store.diff import diff, feature_info, open_sides

        key = (a.strip(), b.strip(), k)
        with self.lock:
            if key not in self._diffs:
                (lens_a, name_a), (lens_b, name_b) = open_sides(
                    self.store, a, b, lens=self.lens, storage_options=self.storage_options
                )
                small = min(feature_info(lens_a, name_a).count, feature_info(lens_b, name_b).count)
                sample = DIFF_SAMPLE if small > DIFF_ALL_UP_TO else None
                self._diffs[key] = diff(lens_a, name_a, lens_b, name_b, k=k, sample=sample)
            self._diffs.move_to_end(key)
            while len(self._diffs) > 4:
                self._diffs.popitem(last=False)
            return self._diffs[key]


def _q(value: Any) -> str:
    """A URL query value or path segment: every reserved character encoded."""
    return quote(str(value), safe="")


def _item_url(item_id: Any) -> str:
    """An item page's URL: ``/item/<id>``, or ``/item?id=`` for the ids ``.`` and ``..``, which
    a browser would resolve as dot segments (encoded or not) before sending."""
    text = str(item_id)
    return f"/item?id={_q(text)}" if text in (".", "..") else f"/item/{_q(text)}"


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value), low), high) if value not in (None, "") else default
    except ValueError:
        raise PageError(400, f"not a number: {value!r}") from None


def _pages(total: int, page: int, size: int = PAGE_SIZE) -> dict[str, int]:
    last = max(1, math.ceil(total / size))
    if page > last and total:
        raise PageError(404, f"page {page} of {last}")
    return {"page": page, "last": last, "total": total, "start": (page - 1) * size, "end": min(page * size, total)}


# -- pages --------------------------------------------------------------------------------------------


class Pages:
    """The routes' work, each returning (template, context) or a response; they run in Starlette's
    thread pool (the client calls are blocking)."""

    def __init__(self, browser: Browser):
        self.b = browser

    def common(self) -> dict[str, Any]:
        lens = self.b.lens
        searchable = [f.name for f in lens.features() if f.current and f.kind == "vector" and f.pooling == "mean"]
        return {
            "store": self.b.store,
            "snapshot": lens.snapshot,
            "latest": self.b.latest,
            "searchable": searchable,
            "default_search": "text" if "text" in searchable else (searchable or [None])[0],
        }

    def summary(self) -> tuple[str, dict]:
        b, lens = self.b, self.b.lens
        with b.lock:
            features = lens.features()
            snapshots = lens.snapshots()
        errors = b.errors()
        counts = Counter(zip(errors.column("feature").to_pylist(), errors.column("stage").to_pylist()))
        sids = [
            v
            for _, e in sorted(lens.doc.semantic_ids.items())
            for _, v in sorted(e.versions.items(), key=lambda kv: int(kv[0][1:]))
        ]
        graphs = [
            (v, e.current == v.label)
            for _, e in sorted(lens.doc.graphs.items())
            for _, v in sorted(e.versions.items(), key=lambda kv: int(kv[0][1:]))
        ]
        versions = [f.qualified for f in features if f.kind == "vector" and f.pooling == "mean"]
        return "summary.html", {
            "features": features,
            "catalog": lens.doc.catalog,
            "catalog_problem": b.catalog_problem,
            "created_at": lens.doc.created_at,
            "items": len(b.order()[0]),
            "errors": sorted(counts.items()),
            "sids": [(v, lens.doc.semantic_ids[v.name].current == v.label) for v in sids],
            "graphs": graphs,
            "snapshots": list(reversed(snapshots))[:20],
            "snapshot_count": len(snapshots),
            "report": lens.doc.report,
            "versions": versions,
            "media_columns": b.media_columns,
            "catalog_sources": [c.uri for c in b.catalogs],
        }

    def items(self, page: int) -> tuple[str, dict]:
        ids, _ = self.b.order()
        pages = _pages(len(ids), page)
        return "items.html", {"pages": pages, "tiles": self.b.tiles(ids[pages["start"] : pages["end"]])}

    def item(self, item_id: str, k: int) -> tuple[str, dict]:
        b, lens = self.b, self.b.lens
        b.require_item(item_id)
        row, base = b.rows_of([item_id])[0]
        media = named_media(row, b.media_columns)
        photos = [
            {
                "src": s,
                "url": f"/media?item={_q(item_id)}&src={_q(s)}",
                "thumb": f"/thumb?item={_q(item_id)}&src={_q(s)}&size=320",
            }
            for s, kind in media.items()
            if kind == "image"
        ]
        audio = [
            {"src": s, "url": f"/media?item={_q(item_id)}&src={_q(s)}"} for s, kind in media.items() if kind == "audio"
        ]
        videos = []
        for s, kind in media.items():
            if kind != "video":
                continue
            video = {"src": s, "url": f"/media?item={_q(item_id)}&src={_q(s)}", "sampled": []}
            for feature, spec in b.video_features.items():
                if s not in cell_values((row or {}).get(spec.video)):
                    continue
                try:
                    _, frames = b.video_frames(item_id, feature)
                    shown = [
                        {"index": i, "url": f"/frame?item={_q(item_id)}&feature={_q(feature)}&n={n}"}
                        for n, i in enumerate(frames.indices)
                    ]
                    video["sampled"].append({"feature": feature, "frames": shown, "problem": None, "spec": spec})
                except PageError as problem:
                    video["sampled"].append(
                        {"feature": feature, "frames": [], "problem": problem.message, "spec": spec}
                    )
            videos.append(video)
        with b.lock:
            features = [f for f in lens.features() if f.current]
            captions = []
            for f in features:
                if f.kind != "caption":
                    continue
                try:
                    table = lens.captions(f.name, [item_id], output="arrow")
                    captions.append(
                        {
                            "feature": f.name,
                            "version": f.version,
                            "text": table.column("caption")[0].as_py(),
                            "model": table.column("model")[0].as_py(),
                            "note": f.note,
                        }
                    )
                except UnknownItemsError:
                    captions.append(
                        {"feature": f.name, "version": f.version, "text": None, "model": f.model, "note": f.note}
                    )
            sids = []
            for name in sorted(lens.doc.semantic_ids):
                info = lens.semantic_id_info(name)
                codes = lens.semantic_ids(name, [item_id], fill=-1)[0].tolist()
                levels = int(info.spec["levels"])
                prefixes = [".".join(map(str, codes[: n + 1])) for n in range(levels)] if codes[0] >= 0 else []
                sids.append(
                    {
                        "name": name,
                        "qualified": info.qualified,
                        "codes": codes if codes[0] >= 0 else None,
                        "levels": levels,
                        "prefixes": prefixes,
                    }
                )
        vector_rows = []
        for f in features:
            if f.kind != "vector":
                continue
            if f.pooling != "mean":
                vector_rows.append(
                    {
                        "feature": f,
                        "tiles": None,
                        "note": f"one vector per {f.pooling.removeprefix('per_')}: no neighbour search",
                    }
                )
                continue
            hits = b.vector_neighbours(f.name, item_id, k)
            if hits is None:
                vector_rows.append({"feature": f, "tiles": None, "note": "no vector (see the errors below)"})
                continue
            vector_rows.append(
                {"feature": f, "tiles": b.tiles([h[0] for h in hits], [h[1] for h in hits]), "note": None}
            )
        graph_rows = []
        for name in sorted(lens.doc.graphs):
            with b.lock:
                info = lens.graph_info(name)
            neighbours = b.graph_neighbours(name, item_id)
            graph_rows.append(
                {"name": name, "info": info, "tiles": b.tiles([n[0] for n in neighbours], [n[1] for n in neighbours])}
            )
        fields = [(column, value) for column, value in (row or {}).items()]
        return "item.html", {
            "item_id": item_id,
            "fields": fields,
            "catalog_problem": b.catalog_problem if row is None else None,
            "photos": photos,
            "videos": videos,
            "audio": audio,
            "captions": captions,
            "sids": sids,
            "errors": b.errors_of(item_id),
            "vectors": vector_rows,
            "graphs": graph_rows,
            "k": k,
        }

    def search(self, feature: str, text: str | None, upload: tuple[str, bytes] | None, k: int) -> tuple[str, dict]:
        b, lens = self.b, self.b.lens
        with b.lock:
            features = {f.name: f for f in lens.features() if f.current and f.kind == "vector" and f.pooling == "mean"}
        if feature not in features:
            raise PageError(
                404,
                f"no feature {feature!r} to search in snapshot {lens.snapshot}; searchable features: "
                f"{', '.join(features) or 'none'}",
            )
        context = {
            "feature": feature,
            "query": text or "",
            "upload": upload[0] if upload else None,
            "k": k,
            "tiles": None,
            "problem": None,
            "info": features[feature],
        }
        if not text and not upload:
            return "search.html", context
        try:
            with b.lock:
                if upload:
                    hits = self._search_file(feature, upload, k)
                else:
                    hits = lens.search(feature, text, k=k, kind="text")  # never read as a path on this machine
        except (ItemlensError, ImportError) as problem:
            context["problem"] = f"{type(problem).__name__}: {problem}"
            return "search.html", context
        context["tiles"] = b.tiles([h.item_id for h in hits], [h.score for h in hits])
        return "search.html", context

    def _search_file(self, feature: str, upload: tuple[str, bytes], k: int):
        """Search with an uploaded file: written to a temporary file (keeping only a known
        media ending of its name), read by the feature's encoder as its media kind."""
        name, data = upload
        suffix = Path(name).suffix.lower()
        suffix = suffix if suffix in _UPLOAD_SUFFIXES else ".bin"
        with tempfile.TemporaryDirectory(prefix="itemlens-browse-query-") as folder:
            path = os.path.join(folder, "query" + suffix)
            with open(path, "wb") as f:
                f.write(data)
            return self.b.lens.search(feature, path, k=k, kind="media")

    def sid(self, name: str, prefix_text: str, page: int) -> tuple[str, dict]:
        b, lens = self.b, self.b.lens
        try:
            with b.lock:
                info = lens.semantic_id_info(name)
        except UnknownFeatureError as unknown:
            raise PageError(404, str(unknown)) from None
        levels = int(info.spec["levels"])
        try:
            prefix = [int(p) for p in prefix_text.split(".")] if prefix_text.strip() else []
        except ValueError:
            raise PageError(404, f"{prefix_text!r} is not a prefix of codes (write them as 12.3.200)") from None
        if any(not 0 <= p < 2**31 for p in prefix):  # codes are small non-negative integers
            raise PageError(404, f"no item of {info.qualified} has an ID under {prefix_text}")
        if len(prefix) > levels:
            raise PageError(404, f"{info.qualified} has {levels} levels; {prefix_text!r} has {len(prefix)} codes")
        ids, codes = b.codes(info.qualified)  # sorted by codes: a prefix is one run of rows
        if prefix:
            inside = np.flatnonzero((codes[:, : len(prefix)] == np.asarray(prefix, np.int64)).all(axis=1))
            if not len(inside):
                raise PageError(404, f"no item of {info.qualified} has an ID under {prefix_text}")
            start, end = int(inside[0]), int(inside[-1]) + 1
        else:
            start, end = 0, len(ids)
        run = codes[start:end]
        children = []
        if len(prefix) < levels and len(run):
            values, counts = np.unique(run[:, len(prefix)], return_counts=True)
            children = [
                {"code": int(v), "count": int(c), "prefix": ".".join(map(str, prefix + [int(v)]))}
                for v, c in zip(values, counts)
            ]
        # collisions: full tuples (the levels' codes) that several items share, which are
        # neighbours in the sorted rows, and the suffixes they got
        groups, collided_items = [], 0
        if len(run):
            starts = np.concatenate([[0], np.flatnonzero((np.diff(run[:, :levels], axis=0) != 0).any(axis=1)) + 1])
            sizes = np.diff(np.concatenate([starts, [len(run)]]))
            shared = np.flatnonzero(sizes > 1)
            for g in shared[np.argsort(-sizes[shared], kind="stable")][:20]:
                groups.append({"prefix": ".".join(map(str, run[starts[g], :levels].tolist())), "count": int(sizes[g])})
            collided_items = int(sizes[shared].sum())
        pages = _pages(end - start, page)
        shown = range(start + pages["start"], start + pages["end"])
        tiles = b.tiles(
            [ids[i] for i in shown], extra=[{"codes": ".".join(map(str, codes[i].tolist()))} for i in shown]
        )
        trail = [{"code": c, "prefix": ".".join(map(str, prefix[: n + 1]))} for n, c in enumerate(prefix)]
        return "sid.html", {
            "info": info,
            "levels": levels,
            "prefix": ".".join(map(str, prefix)),
            "trail": trail,
            "children": children,
            "groups": groups,
            "collided_items": collided_items,
            "tiles": tiles,
            "pages": pages,
            "under": end - start,
            "suffix": info.width > levels,
            "method": info.spec.get("uniqueness", "suffix"),
        }

    def errors(self, feature: str | None, stage: str | None, page: int) -> tuple[str, dict]:
        import pyarrow.compute as pc

        b, lens = self.b, self.b.lens
        table = b.errors()
        names = sorted(lens.doc.features)
        if feature and feature not in names:
            raise PageError(404, f"no feature {feature!r} in snapshot {lens.snapshot}; features: {', '.join(names)}")
        counts = Counter(zip(table.column("feature").to_pylist(), table.column("stage").to_pylist()))
        chosen = table
        if feature:
            chosen = chosen.filter(pc.equal(chosen.column("feature"), feature))
        if stage:
            chosen = chosen.filter(pc.equal(chosen.column("stage"), stage))
        reasons = Counter(chosen.column("reason").to_pylist()).most_common(10) if chosen.num_rows <= 1_000_000 else []
        chosen = chosen.sort_by([("feature", "ascending"), ("stage", "ascending"), ("item_id", "ascending")])
        pages = _pages(chosen.num_rows, page)
        rows = chosen.slice(pages["start"], pages["end"] - pages["start"]).to_pylist()
        return "errors.html", {
            "counts": sorted(counts.items()),
            "feature": feature,
            "stage": stage,
            "rows": rows,
            "reasons": reasons,
            "pages": pages,
        }

    def diff(self, a: str, b_side: str, k: int) -> tuple[str, dict]:
        b, lens = self.b, self.b.lens
        versions = [f.qualified for f in lens.features() if f.kind == "vector" and f.pooling == "mean"]
        context = {"a": a, "b": b_side, "k": k, "versions": versions, "result": None, "problem": None}
        if not a or not b_side:
            return "diff.html", context
        try:
            result = b.diff(a, b_side, k)
        except UnknownFeatureError as unknown:
            raise PageError(404, str(unknown)) from None
        except (ItemlensError, ImportError) as problem:
            context["problem"] = str(problem)
            return "diff.html", context
        movers = result.movers(10)
        for m in movers:
            m["tile"] = b.tiles([m["item_id"]])[0]
            m["tiles_a"] = b.tiles(m["neighbours_a"])
            m["tiles_b"] = b.tiles(m["neighbours_b"])
        context.update(result=result, summary=result.summary(), movers=movers)
        return "diff.html", context


# -- the app ------------------------------------------------------------------------------------------


def create_app(
    store: str | os.PathLike,
    *,
    snapshot: int | None = None,
    catalog: str | None = None,
    id_column: str | None = None,
    storage_options: dict[str, str] | None = None,
    allowed_hosts: list[str] | tuple[str, ...] = LOOPBACK_HOSTS,
    catalog_format: str | None = None,
) -> Starlette:
    """The browse app of one store snapshot. ``allowed_hosts``: Host headers it answers (by default
    loopback names only, so that a web page elsewhere cannot reach it by DNS rebinding)."""
    browser = Browser(
        store,
        snapshot=snapshot,
        catalog=catalog,
        id_column=id_column,
        storage_options=storage_options,
        catalog_format=catalog_format,
    )
    pages = Pages(browser)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["q"] = _q
    templates.env.filters["item_url"] = _item_url
    templates.env.filters["num"] = lambda v, digits=3: (
        "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
    )

    def render(request: Request, page: tuple[str, dict], status: int = 200) -> Response:
        name, context = page
        if context.get("problem"):  # a query that could not be used: said on the page, with a 400
            status = 400
        return templates.TemplateResponse(request, name, {**pages.common(), **context}, status_code=status)

    async def page_error(request: Request, error: Exception) -> Response:
        if isinstance(error, HTTPException):
            status, message = error.status_code, ("no such page" if error.status_code == 404 else str(error.detail))
        elif isinstance(error, SnapshotNotFoundError):  # pruned under this page: the snapshot is gone
            status, message = 410, f"{error}; start browse again (or pin the snapshot you browse)"
        elif isinstance(error, ItemlensError):  # what the client refused, in its own words
            status, message = 409, str(error)
        else:
            status, message = error.status, error.message
        return render(request, ("error.html", {"status": status, "message": message}), status)

    async def summary(request: Request) -> Response:
        return render(request, await run_in_threadpool(pages.summary))

    async def items(request: Request) -> Response:
        page = _int(request.query_params.get("page"), 1, 1, 10**9)
        return render(request, await run_in_threadpool(pages.items, page))

    async def go(request: Request) -> Response:
        item_id = request.query_params.get("id", "")
        if item_id.strip() != item_id and not browser.known(item_id):  # typed with a stray space
            item_id = item_id.strip()
        return RedirectResponse(_item_url(item_id), status_code=303)

    async def item(request: Request) -> Response:
        k = _int(request.query_params.get("k"), browser.k, 1, 100)
        item_id = request.path_params.get("item_id") or request.query_params.get("id", "")
        return render(request, await run_in_threadpool(pages.item, item_id, k))

    async def search(request: Request) -> Response:
        params = request.query_params
        upload = None
        if request.method == "POST":
            length = int(request.headers.get("content-length") or 0)
            if length > MAX_UPLOAD_BYTES + 1024 * 1024:
                raise PageError(413, f"upload larger than {MAX_UPLOAD_BYTES // 1024**2} MiB")
            async with request.form(max_files=1, max_fields=8) as form:
                params = form
                file = form.get("file")
                if file is not None and not isinstance(file, str) and file.filename:
                    data = await file.read(MAX_UPLOAD_BYTES + 1)
                    if len(data) > MAX_UPLOAD_BYTES:
                        raise PageError(413, f"upload larger than {MAX_UPLOAD_BYTES // 1024**2} MiB")
                    upload = (file.filename, data)
                # a field sent as a file part is no text: left out
                feature, text, k = (v if isinstance(v, str) else None for v in map(params.get, ("feature", "q", "k")))
                feature, text = feature or "", text or ""
        else:
            feature, text, k = params.get("feature", ""), params.get("q", ""), params.get("k")
        k = _int(k, browser.k, 1, 100)
        return render(request, await run_in_threadpool(pages.search, feature, text.strip() or None, upload, k))

    async def sid(request: Request) -> Response:
        page = _int(request.query_params.get("page"), 1, 1, 10**9)
        return render(
            request,
            await run_in_threadpool(
                pages.sid, request.path_params["name"], request.query_params.get("prefix", ""), page
            ),
        )

    async def errors(request: Request) -> Response:
        params = request.query_params
        page = _int(params.get("page"), 1, 1, 10**9)
        return render(
            request,
            await run_in_threadpool(pages.errors, params.get("feature") or None, params.get("stage") or None, page),
        )

    async def diff(request: Request) -> Response:
        params = request.query_params
        k = _int(params.get("k"), 10, 1, 100)
        return render(
            request, await run_in_threadpool(pages.diff, params.get("a", "").strip(), params.get("b", "").strip(), k)
        )

    async def diff_png(request: Request) -> Response:
        params = request.query_params
        k = _int(params.get("k"), 10, 1, 100)
        try:
            result = await run_in_threadpool(browser.diff, params.get("a", ""), params.get("b", ""), k)
        except ItemlensError as problem:
            raise PageError(404, str(problem)) from None
        png = await run_in_threadpool(result.histogram_png)
        return Response(png, media_type="image/png")

    async def media(request: Request) -> Response:
        item_id, src = request.query_params.get("item", ""), request.query_params.get("src", "")
        uri, _ = await run_in_threadpool(browser.media_uri, item_id, src)
        try:
            local = local_path(uri)
        except ItemlensError as problem:
            raise PageError(404, f"cannot read {src!r}: {problem}") from None
        if local is not None:
            real = os.path.realpath(local)  # as the ingest reads it: links resolved, regular files only
            if not os.path.isfile(real):
                raise PageError(404, f"the catalog names {src!r} for item {item_id!r}, but there is no such file")
            return FileResponse(real, headers=MEDIA_HEADERS)  # answers Range requests: players can seek
        from itemlens.workflows.browse.media import MAX_VIDEO_BYTES

        try:
            data = await run_in_threadpool(read_bytes, uri, MAX_VIDEO_BYTES)
        except ItemError as error:
            raise PageError(404, f"cannot read {src!r}: {error.reason}") from None
        import mimetypes

        return Response(
            data, media_type=mimetypes.guess_type(uri)[0] or "application/octet-stream", headers=MEDIA_HEADERS
        )

    async def thumb(request: Request) -> Response:
        params = request.query_params
        size = _int(params.get("size"), 160, 16, 2048)
        data = await run_in_threadpool(browser.thumbnail, params.get("item", ""), params.get("src", ""), size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def frame(request: Request) -> Response:
        params = request.query_params
        n = _int(params.get("n"), 0, 0, 10**6)
        _, frames = await run_in_threadpool(browser.video_frames, params.get("item", ""), params.get("feature", ""))
        if n >= len(frames.jpegs):
            raise PageError(404, f"the video has {len(frames.jpegs)} sampled frames; no frame {n}")
        return Response(frames.jpegs[n], media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def sid_plot(request: Request) -> Response:
        def png():
            with browser.lock:
                return browser.lens.semantic_id_plot(request.path_params["name"])

        try:
            return Response(await run_in_threadpool(png), media_type="image/png")
        except UnknownFeatureError as unknown:
            raise PageError(404, str(unknown)) from None

    async def graph_plot(request: Request) -> Response:
        def png():
            with browser.lock:
                return browser.lens.graph_plot(request.path_params["name"])

        try:
            return Response(await run_in_threadpool(png), media_type="image/png")
        except UnknownFeatureError as unknown:
            raise PageError(404, str(unknown)) from None

    routes = [
        Route("/", summary),
        Route("/items", items),
        Route("/go", go),
        Route("/item/{item_id:path}", item),
        Route("/item", item),  # ?id=, for the ids . and ..
        Route("/search", search, methods=["GET", "POST"]),
        Route("/sid/{name}", sid),
        Route("/errors", errors),
        Route("/diff", diff),
        Route("/diff.png", diff_png),
        Route("/media", media),
        Route("/thumb", thumb),
        Route("/frame", frame),
        Route("/plot/sid/{name}.png", sid_plot),
        Route("/plot/graph/{name}.png", graph_plot),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={PageError: page_error, HTTPException: page_error, ItemlensError: page_error},
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))],
    )
    app.state.browser = browser
    return app


def serve(
    store: str | os.PathLike,
    *,
    snapshot: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    catalog: str | None = None,
    id_column: str | None = None,
    catalog_format: str | None = None,
) -> None:
    """Run the app with uvicorn until interrupted (``itemlens browse``)."""
    import sys

    import uvicorn

    loopback, hosts = answered_hosts(host)
    # bound first: a port in use is one message (exit 2) before the store is opened, not a URL
    # of another server
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ItemlensError(f"browse cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        app = create_app(
            store,
            snapshot=snapshot,
            catalog=catalog,
            id_column=id_column,
            allowed_hosts=hosts,
            catalog_format=catalog_format,
        )
    except BaseException:
        sock.close()
        raise
    browser = app.state.browser
    shown = f"[{host}]" if ":" in host else host
    print(
        f"itemlens browse: {browser.store}, snapshot {browser.lens.snapshot}, on http://{shown}:{port}/ "
        "(read-only; Ctrl-C stops)",
        file=sys.stderr,
    )
    if not loopback:
        print(
            f"itemlens browse: listening on {host}: anyone who can reach it sees the catalog's fields and media",
            file=sys.stderr,
        )
    if browser.catalog_problem:
        print(f"itemlens browse: {browser.catalog_problem}", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
