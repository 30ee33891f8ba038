"""How a semantic-ID version is stored: ``sid__<name>__<label>`` (item_id, codes, the
quantizer's own codes ``prefix``, the hash of the inputs, active, assigned_at; retired tuples
stay as inactive rows) and ``sidq__<name>__<label>`` (key -> bytes: the safetensors weights,
the code-usage PNG); and the token strings and offsets generative recommenders read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from itemlens.errors import StoreError
from itemlens.store.layout import TIMESTAMP

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import SemanticIdVersion
    from itemlens.store.writer import StoreWriter


CODES_FIELDS = ["item_id", "codes", "prefix", "source_hash", "active", "assigned_at"]


def codes_schema(width: int, levels: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string()),
            pa.field("codes", pa.list_(pa.int32(), width)),  # the semantic ID
            pa.field("prefix", pa.list_(pa.int32(), levels)),  # the quantizer's codes (before uniqueness)
            pa.field("source_hash", pa.string()),  # input hashes of the input features
            pa.field("active", pa.bool_()),  # false: retired, never handed out again
            pa.field("assigned_at", TIMESTAMP),
        ]
    )


QUANTIZER_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.large_binary())])


def codes_matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A codes column as int32 [rows, width] (as stored: a few integers per item)."""
    if len(column) == 0:
        return np.zeros((0, width), np.int32)
    return column.combine_chunks().flatten().to_numpy().reshape(-1, width).astype(np.int32, copy=False)


def fixed_codes(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.int32), pa.int32()), width)


def open_table(writer: StoreWriter, table: str, version: int | None):
    from itemlens.store import lance_io

    dataset = lance_io.open_dataset(writer.location.table_uri(table), version, writer.location.options())
    if dataset is None:
        raise StoreError(f"table {table} is missing from {writer.location.uri}")
    return dataset


def token_strings(codes: np.ndarray, present: np.ndarray) -> list[str]:
    """``<a_12><b_3><c_200><d_0>``: level letters a, b, c ... (then aa, ab ...), as LC-Rec
    and GRID print them; "" for items without an ID."""
    letters = [_letter(i) for i in range(codes.shape[1])]
    return [
        "".join(f"<{letters[j]}_{c}>" for j, c in enumerate(row)) if ok else ""
        for row, ok in zip(codes.tolist(), present.tolist())
    ]


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else _letter(i // 26 - 1) + chr(ord("a") + i % 26)


def token_offsets(version: SemanticIdVersion) -> list[int]:
    """Offset added to each level's code to make one token vocabulary: level l's code c is
    token c + l * K; the suffix level comes last, after levels * K."""
    k = version.spec["codebook_size"]
    return [level * k for level in range(version.width)]
