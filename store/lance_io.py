"""Small helpers over pylance used by the writer, the pipeline's workers and the client.

Workers write Lance fragments (data files) themselves and hand back only their metadata;
the driver commits many fragments in one Lance transaction. This is what Ray's own
``Dataset.write_lance`` does, written here because Ray 2.60's version passes an argument
(``storage_options_provider``) that pylance 14 does not accept (see README, "Design").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pyarrow as pa

# Rows per data file written by one worker call. Staging files are merged and dropped at the
# end of a job, so this trades file count against how much work a crash can lose.
MAX_ROWS_PER_FILE = 64 * 1024


def open_dataset(uri: str, version: int | None = None, storage_options: dict | None = None):
    """The Lance dataset at ``uri`` (at ``version``), or None when there is no dataset there.

    A missing *version* of an existing dataset is an error, not None.
    """
    import lance

    try:
        return lance.dataset(uri, version=version, storage_options=storage_options)
    except (ValueError, OSError) as exc:
        if "not found" in str(exc).lower():
            if version is None:
                return None
            raise  # a version that is gone (pruned): the reader says which snapshot
        # unreachable object storage, permissions, a corrupt manifest: one message, not a traceback
        from itemlens.errors import StoreError

        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot open {uri}: {detail}") from exc


def write_fragments(table: pa.Table, uri: str, storage_options: dict | None = None) -> list[str]:
    """Write ``table`` as new data files under ``uri``; return their fragment metadata as JSON.

    Nothing is visible until :func:`commit_fragments` commits them.
    """
    from lance.fragment import write_fragments as _write

    if table.num_rows == 0:
        return []
    fragments = _write(
        table, uri, schema=table.schema, max_rows_per_file=MAX_ROWS_PER_FILE, storage_options=storage_options
    )
    return [json.dumps(f.to_json()) for f in fragments]


def commit_fragments(uri: str, fragments: Sequence[str], schema: pa.Schema, storage_options: dict | None = None):
    """Commit fragments written by :func:`write_fragments` in one transaction (creating the
    dataset with ``schema`` if it does not exist yet). Returns the dataset."""
    import lance
    from lance.fragment import FragmentMetadata

    metas = [FragmentMetadata.from_json(f) for f in fragments]
    existing = open_dataset(uri, storage_options=storage_options)
    if existing is None:
        op = lance.LanceOperation.Overwrite(schema, metas)
        return lance.LanceDataset.commit(uri, op, storage_options=storage_options)
    if not metas:
        return existing
    op = lance.LanceOperation.Append(metas)
    return lance.LanceDataset.commit(uri, op, read_version=existing.version, storage_options=storage_options)


def create_empty(uri: str, schema: pa.Schema, storage_options: dict | None = None):
    import lance

    return lance.write_dataset(schema.empty_table(), uri, schema=schema, mode="create", storage_options=storage_options)


def remove_tree(uri: str, storage_options: dict | None = None) -> None:
    """Delete a folder (an internal staging or work table, committed or not) if it exists."""
    from itemlens.store.location import StoreLocation

    filesystem, path = StoreLocation.parse(uri, storage_options).filesystem()
    if not filesystem.exists(path):
        return
    # Manifests first: a deletion cut short then leaves data files, not a dataset without data.
    versions = f"{path}/_versions"
    if filesystem.exists(versions):
        filesystem.rm(versions, recursive=True)
    if filesystem.exists(path):
        filesystem.rm(path, recursive=True)


def sql_rows(dataset, query: str) -> list[dict]:
    """Run a (small-result) SQL query on one dataset through Lance's DataFusion engine."""
    batches = dataset.sql(query).build().to_batch_records()
    return pa.Table.from_batches(batches).to_pylist() if batches else []


def isin_filter(column: str, values: Iterable[str]):
    import pyarrow.compute as pc

    return pc.field(column).isin(pa.array(list(values), pa.string()))
