"""Which item each row of an export holds: the order a consumer's own files define.

An export is aligned before anything is written: an :class:`Order` lists the item id of every
row, says where that order came from, and has a digest that ``export.json`` records (a folder
never mixes files of two orders). The order is one of:

- the store's stable item index (``store_order``; the only choice when nothing is given);
- ``ids``: a sequence of ids, or a file: a plain list (one id per line), a CSV/TSV with a header
  whose id column is named by ``ids_column`` (or is ``item_id``), or MMRec's
  ``i_id_mapping.csv`` (``asin<TAB>itemID``: row i = the item whose itemID is i);
- ``inter``: an interaction file, and the item index it uses:

  * an MMRec ``.inter`` (TSV with ``userID itemID ... x_label``): itemID is an integer row
    index and MMRec allocates max(itemID) + 1 rows. The ids behind the itemIDs are in the
    ``i_id_mapping.csv`` that MMRec's preprocessing wrote beside it (or given with ``ids``);
    without one the mapping cannot be known, and the export is refused.
  * a RecBole ``.inter`` (``name:type`` headers, item field ``item_id:token``): the item tokens
    in order of first appearance, which is RecBole's own remapping (``pandas.factorize``; its
    internal id is row + 1, 0 being ``[PAD]``) when no filtering or ``.item`` file changes it.
  * any other table (CSV/TSV or Parquet) with an item column (``item_column``, or ``item_id``):
    its ids in order of first appearance.

Nothing here reads the store: :func:`resolve` only needs the store's item order when no order
is given. Checking the ids against the store is the export's (it knows what each format fills).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from itemlens.errors import ConfigError

MMREC_ITEM = "itemID"  # MMRec's item column (.inter and i_id_mapping.csv)
RECBOLE_ITEM = "item_id"  # RecBole's default ITEM_ID_FIELD
MAPPING_FILE = "i_id_mapping.csv"  # what MMRec's preprocessing writes beside the .inter
MAPPING_HEADER = ("asin", MMREC_ITEM)  # its columns (0rating2inter.ipynb)


@dataclass(frozen=True)
class Order:
    """The item id of every row, and what that order is."""

    ids: list[str]
    source: str  # "store", "ids", "mmrec-mapping", "mmrec-inter", "recbole-inter", "table"
    description: str  # for people: what row i is
    plain_list: bool = False  # read from a one-column file without a header (its first line may be one)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:16]


def _checked(ids: list[str], source: str, description: str, *, plain_list: bool = False) -> Order:
    """An order, refused when an id repeats (two rows would hold one item)."""
    counts = Counter(ids)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(f"{i!r} ({counts[i]}x)" for i in repeated[:5])
        raise ConfigError(
            f"{description}: {len(repeated)} id(s) appear more than once ({shown}"
            f"{' ...' if len(repeated) > 5 else ''}); each row of an export is one item"
        )
    return Order(ids, source, description, plain_list)


def resolve(
    store_ids: Sequence[str] | None,
    *,
    ids: Sequence[str] | str | os.PathLike | None = None,
    ids_column: str | None = None,
    inter: str | os.PathLike | None = None,
    item_column: str | None = None,
) -> Order:
    """The order an export follows (see the module's docstring); ``store_ids``: the store's
    ids in item-index order, used when neither ``ids`` nor ``inter`` is given."""
    if ids_column is not None and not isinstance(ids, (str, os.PathLike)):
        raise ConfigError("ids_column (--ids-column) names a column of an ids file: give the file with ids (--ids)")
    if item_column is not None and inter is None:
        raise ConfigError(
            "item_column (--item-column) names a column of an interaction file: give it with inter (--inter)"
        )
    given = None
    if isinstance(ids, (str, os.PathLike)):
        given = read_ids(ids, ids_column)
    elif ids is not None:
        if isinstance(ids, bytes):
            raise TypeError("ids must be a sequence of item ids or a file path")
        given = _checked([i if isinstance(i, str) else str(i) for i in ids], "ids", "the ids given")
    if inter is not None:
        return read_inter(inter, item_column, given)
    if given is not None:
        return given
    if store_ids is None:
        raise ConfigError("no order given")
    return Order(list(store_ids), "store", "the store's item index (row i = item_index i)")


# -- ids files -----------------------------------------------------------------------------------


def _lines(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no such file: {os.fspath(path)}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"{os.fspath(path)} is empty")
    return lines


def _delimiter(header: str) -> str | None:
    return "\t" if "\t" in header else ("," if "," in header else None)


def _no_blank(values: list[str], path, first_line: int) -> list[str]:
    """Values of one column, stripped; an empty one is refused (it would shift every row after it)."""
    out = [v.strip() for v in values]
    blank = [n for n, v in enumerate(out) if not v]
    if blank:
        raise ConfigError(
            f"{os.fspath(path)}: line {blank[0] + first_line} has no id (every line is one row; "
            "an empty one would shift the rows after it)"
        )
    return out


def read_ids(path: str | os.PathLike, column: str | None = None) -> Order:
    """An ids file: a plain list, a CSV/TSV with a header, or MMRec's i_id_mapping.csv."""
    name = os.fspath(path)
    lines = _lines(path)
    delimiter = _delimiter(lines[0])
    if delimiter is None:  # one value per line
        if column is None:
            return _checked(_no_blank(lines, path, 1), "ids", f"the lines of {name}", plain_list=True)
        if lines[0].strip() != column:
            raise ConfigError(
                f"{name} has one column and its first line is {lines[0].strip()!r}, not the header "
                f"{column!r} that --ids-column names"
            )
        return _checked(_no_blank(lines[1:], path, 2), "ids", f"the {column!r} column of {name}")
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if MMREC_ITEM in header and column != MMREC_ITEM:
        return _mapping(name, header, body, column)
    if column is None:
        if RECBOLE_ITEM not in header:
            raise ConfigError(
                f"{name} has columns {', '.join(map(repr, header))} (its first line is read as the "
                "header): name the id column with --ids-column (ids_column=)"
            )
        column = RECBOLE_ITEM
    if column not in header:
        raise ConfigError(f"{name} has no column {column!r}; its header is {', '.join(map(repr, header))}")
    at = header.index(column)
    return _checked(
        _no_blank([r[at] if at < len(r) else "" for r in body], path, 2), "ids", f"the {column!r} column of {name}"
    )


def _mapping(name: str, header: list[str], body: list[list[str]], column: str | None) -> Order:
    """MMRec's i_id_mapping.csv (asin, itemID): rows ordered by itemID, which must be 0 .. n-1."""
    if column is None:
        others = [h for h in header if h != MMREC_ITEM]
        for known in ("asin", RECBOLE_ITEM):
            if known in others:
                column = known
                break
        else:
            if len(others) != 1:
                raise ConfigError(
                    f"{name} maps itemID to ids, but which of {', '.join(map(repr, others))} holds "
                    "the ids? Name it with --ids-column"
                )
            column = others[0]
    if column not in header:
        raise ConfigError(f"{name} has no column {column!r}; its header is {', '.join(map(repr, header))}")
    at_id, at_index = header.index(column), header.index(MMREC_ITEM)
    positions: list[int] = []
    for line, row in enumerate(body, start=2):
        value = row[at_index].strip() if at_index < len(row) else ""
        if not value.isdigit():
            raise ConfigError(f"{name}, line {line}: itemID {value!r} is not a row index (a non-negative integer)")
        positions.append(int(value))
    ids = _no_blank([r[at_id] if at_id < len(r) else "" for r in body], name, 2)
    if sorted(positions) != list(range(len(positions))):
        gaps = sorted(set(range(len(positions))) - set(positions))[:5]
        raise ConfigError(
            f"{name}: itemIDs must be 0 .. {len(positions) - 1}, each once (MMRec's rows); missing e.g. {gaps}"
            if gaps
            else f"{name}: an itemID appears twice"
        )
    ordered = [""] * len(ids)
    for position, item in zip(positions, ids):
        ordered[position] = item
    return _checked(
        ordered,
        "mmrec-mapping",
        f"itemID of {name} (MMRec's i_id_mapping.csv: row i = the item whose itemID is i, its {column!r})",
    )


# -- interaction files -----------------------------------------------------------------------


def read_inter(path: str | os.PathLike, item_column: str | None = None, mapping: Order | None = None) -> Order:
    """The item order of an interaction file (see the module's docstring)."""
    name = os.fspath(path)
    if name.endswith((".parquet", ".pq")):
        if mapping is not None:
            raise ConfigError(
                "--ids with --inter maps an MMRec .inter's itemIDs to ids; a Parquet table holds its ids itself"
            )
        return _table_parquet(name, item_column)
    lines = _lines(path)
    delimiter = _delimiter(lines[0]) or "\t"
    header = [h.strip() for h in lines[0].split(delimiter)]
    rows = csv.reader(lines[1:], delimiter=delimiter)
    if all(":" in h for h in header):  # RecBole's atomic file
        names = [h.split(":", 1)[0] for h in header]
        field = item_column or RECBOLE_ITEM
        if field not in names:
            raise ConfigError(
                f"{name} (a RecBole atomic file) has no field {field!r}; its fields are "
                f"{', '.join(header)}; name the item field with --item-column"
            )
        kind = header[names.index(field)].split(":", 1)[1]
        if kind != "token":
            raise ConfigError(f"{name}: the item field {header[names.index(field)]!r} is not a token field")
        if mapping is not None:
            raise ConfigError(
                "--ids with --inter maps an MMRec .inter's itemIDs to ids; a RecBole .inter holds its "
                "item tokens itself"
            )
        ids = _first_appearance(rows, names.index(field), name)
        return _checked(
            ids,
            "recbole-inter",
            f"the item tokens of {name} in order of first appearance (RecBole's "
            "internal item id = row + 1, 0 being [PAD], unless its filtering or an .item file changes "
            "the remapping)",
        )
    if MMREC_ITEM in header and item_column in (None, MMREC_ITEM):
        return _mmrec_inter(name, header, rows, mapping)
    if mapping is not None:
        raise ConfigError(f"--ids with --inter maps an MMRec .inter's itemIDs to ids; {name} has no itemID column")
    field = item_column or RECBOLE_ITEM
    if field not in header:
        raise ConfigError(
            f"{name} has columns {', '.join(map(repr, header))}: name its item column with --item-column (item_column=)"
        )
    ids = _first_appearance(rows, header.index(field), name)
    return _checked(ids, "table", f"the {field!r} column of {name} in order of first appearance")


def _first_appearance(rows, at: int, name: str) -> list[str]:
    seen: dict[str, None] = {}
    for line, row in enumerate(rows, start=2):
        value = row[at].strip() if at < len(row) else ""
        if not value:
            raise ConfigError(f"{name}, line {line}: no item id")
        seen.setdefault(value, None)
    return list(seen)


def _table_parquet(name: str, item_column: str | None) -> Order:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(name).names
    except FileNotFoundError:
        raise ConfigError(f"no such file: {name}") from None
    field = item_column or RECBOLE_ITEM
    if field not in columns:
        raise ConfigError(
            f"{name} has columns {', '.join(map(repr, columns))}: name its item column with "
            "--item-column (item_column=)"
        )
    column = pq.read_table(name, columns=[field]).column(0)
    if column.null_count:
        raise ConfigError(f"{name}: {column.null_count} rows have no {field!r}")
    ids = pc.unique(pc.cast(column, "string")).to_pylist()  # in order of first appearance
    return _checked(ids, "table", f"the {field!r} column of {name} in order of first appearance")


def _mmrec_inter(name: str, header: list[str], rows, mapping: Order | None) -> Order:
    """MMRec's .inter: rows 0 .. max(itemID) (as RecDataset counts items), ids from the mapping."""
    at = header.index(MMREC_ITEM)
    largest = -1
    for line, row in enumerate(rows, start=2):
        value = row[at].strip() if at < len(row) else ""
        if not value.isdigit():
            raise ConfigError(
                f"{name}, line {line}: itemID {value!r} is not an integer; MMRec's itemID is a row "
                "index (for a table of raw item ids, name its column with --item-column)"
            )
        largest = max(largest, int(value))
    if largest < 0:
        raise ConfigError(f"{name} has no interactions")
    rows_needed = largest + 1
    if mapping is None:
        beside = Path(name).parent / MAPPING_FILE
        if not beside.is_file():
            raise ConfigError(
                f"{name} is an MMRec .inter: its itemIDs are row indexes (0 .. {largest}) that MMRec's preprocessing "
                f"assigned and recorded in {MAPPING_FILE} (asin<TAB>itemID); there is none beside it. Give the "
                f"mapping with --ids {MAPPING_FILE} (or a list of item ids, one per itemID in order)"
            )
        mapping = read_ids(beside)
        if mapping.source != "mmrec-mapping":
            raise ConfigError(f"{beside} is not an MMRec mapping (a header with itemID and the ids' column)")
    if len(mapping.ids) < rows_needed:
        raise ConfigError(
            f"{name} uses itemIDs up to {largest}, but {mapping.description} covers only {len(mapping.ids)} rows"
        )
    extra = len(mapping.ids) - rows_needed
    note = (
        f"; {extra} mapped item(s) after itemID {largest} left out, as MMRec allocates max(itemID) + 1 rows"
        if extra
        else ""
    )
    return Order(
        mapping.ids[:rows_needed],
        "mmrec-inter",
        f"itemID of {name} (rows 0 .. {largest}) via {mapping.description}{note}",
    )
