"""Exports: the store's features in the files recommender code already reads.

One framework, many formats: an exporter receives the rows already aligned (to the store's
stable item index, or to an item order the caller gives, such as the ids of their interaction
data) and writes them. Items without a value are filled with ``fill`` (0 by default, ``nan`` on
request) and flagged in a mask written beside them, so the fill is never mistaken for data.
Every export also writes ``export.json``: the snapshot, feature versions, order and fill used.

Formats here: ``mmrec``, ``npz``, ``parquet`` (features) and ``sid-grid``, ``sid-tokens``,
``sid-parquet`` (semantic IDs; items without an ID get codes -1 and mask false). Other
artifacts register theirs with :func:`register_exporter`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.client import Lens


@dataclass
class Aligned:
    """What an exporter writes: rows in export order."""

    ids: list[str]                       # item_id per row
    item_index: np.ndarray               # the store's stable index per row (-1: unknown to the store)
    features: dict[str, np.ndarray] = field(default_factory=dict)    # name -> [rows, dim]
    present: dict[str, np.ndarray] = field(default_factory=dict)     # name -> bool [rows]
    semantic_ids: dict[str, np.ndarray] = field(default_factory=dict)   # name -> int64 [rows, width], -1 fill
    semantic_id_info: dict[str, Any] = field(default_factory=dict)      # name -> SemanticIdVersion


Exporter = Callable[[Aligned, Path, dict[str, Any]], list[str]]
_EXPORTERS: dict[str, Exporter] = {}
_TAKES: dict[str, str] = {}      # format -> "features" or "semantic_ids"


def register_exporter(name: str, exporter: Exporter, *, replace: bool = False, takes: str = "features") -> None:
    """Add a format. ``takes``: what ``export`` aligns for it, ``"features"`` (pooled vectors)
    or ``"semantic_ids"`` (codes)."""
    if name in _EXPORTERS and not replace:
        raise ValueError(f"exporter {name!r} is already registered; pass replace=True to replace it")
    if takes not in ("features", "semantic_ids"):
        raise ValueError("takes must be 'features' or 'semantic_ids'")
    _EXPORTERS[name] = exporter
    _TAKES[name] = takes


def export_formats() -> list[str]:
    return sorted(_EXPORTERS)


def export(lens: Lens, fmt: str, out: str | os.PathLike, *, features: Sequence[str] | None = None,
           semantic_ids: Sequence[str] | None = None, ids: Sequence[str] | None = None, fill: float = 0.0,
           **options: Any) -> list[str]:
    """Write ``features`` (default: every feature's current version), or for a semantic-ID
    format ``semantic_ids`` (default: all), of the reader's snapshot in format ``fmt`` under
    ``out``; returns the files written."""
    if fmt not in _EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(export_formats())}")
    takes_codes = _TAKES[fmt] == "semantic_ids"
    if takes_codes:
        names = list(semantic_ids) if semantic_ids is not None else sorted(lens.doc.semantic_ids)
    else:
        names = list(features) if features is not None else sorted(lens.doc.features)
    if not names:
        what = "semantic IDs" if takes_codes else "features"
        raise ConfigError(f"snapshot {lens.snapshot} of {lens.uri} has no {what} to export as {fmt}")
    items = lens.items()
    by_index = np.argsort(items.column("item_index").to_numpy())
    store_ids = [items.column("item_id")[int(i)].as_py() for i in by_index]
    if ids is None:
        order = store_ids
        index = items.column("item_index").to_numpy()[by_index]
    else:
        order = [i if isinstance(i, str) else str(i) for i in ids]
        known = dict(zip(store_ids, items.column("item_index").to_numpy()[by_index].tolist()))
        index = np.array([known.get(i, -1) for i in order], np.int64)
    aligned = Aligned(ids=order, item_index=index)
    versions = {}
    for name in names if takes_codes else []:
        info = lens.semantic_id_info(name)
        codes = lens.semantic_ids(name, order, fill=-1)
        aligned.semantic_ids[info.name] = codes
        aligned.present[info.name] = (codes >= 0).all(axis=1) if codes.size else np.zeros(len(order), bool)
        aligned.semantic_id_info[info.name] = info
        versions[info.name] = info.qualified
    for name in [] if takes_codes else names:
        version = lens._version(name)
        if version.kind != "vector" or version.pooling != "mean":
            raise ConfigError(f"{version.qualified} holds {version.kind}s per {version.pooling}; "
                              "exports take pooled vectors")
        values, found = lens._lookup(version, order, fill)
        aligned.features[version.name] = values
        aligned.present[version.name] = found
        versions[version.name] = version.qualified
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    files = _EXPORTERS[fmt](aligned, target, options)
    manifest = {
        "format": fmt, "store": lens.uri, "snapshot": lens.snapshot, "features": versions,
        "rows": len(order), "order": "item_index" if ids is None else "given ids",
        "fill": -1 if takes_codes else ("nan" if np.isnan(fill) else fill),
        "missing": {n: int((~p).sum()) for n, p in aligned.present.items()},
        "files": files,
    }
    (target / "export.json").write_text(json.dumps(manifest, indent=2))
    return files + ["export.json"]


# -- formats ---------------------------------------------------------------------------------

def _mmrec(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """MMRec's layout: <modality>_feat.npy with row i = itemID i, and i_id_mapping.csv
    (tab-separated item_id, itemID) giving the item behind each row. Features named image and
    text become image_feat.npy and text_feat.npy, which MMRec's models load by default; a
    mask per feature (<name>_mask.npy) flags filled rows."""
    files = []
    for name, values in aligned.features.items():
        np.save(out / f"{name}_feat.npy", values)
        np.save(out / f"{name}_mask.npy", aligned.present[name])
        files += [f"{name}_feat.npy", f"{name}_mask.npy"]
    with open(out / "i_id_mapping.csv", "w") as f:
        f.write("item_id\titemID\n")
        for row, item in enumerate(aligned.ids):
            f.write(f"{item}\t{row}\n")
    return files + ["i_id_mapping.csv"]


def _npz(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One numpy archive: item_id, item_index, and per feature its matrix and mask."""
    arrays: dict[str, np.ndarray] = {"item_id": np.array(aligned.ids, dtype=str), "item_index": aligned.item_index}
    for name, values in aligned.features.items():
        arrays[name] = values
        arrays[f"{name}_mask"] = aligned.present[name]
    np.savez(out / "features.npz", **arrays)
    return ["features.npz"]


def _parquet(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One Parquet table: item_id, item_index, and per feature a fixed-size list column and a
    boolean <name>_present (the list is null where the item has no value)."""
    import pyarrow.parquet as pq

    columns: dict[str, pa.Array] = {"item_id": pa.array(aligned.ids, pa.string()),
                                    "item_index": pa.array(aligned.item_index, pa.int64())}
    for name, values in aligned.features.items():
        present = aligned.present[name]
        flat = pa.array(values.reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(~present))
        columns[f"{name}_present"] = pa.array(present)
    pq.write_table(pa.table(columns), out / "items.parquet")
    return ["items.parquet"]


def _id_mapping(aligned: Aligned, out: Path) -> str:
    with open(out / "i_id_mapping.csv", "w") as f:
        f.write("item_id\titemID\n")
        for row, item in enumerate(aligned.ids):
            f.write(f"{item}\t{row}\n")
    return "i_id_mapping.csv"


def _sid_grid(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """GRID's layout: <name>_codes.npy, int64 [width, N] (levels, then the suffix, as rows;
    column i = row i of i_id_mapping.csv), -1 where an item has no ID; <name>_mask.npy."""
    files = []
    for name, codes in aligned.semantic_ids.items():
        np.save(out / f"{name}_codes.npy", np.ascontiguousarray(codes.T))
        np.save(out / f"{name}_mask.npy", aligned.present[name])
        files += [f"{name}_codes.npy", f"{name}_mask.npy"]
    return files + [_id_mapping(aligned, out)]


def _sid_tokens(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One token vocabulary for generative recommenders: <name>_tokens.npy, int64 [N, width],
    token = code + level * K (the suffix level after levels * K), -1 where an item has no ID;
    <name>_tokens.txt, one line per item of <a_12><b_3><c_200><d_0> strings (empty: no ID);
    <name>_vocab.json with K, the offsets and the vocabulary size."""
    from itemlens.store.semantic_ids import token_offsets, token_strings

    files = []
    for name, codes in aligned.semantic_ids.items():
        info = aligned.semantic_id_info[name]
        present = aligned.present[name]
        offsets = np.array(token_offsets(info), np.int64)
        tokens = np.where(present[:, None], codes + offsets[None, :], -1)
        np.save(out / f"{name}_tokens.npy", tokens)
        (out / f"{name}_tokens.txt").write_text("\n".join(token_strings(codes, present)) + "\n")
        k = int(info.spec["codebook_size"])
        suffix = int(info.metrics.get("suffix_values", 0)) if info.width > info.spec["levels"] else 0
        vocab = {"codebook_size": k, "levels": info.spec["levels"], "width": info.width, "offsets": offsets.tolist(),
                 "suffix_values": suffix, "vocab_size": int(info.spec["levels"]) * k + suffix}
        (out / f"{name}_vocab.json").write_text(json.dumps(vocab, indent=2))
        files += [f"{name}_tokens.npy", f"{name}_tokens.txt", f"{name}_vocab.json"]
    return files + [_id_mapping(aligned, out)]


def _sid_parquet(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """semantic_ids.parquet: item_id, item_index, per definition its codes (null: no ID) and
    its token string."""
    import pyarrow.parquet as pq

    from itemlens.store.semantic_ids import token_strings

    columns: dict[str, pa.Array] = {"item_id": pa.array(aligned.ids, pa.string()),
                                    "item_index": pa.array(aligned.item_index, pa.int64())}
    for name, codes in aligned.semantic_ids.items():
        present = aligned.present[name]
        flat = pa.array(codes.reshape(-1).astype(np.int32))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, codes.shape[1], mask=pa.array(~present))
        columns[f"{name}_tokens"] = pa.array([t or None for t in token_strings(codes, present)], pa.string())
    pq.write_table(pa.table(columns), out / "semantic_ids.parquet")
    return ["semantic_ids.parquet"]


register_exporter("mmrec", _mmrec)
register_exporter("npz", _npz)
register_exporter("parquet", _parquet)
register_exporter("sid-grid", _sid_grid, takes="semantic_ids")
register_exporter("sid-tokens", _sid_tokens, takes="semantic_ids")
register_exporter("sid-parquet", _sid_parquet, takes="semantic_ids")
