"""Stored input hashes, looked up batch by batch from the pipeline's workers.

Refresh decides by content: an item is encoded again when the hash of its input differs
from the one stored with its value (or with its errors row: an input that failed and has
not changed is not retried, unless the job asks to retry errors). Workers ask only for the
ids of the batch in hand, against the table versions pinned when the job started, so no
process ever holds the store's hashes for the whole catalog.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from itemlens.store import lance_io


@functools.lru_cache(maxsize=16)
def _open_pinned(uri: str, version: int | None, options: tuple):
    # A dataset at a fixed version never changes, so a worker process can keep it open
    # across tasks (opening costs tens of milliseconds, paid per task otherwise).
    return lance_io.open_dataset(uri, version, dict(options) or None)


@dataclass(frozen=True)
class StoredHashes:
    feature_uri: str | None  # None: no stored values for this version yet
    feature_version: int | None
    errors_uri: str | None  # None: no errors rows to compare with (or errors are retried)
    errors_version: int | None
    fingerprint: str
    storage_options: dict[str, str] | None = None
    # a dry run's view of work a dead job left staged (the next run merges it before encoding):
    # its rows count as stored, its errors rows too unless errors are retried
    staging_uri: str | None = None
    staging_version: int | None = None
    retry_errors: bool = False

    @property
    def empty(self) -> bool:
        return self.feature_uri is None and self.errors_uri is None and self.staging_uri is None

    def _dataset(self, uri: str, version: int | None):
        return _open_pinned(uri, version, tuple(sorted((self.storage_options or {}).items())))

    def lookup(self, ids: list[str]) -> dict[str, str]:
        """item_id -> stored input hash, for the ids that have one."""
        return {k: h for k, (h, _) in self.lookup_keys(ids).items()}

    def lookup_keys(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """item_id -> (stored input hash, stored media key or None), for the ids that have one."""
        if not ids or self.empty:
            return {}
        found: dict[str, tuple[str, str | None]] = {}
        columns = ["item_id", "input_hash", "media_key"]
        if self.errors_uri is not None:
            errors = self._dataset(self.errors_uri, self.errors_version)
            flt = lance_io.isin_filter("item_id", ids) & _equals("version", self.fingerprint)
            found.update(_pairs(errors.to_table(columns=columns, filter=flt)))
        if self.feature_uri is not None:
            feature = self._dataset(self.feature_uri, self.feature_version)
            found.update(_pairs(feature.to_table(columns=columns, filter=lance_io.isin_filter("item_id", ids))))
        if self.staging_uri is not None:  # merged last, so it wins, as the merge's upsert does
            import pyarrow.compute as pc

            staging = self._dataset(self.staging_uri, self.staging_version)
            flt = lance_io.isin_filter("item_id", ids)
            if self.retry_errors:  # a staged failure is not stored either
                flt = flt & pc.field("error_stage").is_null()
            found.update(_pairs(staging.to_table(columns=columns, filter=flt)))
        return {k: v for k, v in found.items() if v[0] is not None}


def _pairs(table) -> dict[str, tuple[str, str | None]]:
    return dict(zip(table.column(0).to_pylist(), zip(table.column(1).to_pylist(), table.column(2).to_pylist())))


def _equals(column: str, value: str):
    import pyarrow.compute as pc

    return pc.field(column) == value


@dataclass(frozen=True)
class StoredValues:
    """One column of a feature table (a caption feature's captions), looked up by id from the
    table version pinned when the job read it: how a feature with ``input: {feature: NAME}``
    gets its texts, batch by batch, in the workers."""

    feature_uri: str | None  # None: the feature has no stored values
    feature_version: int | None
    column: str
    storage_options: dict[str, str] | None = None

    def lookup(self, ids: list[str]) -> dict[str, str]:
        if not ids or self.feature_uri is None:
            return {}
        dataset = _open_pinned(
            self.feature_uri, self.feature_version, tuple(sorted((self.storage_options or {}).items()))
        )
        table = dataset.to_table(columns=["item_id", self.column], filter=lance_io.isin_filter("item_id", ids))
        return {k: v for k, v in zip(table.column(0).to_pylist(), table.column(1).to_pylist()) if v is not None}
