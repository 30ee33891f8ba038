"""Exports: the store's features, semantic IDs and graphs in the files recommender code reads.

One framework, many formats. An export first decides which item each row holds (an
:class:`~itemlens.store.exports.align.Order`: the store's item index, an ids file, or the item
index of the user's interaction file), then gathers every artifact aligned to it, refuses what
a consumer would misread, and only then writes. Refused before anything is written:

- a format whose row order is its whole contract (``mmrec``, ``mmrec-adj``, ``sid-grid``)
  without an order (``ids``/``inter``, or ``store_order=True`` to keep the store's);
- ids the store does not know, and rows without a value in a format that writes dense arrays,
  unless ``fill`` is given (features: any number or nan; semantic IDs: a negative integer, never
  a code; graphs: 0, an empty row); Parquet formats write nulls for known items without a value;
- a folder that already holds an export of another format aligned to another order
  (``export.json`` records each format's order digest), or an ``i_id_mapping.csv`` that maps
  other items (an export of the same format in another order replaces the earlier one: its
  files are removed first, so that none is left in the old order);
- MMRec features that would leave a model's graph cache in the folder stale, and a model's graph
  cache beside feature files it was not built from (MMRec loads a cache whenever it exists).

Every export returns an :class:`ExportReport` (rows, present and filled per artifact, the order
followed; the command line prints it) and records it in ``export.json``, keyed by format.

Formats: ``mmrec``, ``npz``, ``parquet`` (features), ``sid-grid``, ``sid-tokens``,
``sid-parquet`` (semantic IDs), ``pyg``, ``scipy-npz``, ``mmrec-adj`` (graphs normalized by a
preset, which is in the file names). ``model=`` (``--for``) with ``mmrec`` or ``mmrec-adj`` adds
the graph files an MMRec model caches, computed from the exported features as the model does
(:mod:`itemlens.store.exports.models`). docs/exports.md is the reference. Other formats register
with :func:`register_exporter`; a writer receives the aligned artifacts (:class:`Aligned`) and
never reads the store: features come as :class:`ExportedFeature`, read from Lance chunk by chunk
(``CHUNK_ROWS``), so that an export of features needs about one chunk of memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itemlens.errors import ConfigError
from itemlens.store.exports import align as exports_align
from itemlens.store.exports.align import MAPPING_FILE, MAPPING_HEADER, Order
from itemlens.store.vectors import driver_peak_mb, require_pooled

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.client import Lens


MANIFEST = "export.json"


MMREC_CACHES = ("mm_adj_*.pt", "image_adj_*.pt", "text_adj_*.pt")  # what MMRec's graph models torch.save


#: rows of one chunk of a feature export: the memory an export needs is about one chunk
CHUNK_ROWS = 65_536


class ExportedFeature:
    """One feature's rows of an export (row i: the stored row ``rows[i]``; -1: the fill), read
    from Lance chunk by chunk. Writers iterate :meth:`chunks`; ``np.asarray`` reads it whole
    (for writers that need every row at once)."""

    def __init__(self, lens: Lens, version, rows: np.ndarray, fill: float, dtype):
        self.lens, self.version, self.rows, self.fill = lens, version, rows, fill
        self.dtype = np.dtype(dtype)
        self.shape = (len(rows), int(version.dim or 0))

    def chunks(self, size: int | None = None):
        size = size or CHUNK_ROWS
        for start in range(0, len(self.rows), size):
            rows = self.rows[start : start + size]
            found = rows >= 0
            values = self.lens._take(self.version, rows, found)
            if not found.all():
                values[~found] = self.fill
            yield np.ascontiguousarray(values, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        parts = list(self.chunks())
        whole = np.concatenate(parts) if parts else np.zeros(self.shape, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """The header np.save writes for a C-ordered array of ``shape`` and ``dtype``."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    return buffer.getvalue()


def write_npy(path: Path, feature) -> None:
    """``feature`` (an array, or an ExportedFeature) as np.save writes it, chunk by chunk."""
    with open(path, "wb") as f:
        f.write(npy_header(feature.shape, feature.dtype))
        for chunk in _chunks(feature):
            f.write(chunk.tobytes())


