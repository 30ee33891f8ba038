"""Feature formats: ``mmrec`` (MMRec's <role>_feat.npy, row i = itemID i, and i_id_mapping.csv),
``npz`` (one numpy archive with ids and masks) and ``parquet`` (ids and a vector column per
feature, null where missing)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
import numpy as np
import pyarrow as pa
from itemlens.store.exports.core import (
    Aligned, check_mmrec_folder, register_exporter, save_model_files, write_mapping, write_masks,
)
if TYPE_CHECKING:  # pragma: no cover
    pass


def _mmrec(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """MMRec's dataset folder: image_feat.npy and text_feat.npy (row i = itemID i, float32 by
    default), the cached graph files of ``model`` if one is named, i_id_mapping.csv (asin,
    itemID) and, where rows were filled, <role>_mask.npy. Refused over graph caches that new
    features would leave stale."""
    check_mmrec_folder(aligned, out, writes_features=True)
    files = []
    for role, values in aligned.features.items():
        np.save(out / f"{role}_feat.npy", values)
        files.append(f"{role}_feat.npy")
    files += write_masks(aligned, out, aligned.features)
    files += save_model_files(aligned, out)
    return files + [write_mapping(aligned, out)]


def _npz(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One numpy archive features.npz: item_id, item_index, per feature its matrix and <name>_mask."""
    arrays: dict[str, np.ndarray] = {"item_id": np.array(aligned.ids, dtype=str), "item_index": aligned.item_index}
    for name, values in aligned.features.items():
        arrays[name] = values
        arrays[f"{name}_mask"] = aligned.present[name]
    np.savez(out / "features.npz", **arrays)
    return ["features.npz"]


def _parquet(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One Parquet table items.parquet: item_id, item_index, and per feature a fixed-size list
    column (null where the item has no value) and a boolean <name>_present."""
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


register_exporter("mmrec", _mmrec, needs_order=True)
register_exporter("npz", _npz)
register_exporter("parquet", _parquet, dense=False)
