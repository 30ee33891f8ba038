"""Graph formats: ``pyg`` (edge_index and edge_weight arrays), ``scipy-npz`` and ``mmrec-adj``
(the sparse torch tensor MMRec-style models cache), each normalized by a preset named in the
file names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itemlens.store.exports.core import (
    Aligned,
    check_mmrec_folder,
    register_exporter,
    save_model_files,
    write_mapping,
)

if TYPE_CHECKING:  # pragma: no cover
    pass


def _graph_stem(aligned: Aligned, name: str) -> str:
    return f"{name}_{aligned.graph_preset[name]}"


def _pyg(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """PyTorch Geometric's layout: <graph>_<preset>_edge_index.npy int64 [2, E] (source row,
    target row) and <graph>_<preset>_edge_weight.npy float32 [E]; torch.from_numpy gives PyG
    its tensors."""
    files = []
    for name, matrix in aligned.graphs.items():
        coo = matrix.tocoo()
        stem = _graph_stem(aligned, name)
        np.save(out / f"{stem}_edge_index.npy", np.vstack([coo.row, coo.col]).astype(np.int64))
        np.save(out / f"{stem}_edge_weight.npy", coo.data.astype(np.float32))
        files += [f"{stem}_edge_index.npy", f"{stem}_edge_weight.npy"]
    return files + [write_mapping(aligned, out)]


def _scipy_npz(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """scipy.sparse.save_npz of each graph's CSR matrix: <graph>_<preset>.npz (scipy.sparse.load_npz)."""
    import scipy.sparse as sp

    files = []
    for name, matrix in aligned.graphs.items():
        stem = _graph_stem(aligned, name)
        sp.save_npz(out / f"{stem}.npz", matrix.astype(np.float32))
        files.append(f"{stem}.npz")
    return files + [write_mapping(aligned, out)]


def _mmrec_adj(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """Sparse torch tensors: with a model (``--for``), the files that model caches, built from
    the features as it builds them; else per graph <graph>_<preset>_adj_<k>.pt, a coalesced
    torch sparse COO float32 [N, N] (torch.load(..., weights_only=True))."""
    if options.get("model"):
        check_mmrec_folder(aligned, out, writes_features=False)
        return save_model_files(aligned, out) + [write_mapping(aligned, out)]
    import torch

    files = []
    for name, matrix in aligned.graphs.items():
        coo = matrix.tocoo()
        tensor = torch.sparse_coo_tensor(
            np.vstack([coo.row, coo.col]).astype(np.int64),
            coo.data.astype(np.float32),
            matrix.shape,
            check_invariants=True,
        ).coalesce()
        file = f"{_graph_stem(aligned, name)}_adj_{aligned.graph_info[name].spec['k']}.pt"
        torch.save(tensor, out / file)
        files.append(file)
    return files + [write_mapping(aligned, out)]


register_exporter("pyg", _pyg, takes="graphs")
register_exporter("scipy-npz", _scipy_npz, takes="graphs")
register_exporter("mmrec-adj", _mmrec_adj, takes="graphs", needs_order=True)