def same_npy(path: Path, feature) -> bool:
    """Whether the .npy at ``path`` holds ``feature``'s values, compared chunk by chunk."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError:
            return False
        if tuple(shape) != tuple(feature.shape) or fortran or np.dtype(dtype) != np.dtype(feature.dtype):
            return False
        for chunk in _chunks(feature):
            if f.read(chunk.nbytes) != chunk.tobytes():
                return False
    return True


def _chunks(feature):
    if isinstance(feature, ExportedFeature):
        yield from feature.chunks()
    else:
        array = np.ascontiguousarray(feature)
        for start in range(0, max(len(array), 1), CHUNK_ROWS):
            if len(array):
                yield array[start : start + CHUNK_ROWS]


@dataclass
class Aligned:
    """What a writer writes: every artifact with one row per item of ``order``."""

    order: Order
    item_index: np.ndarray  # the store's stable index per row (-1: unknown to the store)
    fill: float | int | None  # what filled rows hold (None: no row was filled)
    dtype: str = "float32"
    features: dict[str, Any] = field(default_factory=dict)  # file role -> [rows, dim]: ExportedFeature (chunks)
    present: dict[str, np.ndarray] = field(default_factory=dict)  # artifact -> bool [rows]
    # feature artifact -> rows without a value because the item has no such input at all (an
    # empty cell: stage "absent" in the errors table), told apart from failures in the report
    absent: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # artifact -> its qualified version
    semantic_ids: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [rows, width]; fill: absent
    semantic_id_info: dict[str, Any] = field(default_factory=dict)  # name -> SemanticIdVersion
    graphs: dict[str, Any] = field(default_factory=dict)  # name -> scipy CSR [rows, rows]
    graph_info: dict[str, Any] = field(default_factory=dict)  # name -> GraphVersion
    graph_preset: dict[str, str] = field(default_factory=dict)  # name -> the preset it was normalized by
    model_files: dict[str, Any] = field(default_factory=dict)  # file name -> torch tensor (model=)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact -> what export.json records
    notes: list[str] = field(default_factory=list)  # what the consumer should know

    @property
    def ids(self) -> list[str]:
        return self.order.ids


Exporter = Callable[[Aligned, Path, dict[str, Any]], list[str]]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    writer: Exporter
    takes: str  # "features", "semantic_ids" or "graphs"
    needs_order: bool  # row i is the consumer's item i and nothing else says which item that is
    dense: bool  # writes arrays, where a row without a value must hold a fill (else nulls)


_FORMATS: dict[str, ExportFormat] = {}


def register_exporter(
    name: str,
    exporter: Exporter,
    *,
    takes: str = "features",
    needs_order: bool = False,
    dense: bool = True,
    replace: bool = False,
) -> None:
    """Add a format. ``takes``: what :func:`export` aligns for it, ``"features"`` (pooled
    vectors), ``"semantic_ids"`` (codes) or ``"graphs"`` (normalized sparse matrices);
    ``needs_order``: refuse it without an order the user gives; ``dense``: rows without a
    value need an explicit ``fill`` (else the writer gets them as absent and writes nulls)."""
    if name in _FORMATS and not replace:
        raise ConfigError(f"exporter {name!r} is already registered; pass replace=True to replace it")
    if takes not in ("features", "semantic_ids", "graphs"):
        raise ConfigError("takes must be 'features', 'semantic_ids' or 'graphs'")
    _FORMATS[name] = ExportFormat(name, exporter, takes, needs_order, dense)


def export_formats() -> list[str]:
    return sorted(_FORMATS)


@dataclass
class ExportReport:
    """What an export wrote and how its rows were aligned (also in export.json)."""

    format: str
    out: str
    snapshot: int
    rows: int
    order: str  # what row i is
    files: list[str]
    present: dict[str, int]  # artifact -> rows with a value
    filled: dict[str, int]  # artifact -> rows holding the fill (or null)
    fill: float | int | None
    absent: dict[str, int] = field(default_factory=dict)  # feature -> filled rows of items without such input
    versions: dict[str, str] = field(default_factory=dict)  # artifact -> its qualified version
    notes: list[str] = field(default_factory=list)
    ran_on: str = "this process, chunk by chunk"
    peak_mb: float = 0.0  # this process's peak resident memory when the export ended

    def summary(self) -> str:
        fill = "" if self.fill is None else f" (fill {self.fill})"
        lines = [
            f"wrote {', '.join(self.files)} to {self.out} (snapshot {self.snapshot})",
            f"{self.rows:,} rows in the order of {self.order}; ran in {self.ran_on}, peak {self.peak_mb:,.0f} MiB",
        ]
        for name in self.present:
            version = self.versions.get(name)
            shown = name if version in (None, name) or version.split("@")[0] == name else f"{name} = {version}"
            absent = self.absent.get(name, 0)
            lines.append(
                f"{shown}: {self.present[name]:,} present, {self.filled[name]:,} filled"
                + (fill if self.filled[name] else "")
                + (f", {absent:,} of them absent inputs (no such input for the item)" if absent else "")
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def export(
    lens: Lens,
    fmt: str,
    out: str | os.PathLike,
    *,
    features: Sequence[str] | Mapping[str, str] | None = None,
    semantic_ids: Sequence[str] | None = None,
    graphs: Sequence[str] | None = None,
    ids: Sequence[str] | str | os.PathLike | None = None,
    ids_column: str | None = None,
    inter: str | os.PathLike | None = None,
    item_column: str | None = None,
    store_order: bool = False,
    fill: float | int | None = None,
    dtype: str = "float32",
    model: str | None = None,
    model_params: Mapping[str, Any] | None = None,
    preset: str | None = None,
    dedup: str | None = None,
    **options: Any,
) -> ExportReport:
    """Write artifacts of the reader's snapshot in format ``fmt`` under ``out``.

    ``features``: names, or file role -> feature (``{"image": "clip_vitl", "text": "minilm"}``:
    ``image_feat.npy`` holds clip_vitl); default every pooled vector feature, for ``mmrec`` the
    features named image and text. ``semantic_ids``/``graphs``: names (default all) for those
    formats. The order: ``ids`` (a sequence, or a file: a plain list, a CSV/TSV with header and
    ``ids_column``, MMRec's i_id_mapping.csv), ``inter`` (an MMRec or RecBole ``.inter``, or a
    table with ``item_column``), or ``store_order``. ``fill``: what rows without a value hold
    (default: refuse them). ``dtype``: float32 (default) or float16 for features. ``model``:
    an MMRec model whose cached graph files to write from the features, ``model_params`` its
    graph parameters (MMRec's config keys; a list of values writes one file per value).
    ``preset``: a graph's normalization (default its definition's). ``dedup`` (``sid-grid``):
    ``"grid"`` (default: GRID's numbering) or ``"store"`` (the store's suffix). Other
    ``options`` go to the format's writer."""
    spec = _FORMATS.get(fmt)
    if spec is None:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(export_formats())}")
    takes = spec.takes
    if model is not None:
        if fmt not in ("mmrec", "mmrec-adj"):
            raise ConfigError(
                f"model (--for) writes the graph files an MMRec model caches: use it with format mmrec "
                f"(features and graphs) or mmrec-adj (graphs only), not {fmt}"
            )
        if preset is not None or graphs is not None:
            raise ConfigError(
                f"model (--for) builds the graph as {model} does, from the exported features: "
                "preset and graphs do not apply"
            )
        takes = "features"
    elif model_params:
        raise ConfigError(
            "model_params (--model-param) are the graph parameters of a model: name it with model (--for)"
        )
    if dedup is not None and fmt != "sid-grid":
        raise ConfigError("dedup applies to sid-grid")
    if preset is not None and takes != "graphs":
        raise ConfigError(f"preset normalizes graphs; {fmt} exports {takes.replace('_', ' ')}")
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, not {dtype!r}")
    if store_order and (ids is not None or inter is not None):
        raise ConfigError("store_order (--store-order) keeps the store's item order: do not give ids or inter too")

    order = exports_align.resolve(
        lens.item_order() if ids is None and inter is None else None,
        ids=ids,
        ids_column=ids_column,
        inter=inter,
        item_column=item_column,
    )
    if order.source == "store" and (spec.needs_order or model is not None) and not store_order:
        raise ConfigError(
            f"{fmt} rows are the consumer's item index (row i is item i of your data) and nothing in the files says "
            "which item a row is: give the order of your data with --inter DATA/<name>.inter (an MMRec .inter with its "
            "i_id_mapping.csv beside it, a RecBole .inter, or a table with --item-column) or --ids FILE (a list, "
            "or MMRec's i_id_mapping.csv); or --store-order to keep the store's item index and build your dataset "
            "from the i_id_mapping.csv it writes"
        )
    items = lens.items()
    known = dict(zip(items.column("item_id").to_pylist(), items.column("item_index").to_pylist()))
    item_index = np.array([known.get(i, -1) for i in order.ids], np.int64)
    unknown = item_index < 0
    if unknown.any() and fill is None:
        _refuse(
            f"{int(unknown.sum()):,} of {len(order.ids):,} ids of {order.description} are not in the store "
            f"(snapshot {lens.snapshot})",
            [i for i, u in zip(order.ids, unknown) if u],
            order,
            "pass fill (--fill VALUE) to write them as filled rows",
        )
    aligned = Aligned(order=order, item_index=item_index, fill=fill, dtype=dtype)
    if takes == "features":
        _gather_features(
            lens, aligned, features, spec, mmrec_roles=fmt == "mmrec" or model is not None, strict=model is not None
        )
    elif takes == "semantic_ids":
        _gather_semantic_ids(lens, aligned, semantic_ids, spec, dedup)
    else:
        _gather_graphs(lens, aligned, graphs, spec, preset)
    notes: list[str] = []
    model_doc = None
    if model is not None:
        model_doc = _model_files(aligned, model, model_params, notes)
    if aligned.fill is not None and all(p.all() for p in aligned.present.values()):
        aligned.fill = None  # nothing was filled

    target = Path(out)
    previous = _previous_exports(target)
    _check_folder(target, fmt, order, previous)
    replaced = _remove_earlier_order(target, fmt, order, previous)
    target.mkdir(parents=True, exist_ok=True)
    files = spec.writer(aligned, target, {**options, "model": model, "dedup": dedup})
    notes += aligned.notes
    if replaced:
        notes.append(f"removed the earlier {fmt} export's files of another order: {', '.join(replaced)}")
    report = ExportReport(
        format=fmt,
        out=os.fspath(target),
        snapshot=lens.snapshot,
        rows=len(order.ids),
        order=order.description,
        files=files + [MANIFEST],
        present={n: int(p.sum()) for n, p in aligned.present.items()},
        filled={n: int((~p).sum()) for n, p in aligned.present.items()},
        absent=dict(aligned.absent),
        fill=aligned.fill,
        versions=dict(aligned.versions),
        notes=notes,
        peak_mb=driver_peak_mb(),
    )
    entry = {
        "format": fmt,
        "store": lens.uri,
        "snapshot": lens.snapshot,
        "rows": len(order.ids),
        "order": {"source": order.source, "description": order.description, "digest": order.digest},
        # strict JSON has no NaN or Infinity: those are written as the strings Python reads back
        "fill": None if aligned.fill is None else (aligned.fill if np.isfinite(aligned.fill) else str(aligned.fill)),
        "artifacts": {
            n: {
                "version": aligned.versions.get(n),
                "present": report.present[n],
                "filled": report.filled[n],
                **({"absent": aligned.absent[n]} if n in aligned.absent else {}),
                **aligned.details.get(n, {}),
            }
            for n in aligned.present
        },
        "files": files,
    }
    if takes == "features":
        entry["dtype"] = dtype
    if model_doc is not None:
        entry["model"] = model_doc
    if notes:
        entry["notes"] = notes
    earlier = previous.get(fmt, {})
    if earlier.get("order", {}).get("digest") == order.digest:
        # an earlier export of this format and order (another preset, role or model): its files stay
        entry["files"] = files + [f for f in earlier.get("files", []) if f not in files and (target / f).is_file()]
        entry["artifacts"] = {**earlier.get("artifacts", {}), **entry["artifacts"]}
    previous[fmt] = entry
    _write_manifest(target, previous)
    return report


