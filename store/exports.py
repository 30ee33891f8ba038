"""Exports: the store's features in the files recommender code already reads.

One framework, many formats: an exporter receives the rows already aligned (to the store's
stable item index, or to an item order the caller gives, such as the ids of their interaction
data) and writes them. Items without a value are filled with ``fill`` (0 by default, ``nan`` on
request) and flagged in a mask written beside them, so the fill is never mistaken for data.
Every export also writes ``export.json``: the snapshot, feature versions, order and fill used.

Formats here: ``mmrec``, ``npz``, ``parquet`` (features) and ``sid-grid``, ``sid-tokens``,
``sid-parquet`` (semantic IDs; items without an ID get codes -1 and mask false), ``pyg``,
``scipy-npz``, ``mmrec-adj`` (graphs, normalized by a preset; items without a neighbour list
have no edges, and their mask is false). Other artifacts register theirs with
:func:`register_exporter`.
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
    graphs: dict[str, Any] = field(default_factory=dict)                # name -> scipy CSR [rows, rows]
    graph_info: dict[str, Any] = field(default_factory=dict)            # name -> GraphVersion


Exporter = Callable[[Aligned, Path, dict[str, Any]], list[str]]
_EXPORTERS: dict[str, Exporter] = {}
_TAKES: dict[str, str] = {}      # format -> "features" or "semantic_ids"


def register_exporter(name: str, exporter: Exporter, *, replace: bool = False, takes: str = "features") -> None:
    """Add a format. ``takes``: what ``export`` aligns for it, ``"features"`` (pooled vectors),
    ``"semantic_ids"`` (codes) or ``"graphs"`` (normalized sparse matrices)."""
    if name in _EXPORTERS and not replace:
        raise ValueError(f"exporter {name!r} is already registered; pass replace=True to replace it")
    if takes not in ("features", "semantic_ids", "graphs"):
        raise ValueError("takes must be 'features', 'semantic_ids' or 'graphs'")
    _EXPORTERS[name] = exporter
    _TAKES[name] = takes


def export_formats() -> list[str]:
    return sorted(_EXPORTERS)


def export(lens: Lens, fmt: str, out: str | os.PathLike, *, features: Sequence[str] | None = None,
           semantic_ids: Sequence[str] | None = None, graphs: Sequence[str] | None = None,
           ids: Sequence[str] | None = None, fill: float = 0.0, **options: Any) -> list[str]:
    """Write ``features`` (default: every feature's current version), or for a semantic-ID
    format ``semantic_ids`` (default: all), of the reader's snapshot in format ``fmt`` under
    ``out``; returns the files written."""
    if fmt not in _EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(export_formats())}")
    takes = _TAKES[fmt]
    takes_codes = takes == "semantic_ids"
    if takes_codes:
        names = list(semantic_ids) if semantic_ids is not None else sorted(lens.doc.semantic_ids)
    elif takes == "graphs":
        names = list(graphs) if graphs is not None else sorted(lens.doc.graphs)
    else:
        names = list(features) if features is not None else sorted(lens.doc.features)
    if not names:
        what = {"semantic_ids": "semantic IDs", "graphs": "graphs", "features": "features"}[takes]
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
    for name in names if takes == "graphs" else []:
        info = lens.graph_info(name)
        matrix, store_order = lens.graph(name, options.get("preset"))
        # rows and columns in export order; an id the store does not know gets an empty row
        position = np.array(index, np.int64)
        known = position >= 0
        selector = _selector(position[known], matrix.shape[0])
        aligned_matrix = (selector @ matrix @ selector.T).tocsr()
        if not known.all():
            aligned_matrix = _expand(aligned_matrix, np.flatnonzero(known), len(order))
        aligned.graphs[info.name] = aligned_matrix
        aligned.present[info.name] = np.diff(aligned_matrix.indptr) > 0
        aligned.graph_info[info.name] = info
        versions[info.name] = f"{info.qualified} ({options.get('preset') or info.spec.get('preset')})"
    for name in [] if takes != "features" else names:
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
        "fill": -1 if takes_codes else ("no edges" if takes == "graphs" else ("nan" if np.isnan(fill) else fill)),
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


def _selector(positions: np.ndarray, size: int):
    """A [len(positions), size] 0/1 matrix picking rows ``positions``."""
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(positions)), (np.arange(len(positions)), positions)),
                         shape=(len(positions), size))


def _expand(matrix, rows: np.ndarray, size: int):
    """``matrix`` (over ``rows`` of the export) placed in a [size, size] matrix."""
    placed = _selector(rows, size).T
    return (placed @ matrix @ placed.T).tocsr()


def _pyg(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """PyTorch Geometric's layout: <name>_edge_index.npy int64 [2, E] (source row, target row)
    and <name>_edge_weight.npy float32 [E]; torch.from_numpy gives PyG its tensors."""
    files = []
    for name, matrix in aligned.graphs.items():
        coo = matrix.tocoo()
        np.save(out / f"{name}_edge_index.npy", np.vstack([coo.row, coo.col]).astype(np.int64))
        np.save(out / f"{name}_edge_weight.npy", coo.data.astype(np.float32))
        files += [f"{name}_edge_index.npy", f"{name}_edge_weight.npy"]
    return files + [_id_mapping(aligned, out)]


def _scipy_npz(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """scipy.sparse.save_npz of each graph's CSR matrix: <name>.npz (scipy.sparse.load_npz)."""
    import scipy.sparse as sp

    files = []
    for name, matrix in aligned.graphs.items():
        sp.save_npz(out / f"{name}.npz", matrix.astype(np.float32))
        files.append(f"{name}.npz")
    return files + [_id_mapping(aligned, out)]


def _mmrec_adj(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """The sparse torch tensors MMRec-style models cache: <name>_adj_<k>.pt, a torch sparse COO
    float32 tensor [N, N] written with torch.save (load with torch.load(..., weights_only=True))."""
    import torch

    files = []
    for name, matrix in aligned.graphs.items():
        coo = matrix.tocoo()
        tensor = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]).astype(np.int64),
                                         coo.data.astype(np.float32), matrix.shape,
                                         check_invariants=True).coalesce()
        file = f"{name}_adj_{aligned.graph_info[name].spec['k']}.pt"
        torch.save(tensor, out / file)
        files.append(file)
    return files + [_id_mapping(aligned, out)]


register_exporter("mmrec", _mmrec)
register_exporter("npz", _npz)
register_exporter("parquet", _parquet)
register_exporter("sid-grid", _sid_grid, takes="semantic_ids")
register_exporter("sid-tokens", _sid_tokens, takes="semantic_ids")
register_exporter("sid-parquet", _sid_parquet, takes="semantic_ids")
register_exporter("pyg", _pyg, takes="graphs")
register_exporter("scipy-npz", _scipy_npz, takes="graphs")
register_exporter("mmrec-adj", _mmrec_adj, takes="graphs")
