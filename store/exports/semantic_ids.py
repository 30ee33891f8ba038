"""Semantic-ID formats: ``sid-grid`` (the torch tensor GRID's loader reads, with GRID's dedup
digit), ``sid-tokens`` (offset tokens for one embedding table, token strings, the vocabulary)
and ``sid-parquet``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.store.exports.core import (
    CHUNK_ROWS,
    Aligned,
    register_exporter,
    write_mapping,
    write_masks,
)

if TYPE_CHECKING:  # pragma: no cover
    pass


def grid_dedup(prefix: np.ndarray) -> np.ndarray:
    """GRID's dedup digit (``deduplicate_rows_in_tensor``, src/utils/tensor_utils.py): 0 for a
    row whose code tuple no other row has, else 1 .. n over the n rows sharing it, in row order."""
    if len(prefix) == 0:
        return np.zeros(0, np.int64)
    _, inverse, counts = np.unique(prefix, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    grouped = np.argsort(inverse, kind="stable")  # rows by tuple, in row order within one
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(prefix), np.int64)
    rank[grouped] = np.arange(len(prefix)) - starts[inverse[grouped]]
    return np.where(counts[inverse] > 1, rank + 1, 0).astype(np.int64)


def _sid_grid(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """GRID's semantic-ID file (``semantic_id_path``, read with torch.load): <name>_semantic_ids.pt,
    int64 [levels + 1, N], rows the levels' codes then the dedup digit, column i = item i of
    i_id_mapping.csv. The digit is GRID's numbering over the exported items (unique 0, collided
    1 .. n), or the store's suffix (dedup "store"). Filled columns hold the fill throughout."""
    import torch

    dedup = options.get("dedup") or "grid"
    files = []
    for name, codes in aligned.semantic_ids.items():
        info = aligned.semantic_id_info[name]
        levels = int(info.spec["levels"])
        present = aligned.present[name]
        grid = np.full((len(codes), levels + 1), aligned.fill if aligned.fill is not None else -1, np.int64)
        grid[:, :levels] = codes[:, :levels]
        if dedup == "store":
            grid[:, levels] = codes[:, levels]
            how = "the store's suffix (items sharing a tuple numbered 0, 1, ... in item-index order)"
        else:
            grid[present, levels] = grid_dedup(codes[present, :levels])
            how = "GRID's deduplicate_rows_in_tensor: 0 where no other exported item has the tuple, else 1 .. n"
        if not present.all():
            grid[~present] = aligned.fill
        torch.save(torch.from_numpy(np.ascontiguousarray(grid.T)), out / f"{name}_semantic_ids.pt")
        files.append(f"{name}_semantic_ids.pt")
        largest, k = int(grid[present, levels].max(initial=0)), int(info.spec["codebook_size"])
        aligned.details[name].update(
            {
                "file": f"{name}_semantic_ids.pt",
                "layout": f"int64 [{levels + 1}, {len(codes)}]: levels, then dedup",
                "width": levels + 1,
                "dedup": how,
                "dedup_max": largest,
            }
        )
        if largest >= k:
            # GRID's TIGER offsets hierarchy h by h * num_embeddings_per_hierarchy in one embedding table
            aligned.notes.append(
                f"{name}: the dedup digit reaches {largest}, beyond codebook_size {k}; GRID embeds every hierarchy "
                f"with codebook_width (num_embeddings_per_hierarchy) entries: set it to at least {largest + 1}"
            )
    files += write_masks(aligned, out, aligned.semantic_ids)
    return files + [write_mapping(aligned, out)]


def _sid_tokens(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One token vocabulary for generative recommenders: <name>_tokens.npy, int64 [N, width],
    token = code + offsets[level] (offsets applied: level l's code c is c + l * K, the suffix
    after levels * K); <name>_tokens.txt, one line per item of raw codes <a_12><b_3><c_200><d_0>
    (no offsets; empty: no ID); <name>_vocab.json with K, the offsets, that they are applied in
    the .npy and not in the .txt, and the vocabulary size."""
    from itemlens.store.semantic_ids import token_offsets, token_strings

    files = []
    for name, codes in aligned.semantic_ids.items():
        info = aligned.semantic_id_info[name]
        present = aligned.present[name]
        offsets = np.array(token_offsets(info), np.int64)
        tokens = codes + offsets[None, :]
        if not present.all():
            tokens[~present] = aligned.fill
        np.save(out / f"{name}_tokens.npy", tokens)
        with open(out / f"{name}_tokens.txt", "w") as f:  # chunk by chunk: no string per item held
            for start in range(0, len(codes), CHUNK_ROWS):
                f.write(
                    "".join(
                        t + "\n"
                        for t in token_strings(codes[start : start + CHUNK_ROWS], present[start : start + CHUNK_ROWS])
                    )
                )
            if not len(codes):
                f.write("\n")
        k = int(info.spec["codebook_size"])
        suffix = int(info.metrics.get("suffix_values", 0)) if info.width > info.spec["levels"] else 0
        vocab = {
            "codebook_size": k,
            "levels": info.spec["levels"],
            "width": info.width,
            "offsets": offsets.tolist(),
            "offsets_applied": {f"{name}_tokens.npy": True, f"{name}_tokens.txt": False},
            "suffix_values": suffix,
            "vocab_size": int(info.spec["levels"]) * k + suffix,
            "fill": aligned.fill,
        }
        (out / f"{name}_vocab.json").write_text(json.dumps(vocab, indent=2))
        files += [f"{name}_tokens.npy", f"{name}_tokens.txt", f"{name}_vocab.json"]
        aligned.details[name].update(
            {"offsets": offsets.tolist(), "offsets_applied_in": f"{name}_tokens.npy", "vocab_size": vocab["vocab_size"]}
        )
    files += write_masks(aligned, out, aligned.semantic_ids)
    return files + [write_mapping(aligned, out)]


def _sid_parquet(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """semantic_ids.parquet: item_id, item_index, per definition its codes (null: no ID) and
    its token string (raw codes, no offsets); one row group per chunk of rows."""
    import pyarrow.parquet as pq

    from itemlens.store.semantic_ids import token_strings

    writer = None
    try:
        for start in range(0, max(len(aligned.ids), 1), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            columns: dict[str, pa.Array] = {
                "item_id": pa.array(aligned.ids[rows], pa.string()),
                "item_index": pa.array(aligned.item_index[rows], pa.int64()),
            }
            for name, codes in aligned.semantic_ids.items():
                present, part = aligned.present[name][rows], codes[rows]
                flat = pa.array(np.where(present[:, None], part, 0).reshape(-1).astype(np.int32))
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, codes.shape[1], mask=pa.array(~present))
                columns[f"{name}_tokens"] = pa.array([t or None for t in token_strings(part, present)], pa.string())
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(out / "semantic_ids.parquet", table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return ["semantic_ids.parquet"]


register_exporter("sid-grid", _sid_grid, takes="semantic_ids", needs_order=True)
register_exporter("sid-tokens", _sid_tokens, takes="semantic_ids")
register_exporter("sid-parquet", _sid_parquet, takes="semantic_ids", dense=False)