def _absent_among(lens: Lens, name: str, ids: list[str], missing: np.ndarray) -> int:
    """How many of the rows without a value are items that have no such input at all."""
    if not missing.any():
        return 0
    import pyarrow as pa
    import pyarrow.compute as pc

    no_input = lens.errors(name, absent=True).column("item_id")
    wanted = pa.array([ids[i] for i in np.flatnonzero(missing)], pa.string())
    return int(pc.sum(pc.is_in(wanted, value_set=no_input)).as_py() or 0)


def _refuse(what: str, missing: list[str], order: Order, how: str) -> None:
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5:,} more" if len(missing) > 5 else "")
    hint = ""
    if order.plain_list and missing and missing[0] == order.ids[0]:
        hint = f" (the first line {missing[0]!r} may be a header: --ids-column {missing[0]} reads it as one)"
    raise ConfigError(f"{what}: {shown}{hint}; {how}")


def _roles(lens: Lens, features: Sequence[str] | Mapping[str, str] | None, mmrec_roles: bool) -> dict[str, str]:
    """File role -> feature name."""
    from itemlens.store.exports.models import ROLES

    if isinstance(features, Mapping):
        roles = dict(features)
    elif features is not None:
        if isinstance(features, str):
            raise TypeError("features must be a sequence of names or a mapping of role -> name, not a string")
        roles = {}
        for item in features:
            role, _, name = item.partition("=") if "=" in item else (item.split("@")[0], "", item)
            if role in roles:  # two versions of one name: the later would overwrite the earlier's column
                raise ConfigError(
                    f"{roles[role]} and {name} would both be exported as {role!r}: give each a name of its "
                    f"own, e.g. --feature {role}_a={roles[role]} {role}_b={name}"
                )
            roles[role] = name
    elif mmrec_roles:
        roles = {r: r for r in ROLES if lens.doc.feature_version(r) is not None}
        if not roles:
            names = ", ".join(sorted(lens.doc.features)) or "none"
            raise ConfigError(
                f"MMRec reads image_feat.npy and text_feat.npy; snapshot {lens.snapshot} has no feature "
                f"named image or text (it has {names}): name them, e.g. --feature image=NAME text=NAME"
            )
    else:
        roles = {}
        for name in sorted(lens.doc.features):
            version = lens.doc.feature_version(name)
            if version.kind == "vector" and version.pooling == "mean":
                roles[name] = name
    if mmrec_roles:
        other = sorted(set(roles) - set(ROLES))
        if other:
            raise ConfigError(
                f"MMRec reads only image_feat.npy and text_feat.npy (vision_feature_file, "
                f"text_feature_file); a feature exported as {', '.join(other)} would be ignored: give "
                f"each its role, e.g. --feature text={roles[other[0]]}"
            )
    if not roles:
        raise ConfigError(f"snapshot {lens.snapshot} of {lens.uri} has no vector features to export")
    # the npz archive's own members, and <name>_mask beside each feature's matrix
    taken = {"item_id", "item_index"} | {f"{role}_mask" for role in roles}
    clash = sorted(set(roles) & taken)
    if clash:
        raise ConfigError(
            f"a feature exported as {clash[0]!r} would overwrite the export's own {clash[0]!r} column: "
            f"give it another name, e.g. --feature {clash[0]}_feature={roles[clash[0]]}"
        )
    return roles


