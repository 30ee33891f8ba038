"""Feature formats: ``mmrec`` (MMRec's <role>_feat.npy, row i = itemID i, and i_id_mapping.csv),
``npz`` (one numpy archive with ids and masks) and ``parquet`` (ids and a vector column per
feature, null where missing), each written chunk by chunk from Lance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.store.exports.core import (
    CHUNK_ROWS,
    Aligned,
    _chunks,
    check_mmrec_folder,
    npy_header,
    register_exporter,
    save_model_files,
    write_mapping,
    write_masks,
    write_npy,
)

if TYPE_CHECKING:  # pragma: no cover
    pass


def _mmrec(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """MMRec's dataset folder: image_feat.npy and text_feat.npy (row i = itemID i, float32 by
    default), the cached graph files of ``model`` if one is named, i_id_mapping.csv (asin,
    itemID) and, where rows were filled, <role>_mask.npy. Refused over graph caches that new
    features would leave stale. Written chunk by chunk (the bytes np.save writes)."""
    check_mmrec_folder(aligned, out, writes_features=True)
    files = []
    for role, values in aligned.features.items():
        write_npy(out / f"{role}_feat.npy", values)
        files.append(f"{role}_feat.npy")
    files += write_masks(aligned, out, aligned.features)
    files += save_model_files(aligned, out)
    return files + [write_mapping(aligned, out)]


#: a fixed time for the archive's members, so that one export's bytes do not depend on the clock
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _npz(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One numpy archive features.npz (np.load reads it): item_id, item_index, per feature its
    matrix and <name>_mask; written member by member, each chunk by chunk (uncompressed, as
    np.savez writes, with a fixed member time)."""
    import zipfile

    arrays: dict[str, Any] = {"item_id": np.array(aligned.ids, dtype=str), "item_index": aligned.item_index}
    for name, values in aligned.features.items():
        arrays[name] = values
        arrays[f"{name}_mask"] = aligned.present[name]
    with zipfile.ZipFile(out / "features.npz", "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, values in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            with archive.open(info, "w", force_zip64=True) as member:
                member.write(npy_header(values.shape, values.dtype))
                for chunk in _chunks(values):
                    member.write(np.ascontiguousarray(chunk).tobytes())
    return ["features.npz"]


def _parquet(aligned: Aligned, out: Path, options: dict[str, Any]) -> list[str]:
    """One Parquet table items.parquet: item_id, item_index, and per feature a fixed-size list
    column (null where the item has no value) and a boolean <name>_present; one row group per
    chunk of rows."""
    import pyarrow.parquet as pq

    names = list(aligned.features)
    streams = {name: _chunks(aligned.features[name]) for name in names}
    writer = None
    try:
        for start in range(0, len(aligned.ids), CHUNK_ROWS):
            stop = min(len(aligned.ids), start + CHUNK_ROWS)
            columns: dict[str, pa.Array] = {
                "item_id": pa.array(aligned.ids[start:stop], pa.string()),
                "item_index": pa.array(aligned.item_index[start:stop], pa.int64()),
            }
            for name in names:
                values, present = next(streams[name]), aligned.present[name][start:stop]
                columns[name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.reshape(-1)), values.shape[1], mask=pa.array(~present)
                )
                columns[f"{name}_present"] = pa.array(present)
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(out / "items.parquet", table.schema)
            writer.write_table(table)
        if writer is None:  # no rows: the columns still say what they would hold
            columns = {"item_id": pa.array([], pa.string()), "item_index": pa.array([], pa.int64())}
            for name in names:
                dim = aligned.features[name].shape[1]
                columns[name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(np.zeros(0, aligned.features[name].dtype)), dim
                )
                columns[f"{name}_present"] = pa.array([], pa.bool_())
            pq.write_table(pa.table(columns), out / "items.parquet")
    finally:
        if writer is not None:
            writer.close()
    return ["items.parquet"]


register_exporter("mmrec", _mmrec, needs_order=True)
register_exporter("npz", _npz)
register_exporter("parquet", _parquet, dense=False)