def _gather_features(
    lens: Lens, aligned: Aligned, features, spec: ExportFormat, *, mmrec_roles: bool, strict: bool
) -> None:
    dtype = np.float16 if aligned.dtype == "float16" else np.float32
    for role, name in _roles(lens, features, mmrec_roles).items():
        version = lens._version(name)
        require_pooled(version, "exports take one vector per item")
        filler = 0.0 if aligned.fill is None else aligned.fill
        rows = lens._rows(version, aligned.ids)  # the id index only: values are read chunk by chunk
        found = rows >= 0
        values = ExportedFeature(lens, version, rows, filler, dtype)
        missing = ~found
        if missing.any() and (strict or (spec.dense and aligned.fill is None)):
            why = (
                (
                    "the model takes the cosine of every row: a filled row has none; leave these items out of the "
                    "interaction data or give them vectors"
                )
                if strict
                else f"pass fill (--fill VALUE) to write them as filled rows (flagged in {role}_mask.npy)"
            )
            _refuse(
                f"{version.qualified} has no vector for {int(missing.sum()):,} of {len(found):,} rows",
                [i for i, m in zip(aligned.ids, missing) if m],
                aligned.order,
                why,
            )
        aligned.features[role] = values
        aligned.present[role] = found
        aligned.absent[role] = _absent_among(lens, name, aligned.ids, missing)
        aligned.versions[role] = version.qualified
        aligned.details[role] = {"dim": int(values.shape[1]), "stored_dtype": version.dtype}


def _gather_semantic_ids(lens: Lens, aligned: Aligned, semantic_ids, spec: ExportFormat, dedup: str | None) -> None:
    if aligned.fill is not None:
        if not (float(aligned.fill).is_integer() and aligned.fill < 0):
            raise ConfigError(
                f"fill {aligned.fill} for semantic IDs: use a negative integer, which no code is (-1 is "
                "GRID's padding token: the item then reads as padding)"
            )
        aligned.fill = int(aligned.fill)
    names = list(semantic_ids) if semantic_ids is not None else sorted(lens.doc.semantic_ids)
    if not names:
        raise ConfigError(f"snapshot {lens.snapshot} of {lens.uri} has no semantic IDs to export as {spec.name}")
    if dedup not in (None, "grid", "store"):
        raise ConfigError(f"dedup must be 'grid' (GRID's numbering) or 'store' (the store's suffix), not {dedup!r}")
    for name in names:
        info = lens.semantic_id_info(name)
        _one_version_per_name(aligned.semantic_ids, aligned.versions, info, "semantic IDs")
        codes = lens.semantic_ids(name, aligned.ids, fill=-1)
        present = (codes >= 0).all(axis=1) if codes.size else np.zeros(len(aligned.ids), bool)
        if not present.all() and spec.dense and aligned.fill is None:
            _refuse(
                f"{info.qualified} has no semantic ID for {int((~present).sum()):,} of {len(present):,} rows",
                [i for i, p in zip(aligned.ids, present) if not p],
                aligned.order,
                "pass fill (--fill) with a negative integer to write them as filled columns (flagged in the "
                "mask); -1 is GRID's padding token",
            )
        if aligned.fill is not None:
            codes[~present] = int(aligned.fill)
        levels = int(info.spec["levels"])
        if spec.name == "sid-grid" and dedup == "store" and info.width == levels:
            raise ConfigError(
                f"{info.qualified} makes IDs unique with {info.spec.get('uniqueness')}: it has no suffix "
                "to export; use GRID's numbering (dedup grid)"
            )
        aligned.semantic_ids[info.name] = codes
        aligned.present[info.name] = present
        aligned.semantic_id_info[info.name] = info
        aligned.versions[info.name] = info.qualified
        aligned.details[info.name] = {
            "levels": levels,
            "codebook_size": int(info.spec["codebook_size"]),
            "uniqueness": info.spec.get("uniqueness"),
        }


def _one_version_per_name(gathered: dict, versions: dict, info, what: str) -> None:
    """An export's files are named by the artifact's name: two versions of one name would write
    the same files, the last one winning."""
    if info.name in gathered:
        raise ConfigError(
            f"{what} {versions[info.name]} and {info.qualified} are two versions of {info.name!r}: their files "
            "would have the same names; export them one at a time (each to its own folder)"
        )


def _gather_graphs(lens: Lens, aligned: Aligned, graphs, spec: ExportFormat, preset: str | None) -> None:
    if aligned.fill is not None and aligned.fill != 0:
        raise ConfigError(f"fill {aligned.fill} for a graph: the only fill of a graph row is none (0: no edges)")
    names = list(graphs) if graphs is not None else sorted(lens.doc.graphs)
    if not names:
        raise ConfigError(f"snapshot {lens.snapshot} of {lens.uri} has no graphs to export as {spec.name}")
    for name in names:
        info = lens.graph_info(name)
        _one_version_per_name(aligned.graphs, aligned.versions, info, "graph")
        matrix, store_ids = lens.graph(name, preset)
        position = {item: p for p, item in enumerate(store_ids)}
        rows = np.array([position.get(i, -1) for i in aligned.ids], np.int64)
        known = rows >= 0
        selector = _selector(rows[known], matrix.shape[0])
        picked = (selector @ matrix @ selector.T).tocsr()
        if not known.all():
            picked = _expand(picked, np.flatnonzero(known), len(rows))
        present = np.diff(picked.indptr) > 0
        if not present.all() and aligned.fill is None:
            _refuse(
                f"graph {info.qualified} has no neighbours for {int((~present).sum()):,} of {len(present):,} rows",
                [i for i, p in zip(aligned.ids, present) if not p],
                aligned.order,
                "pass fill 0 (--fill 0) to write them as rows without edges (flagged in export.json)",
            )
        chosen = preset or info.spec.get("preset")
        aligned.graphs[info.name] = picked
        aligned.present[info.name] = present
        aligned.graph_info[info.name] = info
        aligned.graph_preset[info.name] = chosen
        aligned.versions[info.name] = info.qualified
        aligned.details[info.name] = {"preset": chosen, "k": info.spec["k"], "edges": int(picked.nnz)}


def _model_files(aligned: Aligned, model: str, params: Mapping[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """Build the graph files ``model`` caches from the features as written (float16 rounding included)."""
    from itemlens.store.exports import models as exports_models

    spec = exports_models.lookup(model)
    # the model's kNN is over every row at once: these are read whole
    vectors = {role: np.asarray(values).astype(np.float32) for role, values in aligned.features.items()}
    device = "cpu"
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        from itemlens.errors import MissingDependencyError

        raise MissingDependencyError(
            "graph files for a model are torch tensors: pip install 'itemlens[semantic]'"
        ) from None
    files, grid = exports_models.build(model, vectors, params, device=device)
    aligned.model_files = files
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in grid)
    notes.append(f"{', '.join(files)}: {spec.name}'s graph cache as its code builds it ({shown or 'no parameters'})")
    if spec.note:
        notes.append(spec.note)
    return {
        "model": spec.name,
        "parameters": grid,
        "source": spec.source,
        "files": {name: _tensor_layout(t) for name, t in files.items()},
    }


def _tensor_layout(tensor) -> str:
    kind = "sparse COO" if tensor.is_sparse else "dense"
    return f"{kind} {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}"


def _previous_exports(target: Path) -> dict[str, Any]:
    path = target / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return {}
    return dict(doc.get("exports", {})) if isinstance(doc, dict) else {}


def _check_folder(target: Path, fmt: str, order: Order, previous: dict[str, Any]) -> None:
    """Refuse to write beside an export of another order, or over a mapping of other items."""
    for other, entry in previous.items():
        digest = entry.get("order", {}).get("digest")
        if other != fmt and digest not in (None, order.digest):
            raise ConfigError(
                f"{target} holds a {other} export aligned to another order "
                f"({entry['order'].get('description')}); this one follows {order.description}. Export "
                "into another folder (files of two orders in one dataset folder would not line up)"
            )
    existing = _existing_mapping(target)
    if existing is None or existing.ids[: len(order.ids)] == order.ids:
        return  # none, or the same rows (MMRec's own may map more items after them)
    if not any(e.get("order", {}).get("digest") == existing.digest for e in previous.values()):
        raise ConfigError(
            f"{target / MAPPING_FILE} exists and maps other items than this export's rows "
            f"({order.description}); export into another folder, or remove it if it is stale"
        )


def _write_manifest(target: Path, exports: dict[str, Any]) -> None:
    (target / MANIFEST).write_text(json.dumps({"exports": exports}, indent=2))


def _remove_earlier_order(target: Path, fmt: str, order: Order, previous: dict[str, Any]) -> list[str]:
    """An export of ``fmt`` in another order replaces the earlier one of that format: the files it
    listed that this one may not rewrite (another role, another model's graphs) would keep the
    old row order beside the new. They are removed (and its entry, in export.json at once)
    before anything is written; a file another export lists stays. Returns the removed files."""
    earlier = previous.get(fmt)
    if earlier is None or earlier.get("order", {}).get("digest") in (None, order.digest):
        return []
    listed_by_others = {f for other, entry in previous.items() if other != fmt for f in entry.get("files", [])}
    root, removed = target.resolve(), []
    for name in earlier.get("files", []):
        path = (target / name).resolve()
        if name in listed_by_others or name == MANIFEST or not path.is_relative_to(root) or not path.is_file():
            continue
        path.unlink()
        removed.append(name)
    del previous[fmt]
    _write_manifest(target, previous)
    return removed


def _existing_mapping(target: Path) -> Order | None:
    """The i_id_mapping.csv in ``target`` (an unreadable one counts as a mapping of other items)."""
    path = target / MAPPING_FILE
    if not path.is_file():
        return None
    try:
        return exports_align.read_ids(path)
    except ConfigError:
        return Order([], "unreadable", f"the unreadable {path}")


def write_mapping(aligned: Aligned, out: Path) -> str:
    """MMRec's i_id_mapping.csv: asin<TAB>itemID, row i = itemID i. One that already maps these
    rows (MMRec's own, which may go on past them) is left as it is."""
    existing = _existing_mapping(out)
    if existing is None or existing.ids[: len(aligned.ids)] != aligned.ids:
        with open(out / MAPPING_FILE, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(MAPPING_HEADER) + "\n")
            for row, item in enumerate(aligned.ids):
                f.write(f"{item}\t{row}\n")
    return MAPPING_FILE


def write_masks(aligned: Aligned, out: Path, names) -> list[str]:
    """<name>_mask.npy (True: a real value) for the artifacts that have filled rows; a mask left
    by an earlier export of an artifact written now without filled rows is removed."""
    files = []
    for name in names:
        if not aligned.present[name].all():
            np.save(out / f"{name}_mask.npy", aligned.present[name])
            files.append(f"{name}_mask.npy")
        else:
            (out / f"{name}_mask.npy").unlink(missing_ok=True)
    return files


def save_model_files(aligned: Aligned, out: Path) -> list[str]:
    import torch

    for name, tensor in aligned.model_files.items():
        torch.save(tensor, out / name)
    return list(aligned.model_files)


def check_mmrec_folder(aligned: Aligned, out: Path, writes_features: bool) -> None:
    """MMRec's models load a cached graph if its file exists and never compare it with the
    features: refuse new features beside caches this export does not rewrite, and caches
    beside feature files they were not built from."""
    differs = []
    for role, values in aligned.features.items():
        existing = out / f"{role}_feat.npy"
        if existing.is_file() and not same_npy(existing, values):
            differs.append(existing.name)
    if not differs:
        return
    if not writes_features:
        raise ConfigError(
            f"{out} holds {', '.join(differs)} with other values than the features these graph files are "
            "built from: the model would pair them. Export the features too (--format mmrec), or into "
            "another folder"
        )
    stale = sorted({p.name for pattern in MMREC_CACHES for p in out.glob(pattern)} - set(aligned.model_files))
    if stale:
        raise ConfigError(
            f"{out} holds MMRec graph caches ({', '.join(stale)}) built from the {', '.join(differs)} "
            "this export replaces: the model would load them instead of building new ones. Export with "
            "--for MODEL to rewrite them, or delete them"
        )


def _selector(positions: np.ndarray, size: int):
    """A [len(positions), size] 0/1 matrix picking rows ``positions``."""
    import scipy.sparse as sp

    return sp.csr_matrix(
        (np.ones(len(positions)), (np.arange(len(positions)), positions)), shape=(len(positions), size)
    )


def _expand(matrix, rows: np.ndarray, size: int):
    """``matrix`` (over ``rows`` of the export) placed in a [size, size] matrix."""
    placed = _selector(rows, size).T
    return (placed @ matrix @ placed.T).tocsr()
