"""The store's single writer: items, feature versions, staging, merges, publishing.

A job (``itemlens ingest`` or ``Lens.put_vectors``) opens a :class:`StoreWriter`, which takes
the writer lock and reads the latest snapshot as its base. Everything it writes goes to new
Lance versions of the tables; readers see none of it until :meth:`StoreWriter.publish`
appends the snapshot that names those versions.

Staging makes jobs resumable: encoded rows are committed to a per-feature-version staging
table while the job runs; at the end they are merged into the feature table (and errors
table) and the staging table is dropped. A job that died leaves its staging table behind;
the next job merges it first (:meth:`StoreWriter.recover_staging`), so the work is kept and
its items are not encoded again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pyarrow as pa

from itemlens.config_types import NAME
from itemlens.errors import CatalogError, ConfigError, StoreError, StoreFormatError, StoreNotFoundError
from itemlens.store import lance_io
from itemlens.store.faults import fault_point
from itemlens.store.layout import (
    ABSENT,
    ERRORS_SCHEMA,
    ERRORS_TABLE,
    FORMAT_VERSION,
    ITEMS_SCHEMA,
    ITEMS_TABLE,
    META_SCHEMA,
    META_TABLE,
    SNAPSHOTS_SCHEMA,
    SNAPSHOTS_TABLE,
    TIMESTAMP,
    WORK_IDS_PATH,
    WORK_IDS_SCHEMA,
    feature_columns,
    feature_table,
    staging_path,
    value_column,
)
from itemlens.store.location import StoreLocation
from itemlens.store.lock import WriterLock
from itemlens.store.snapshots import (
    FeatureEntry,
    FeatureVersion,
    GraphEntry,
    GraphVersion,
    SemanticIdEntry,
    SemanticIdVersion,
    SnapshotDoc,
    append_doc,
    list_snapshots,
    now_iso,
    pin_tag,
    pinned_snapshots,
    read_doc,
)


@dataclass
class Registration:
    """What registering the catalog's ids found."""

    seen: int = 0  # catalog rows (= distinct ids: duplicates are refused)
    removed: int = 0  # items removed from the published snapshot (the most any configured version held)
    new: int = 0  # ids the published snapshot's items did not have
    digest: str = ""  # order-independent digest of the catalog's rows
    refused: str = ""  # a dry run: why the real run would be refused ("" when it would not)


@dataclass(frozen=True)
class RemovalPolicy:
    """How many items a full catalog may remove from a feature version. A full catalog is the
    whole truth, so a truncated or wrong file would silently empty the store; by default a
    catalog that would remove more than ``max_share`` of the items a version holds (or all of
    them) is refused, unless the run allows that many explicitly (``allowed``: a count, or
    None for the default rule; ``ALL`` for any number)."""

    max_share: float = 0.5
    allowed: int | None = None

    ALL: ClassVar[int] = -1

    def check(self, version: FeatureVersion, held: int, missing: int) -> None:
        if missing == 0 or self.allowed == self.ALL:
            return
        if self.allowed is not None:
            if missing <= self.allowed:
                return
            why = f"more than --allow-removals {self.allowed}"
        elif missing < held and missing <= self.max_share * held:
            return
        else:
            why = "all of them" if missing == held else f"more than catalog.max_removed_share {self.max_share:.0%}"
        raise CatalogError(
            f"the catalog would remove {missing:,} of the {held:,} items that {version.qualified} holds ({why}); "
            f"nothing was changed. If the catalog is right, run again with --allow-removals {missing} (or all)"
        )


TOP_REASONS = 10  # error reasons a job report counts one by one (they may name files: many distinct)


@dataclass
class MergeStats:
    inserted: int = 0  # items that had no value before
    updated: int = 0  # items whose value was replaced
    failed: int = 0  # items that got an errors row
    by_stage: dict[str, int] = field(default_factory=dict)  # errors per stage (input, read, ...)
    by_reason: dict[str, int] = field(default_factory=dict)  # the most frequent error reasons, counted


def check_store_format(location: StoreLocation) -> None:
    """Raise unless ``location`` holds an itemlens store whose format this version reads."""
    meta = lance_io.open_dataset(location.table_uri(META_TABLE), storage_options=location.options())
    if meta is None:
        raise StoreNotFoundError(
            f"no itemlens store at {location.uri} (`itemlens ingest CATALOG --config FILE --store "
            f"{location.uri}` makes one from a catalog; itemlens.create({location.uri!r}) an empty one, "
            "for put_vectors)"
        )
    values = {r["key"]: r["value"] for r in meta.to_table().to_pylist()}
    fmt = int(values.get("format_version", "0") or 0)
    if fmt != FORMAT_VERSION:
        if fmt > FORMAT_VERSION:
            what = "a newer format: upgrade itemlens to read it"
        else:  # format 1 lacked the media keys that refresh compares before reading media
            what = "an older format, without media keys: ingest the catalog again into a new store"
        raise StoreFormatError(
            f"store {location.uri} has format version {fmt} ({what}; written by itemlens "
            f"{values.get('created_by', '?')}); this itemlens reads format {FORMAT_VERSION} only"
        )


class StoreWriter:
    def __init__(self, location: StoreLocation, lock: WriterLock):
        self.location = location
        self.lock = lock
        self.run_id = uuid.uuid4().hex[:12]
        self._ensure_store()
        self.base: SnapshotDoc = read_doc(location) or SnapshotDoc()
        self._touched: dict[str, FeatureVersion] = {}
        self._semantic_ids: dict[str, SemanticIdVersion] = {}
        self._graphs: dict[str, GraphVersion] = {}

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        lock_wait: float = 0.0,
        command: str | None = None,
        create: bool = True,
    ) -> StoreWriter:
        """Take the writer lock on ``uri`` and return a writer; the store is made there if there
        is none, unless ``create`` is false (commands that change a store refuse a path without
        one: a mistyped path must not become an empty store)."""
        location = StoreLocation.parse(uri, storage_options)
        if not create:
            check_store_format(location)
        lock = WriterLock(location).acquire(wait=lock_wait, command=command)
        try:
            return cls(location, lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- store creation and format --------------------------------------------------------
    def _uri(self, table: str) -> str:
        return self.location.table_uri(table)

    def open_table(self, table: str, *, at_base: bool = False):
        """The table's latest version, or (``at_base``) the version the published snapshot names
        (None when that snapshot does not name it)."""
        if at_base:
            version = self.base.tables.get(table)
            if version is None:
                return None
            return lance_io.open_dataset(self._uri(table), version, self.location.options())
        return lance_io.open_dataset(self._uri(table), storage_options=self.location.options())

    def _remove_tree(self, uri: str) -> None:
        lance_io.remove_tree(uri, self.location.options())

    def _ensure_store(self) -> None:
        if self.open_table(META_TABLE) is not None:
            check_store_format(self.location)
            return
        import lancedb

        # A store whose creation was interrupted has some of its own tables and no meta yet.
        own = {ITEMS_TABLE, ERRORS_TABLE, SNAPSHOTS_TABLE}
        db = lancedb.connect(self.location.uri, storage_options=self.location.options())
        existing = [t for t in db.list_tables().tables if t not in own]
        if existing:
            raise StoreError(
                f"{self.location.uri} is a LanceDB database but not an itemlens store "
                f"(it has tables {', '.join(existing[:5])}); use an empty folder"
            )
        from itemlens import __version__

        opts = self.location.options()
        for table, schema in (
            (ITEMS_TABLE, ITEMS_SCHEMA),
            (ERRORS_TABLE, ERRORS_SCHEMA),
            (SNAPSHOTS_TABLE, SNAPSHOTS_SCHEMA),
        ):
            if self.open_table(table) is None:
                lance_io.create_empty(self._uri(table), schema, opts)
        # meta last: a store is an itemlens store once it has its format recorded
        import lance

        meta = pa.table(
            {
                "key": ["format_version", "created_by", "created_at"],
                "value": [str(FORMAT_VERSION), f"itemlens {__version__}", now_iso()],
            },
            schema=META_SCHEMA,
        )
        lance.write_dataset(meta, self._uri(META_TABLE), mode="create", storage_options=opts)

    # -- items ----------------------------------------------------------------------------
    @property
    def work_ids_uri(self) -> str:
        return self.location.path(WORK_IDS_PATH)

    def reset_work_ids(self) -> str:
        self._remove_tree(self.work_ids_uri)
        return self.work_ids_uri

    def register_catalog_ids(
        self,
        fragments: list[str],
        id_column: str = "item_id",
        *,
        remove_missing: list[FeatureVersion] | None = None,
        removals: RemovalPolicy | None = None,
    ) -> Registration:
        """Commit the catalog's ids written by the workers, refuse missing and duplicate ids,
        and give every id the store has not seen an item index (in catalog order, after the
        existing ones).

        ``remove_missing``: feature versions from which the items this catalog no longer holds
        are removed (values and errors rows; a full catalog's refresh). Older snapshots keep
        them: Lance removes rows in a new table version. ``removals`` bounds how many that may
        be (an empty catalog is always refused); nothing is written when it refuses."""
        self.lock.check()
        work = lance_io.commit_fragments(self.work_ids_uri, fragments, WORK_IDS_SCHEMA, self.location.options())
        return self._register(work, id_column, remove_missing, removals or RemovalPolicy())

    def register_ids(self, ids: list[str]) -> Registration:
        """Register ids given in memory (``put_vectors``)."""
        import hashlib

        import lance

        self.lock.check()
        self.reset_work_ids()
        hashes = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "little", signed=True) for i in ids]
        work = lance.write_dataset(
            pa.table({"item_id": ids, "row_hash": pa.array(hashes, pa.int64())}, schema=WORK_IDS_SCHEMA),
            self.work_ids_uri,
            storage_options=self.location.options(),
        )
        return self._register(work, "item_id")

    def _register(
        self,
        work,
        id_column: str,
        remove_missing: list[FeatureVersion] | None = None,
        removals: RemovalPolicy | None = None,
    ) -> Registration:
        seen = work.count_rows()
        self._check_ids(work, id_column)
        if remove_missing is not None and seen == 0:
            raise CatalogError(
                "the catalog is empty: a full catalog is the whole truth, so it would remove every item from the "
                "new snapshot; this is refused (a delta, --delta, changes only what it names)"
            )
        digest_rows = lance_io.sql_rows(work, "SELECT bit_xor(row_hash) AS x FROM dataset")
        digest = digest_rows[0]["x"] if digest_rows and digest_rows[0]["x"] is not None else 0
        removed = 0
        if remove_missing:
            # counted against the published snapshot (what readers see now), decided before any write
            held = [self._count_missing(v, work, at_base=True) for v in remove_missing]
            removals = removals or RemovalPolicy()
            for version, (total, missing) in zip(remove_missing, held):
                removals.check(version, total, missing)
            removed = max(missing for _, missing in held)
            # removed from the latest table versions (a dead run may have removed some already)
            for version in remove_missing:
                if self._count_missing(version, work, at_base=False)[1]:  # a no-op delete still commits
                    self._remove(version, work, keep=True)
        new_since_base, new = self._new_ids(work, seen)
        if new:
            self._append_items(work)
        self._remove_tree(self.work_ids_uri)
        return Registration(
            seen=seen, new=new_since_base, removed=removed, digest=f"{digest & 0xFFFFFFFFFFFFFFFF:016x}"
        )

    def _new_ids(self, work, seen: int) -> tuple[int, int]:
        """Drop the ids the store knows from the work table; returns how many ids are new since
        the published snapshot (the report's count) and how many the store has never seen (they
        get item indexes now; more than the first only when a dead run registered some)."""
        import lance

        items = self.open_table(ITEMS_TABLE)
        known = items.count_rows()  # append-only, never deleted: count == max index + 1
        base_version = self.base.tables.get(ITEMS_TABLE)
        published = items.checkout_version(base_version).count_rows() if base_version else 0
        if not known or not seen:
            return seen, seen
        opts = self.location.options()
        work.merge_insert("item_id").when_matched_delete().execute(
            items.scanner(columns=["item_id"], filter=f"item_index < {published}").to_reader()
        )
        work = lance.dataset(self.work_ids_uri, storage_options=opts)
        new_since_base = work.count_rows()
        if known > published and new_since_base:
            work.merge_insert("item_id").when_matched_delete().execute(
                items.scanner(columns=["item_id"], filter=f"item_index >= {published}").to_reader()
            )
            work = lance.dataset(self.work_ids_uri, storage_options=opts)
        return new_since_base, work.count_rows()

    def _append_items(self, work) -> None:
        """Give the work table's ids the next item indexes, in its order, in one append."""
        # every commit checks the lock first; here it matters most: a writer whose lease was taken
        # would give out the item indexes that the new holder gives too
        self.lock.check()
        import lance

        work = lance.dataset(self.work_ids_uri, storage_options=self.location.options())
        next_index = self.open_table(ITEMS_TABLE).count_rows()
        stamp = datetime.now(timezone.utc)

        def batches():
            index = next_index
            for batch in work.to_batches(columns=["item_id"]):
                n = batch.num_rows
                yield pa.record_batch(
                    [
                        batch.column(0),
                        pa.array(range(index, index + n), pa.int64()),
                        pa.array([stamp] * n, TIMESTAMP),
                    ],
                    schema=ITEMS_SCHEMA,
                )
                index += n

        lance.write_dataset(
            pa.RecordBatchReader.from_batches(ITEMS_SCHEMA, batches()),
            self._uri(ITEMS_TABLE),
            mode="append",
            storage_options=self.location.options(),
        )
        fault_point("register:items")

    def preview_catalog_ids(
        self,
        fragments: list[str],
        id_column: str,
        versions: list[FeatureVersion],
        *,
        deletions: list[str] | None = None,
        removals: RemovalPolicy | None = None,
    ) -> Registration:
        """What :meth:`register_catalog_ids` with ``remove_missing=versions`` (a full catalog)
        or :meth:`remove_items` of a delta's ``deletions`` would find, written nowhere but the
        scratch folder ``_work``. ``refused`` says why the run would be refused, if it would."""
        work = lance_io.commit_fragments(self.work_ids_uri, fragments, WORK_IDS_SCHEMA, self.location.options())
        self._check_ids(work, id_column)
        seen = work.count_rows()
        refused = ""
        removed = 0
        if deletions is None:
            if seen == 0:
                refused = "the catalog is empty (an empty full catalog is always refused)"
            held = [self._count_missing(v, work, at_base=True) for v in versions]
            removed = max([missing for _, missing in held], default=0)
            for version, (total, missing) in zip(versions, held):
                try:
                    (removals or RemovalPolicy()).check(version, total, missing)
                except CatalogError as exc:
                    refused = refused or str(exc)
        elif deletions:
            removed = self._count_deleted(versions, deletions)
        new, _ = self._new_ids(work, seen)
        self._remove_tree(self.work_ids_uri)
        return Registration(seen=seen, new=new, removed=removed, refused=refused)

    def _count_deleted(self, versions: list[FeatureVersion], ids: list[str]) -> int:
        """How many of ``ids`` the published snapshot holds (values or errors rows), at most per version."""
        wanted = lance_io.isin_filter("item_id", ids)
        errors = self.open_table(ERRORS_TABLE, at_base=True)
        removed = 0
        for version in versions:
            table = self.open_table(version.table, at_base=True)
            n = table.count_rows(filter=wanted) if table is not None else 0
            n += errors.count_rows(filter=wanted & _version_is(version)) if errors is not None else 0
            removed = max(removed, n)
        return removed

    def _count_missing(self, version: FeatureVersion, work, *, at_base: bool) -> tuple[int, int]:
        """How many items ``version`` holds (values and errors rows) and how many of them the
        staged catalog ids ``work`` lack, in the published snapshot (``at_base``) or in the
        latest table versions; counted on a scratch copy of the version's ids (Lance has no
        anti-join)."""
        import lance

        held = self._held_ids(version, at_base=at_base)
        if held is None:
            return 0, 0
        held_uri = self.location.path("_work/held.lance")
        scratch = lance.write_dataset(held, held_uri, mode="overwrite", storage_options=self.location.options())
        total = scratch.count_rows()
        matched = (
            scratch.merge_insert("item_id")
            .when_matched_delete()
            .execute(work.scanner(columns=["item_id"]).to_reader())["num_deleted_rows"]
        )
        self._remove_tree(held_uri)
        return total, total - matched

    def _held_ids(self, version: FeatureVersion, *, at_base: bool = False):
        """A reader of the ids this version holds (values and errors rows), or None."""
        table = self.open_table(version.table, at_base=at_base)
        errors = self.open_table(ERRORS_TABLE, at_base=at_base)
        has_errors = errors is not None and errors.count_rows(filter=f"version = '{version.fingerprint}'") > 0
        if table is None and not has_errors:
            return None
        parts = [errors.scanner(columns=["item_id"], filter=_version_is(version)).to_reader()] if has_errors else []
        if table is not None:
            parts.append(table.scanner(columns=["item_id"]).to_reader())
        schema = pa.schema([pa.field("item_id", pa.string())])

        def batches():
            for reader in parts:
                yield from reader

        return pa.RecordBatchReader.from_batches(schema, batches())

    @staticmethod
    def _check_ids(work, id_column: str) -> None:
        """Refuse a catalog with rows without an id, or with an id twice."""
        blank = lance_io.sql_rows(work, "SELECT COUNT(*) AS n FROM dataset WHERE item_id IS NULL OR trim(item_id) = ''")
        blank = blank[0]["n"] if blank else 0
        if blank:
            raise CatalogError(
                f"{blank} catalog row(s) have no {id_column!r} (missing or empty); every row needs an id, "
                "so nothing was ingested"
            )
        dups = lance_io.sql_rows(
            work,
            "SELECT item_id, COUNT(*) AS n FROM dataset GROUP BY item_id HAVING COUNT(*) > 1 "
            "ORDER BY n DESC, item_id LIMIT 5",
        )
        if dups:
            total = lance_io.sql_rows(
                work, "SELECT COUNT(*) AS n FROM (SELECT item_id FROM dataset GROUP BY item_id HAVING COUNT(*) > 1)"
            )
            shown = ", ".join(f"{d['item_id']!r} ({d['n']} rows)" for d in dups)
            raise CatalogError(
                f"the catalog has {total[0]['n']} duplicated item id(s), e.g. {shown}; each item must "
                "appear once (which row should win is ambiguous), so nothing was ingested"
            )

    def remove_items(self, versions: list[FeatureVersion], ids: list[str]) -> int:
        """Remove ``ids`` (a delta's deletions) from these feature versions, values and errors
        rows; returns the most any one version held in the published snapshot. Older snapshots
        keep them."""
        self.lock.check()
        if not ids:
            return 0
        source = pa.table({"item_id": pa.array(ids, pa.string())})
        wanted = lance_io.isin_filter("item_id", ids)
        for version in versions:  # only where some are held: a no-op delete would still commit
            table = self.open_table(version.table)
            held = table.count_rows(filter=wanted) if table is not None else 0
            held += self.open_table(ERRORS_TABLE).count_rows(filter=wanted & _version_is(version))
            if held:
                self._remove(version, source, keep=False)
        return self._count_deleted(versions, ids)

    def _remove(self, version: FeatureVersion, source, *, keep: bool) -> int:
        """Delete one version's rows (values and errors) of the items ``source`` names
        (``keep=False``), or of every item it does not name (``keep=True``). ``source`` is a
        Lance dataset with an ``item_id`` column, streamed, or a small table of ids."""

        def ids(**constants: str):
            if isinstance(source, pa.Table):
                table = source.select(["item_id"])
                for name, value in constants.items():
                    table = table.add_column(0, name, pa.array([value] * table.num_rows, pa.string()))
                return table
            columns = {name: f"'{value}'" for name, value in constants.items()} | {"item_id": "item_id"}
            return source.scanner(columns=columns).to_reader()

        removed = 0
        table = self.open_table(version.table)
        if table is not None and table.count_rows():
            builder = table.merge_insert("item_id")
            builder = builder.when_not_matched_by_source_delete() if keep else builder.when_matched_delete()
            removed += builder.execute(ids())["num_deleted_rows"]
            fault_point("remove:values")
        errors = self.open_table(ERRORS_TABLE)
        own = f"version = '{version.fingerprint}'"
        if errors.count_rows(filter=own):
            builder = errors.merge_insert(["version", "item_id"])
            builder = builder.when_not_matched_by_source_delete(own) if keep else builder.when_matched_delete()
            removed += builder.execute(ids(version=version.fingerprint))["num_deleted_rows"]
            fault_point("remove:errors")
        return removed

    # -- feature versions -----------------------------------------------------------------
    def resolve_version(
        self,
        name: str,
        fingerprint: str,
        spec: dict[str, Any],
        *,
        dtype: str,
        pooling: str,
        kind: str = "vector",
        encoder: dict[str, Any] | None = None,
    ) -> FeatureVersion:
        """The feature version for this fingerprint: the stored one, or a new label."""
        if not NAME.match(name):
            raise StoreError(
                f"feature name {name!r} is not allowed: use a letter then letters, digits or '_' (64 at most)"
            )
        entry = self.base.features.get(name)
        existing = entry.by_fingerprint(fingerprint) if entry else None
        if existing is not None:
            version = existing.model_copy(deep=True)
            version.spec = spec  # same fingerprint; keep the latest wording (note, resources)
        else:
            version = FeatureVersion(
                name=name,
                label=entry.next_label() if entry else "v1",
                fingerprint=fingerprint,
                table=feature_table(name, fingerprint),
                spec=spec,
                kind=kind,
                dtype=dtype,
                pooling=pooling,
                created_at=now_iso(),
            )
        if encoder:
            version.encoder = encoder
        self._touched[name] = version
        return version

    def staging_uri(self, version: FeatureVersion) -> str:
        return self.location.path(staging_path(version.name, version.fingerprint))

    def commit_staged(self, version: FeatureVersion, fragments: list[str], schema: pa.Schema) -> None:
        """Commit fragments written by workers to the version's staging table (one transaction)."""
        self.lock.check()
        lance_io.commit_fragments(self.staging_uri(version), fragments, schema, self.location.options())
        fault_point("staging:commit")

    def stored_hashes(self, version: FeatureVersion, *, retry_errors: bool = False, with_staging: bool = False):
        """What workers compare input hashes against: this version's rows as they are now; with
        ``with_staging`` (a dry run, which merges nothing), also what a dead job left staged."""
        from itemlens.store.lookup import StoredHashes

        feature = self.open_table(version.table)
        has_values = feature is not None and feature.count_rows() > 0
        errors = self.open_table(ERRORS_TABLE)
        has_errors = not retry_errors and errors.count_rows(filter=f"version = '{version.fingerprint}'") > 0
        staging = (
            lance_io.open_dataset(self.staging_uri(version), storage_options=self.location.options())
            if with_staging
            else None
        )
        return StoredHashes(
            feature_uri=self._uri(version.table) if has_values else None,
            feature_version=feature.version if has_values else None,
            errors_uri=self._uri(ERRORS_TABLE) if has_errors else None,
            errors_version=errors.version if has_errors else None,
            fingerprint=version.fingerprint,
            storage_options=self.location.options(),
            staging_uri=self.staging_uri(version) if staging is not None else None,
            staging_version=staging.version if staging is not None else None,
            retry_errors=retry_errors,
        )

    def stored_values(self, version: FeatureVersion):
        """What workers read a dependent feature's inputs from: this version's values as merged now."""
        from itemlens.store.lookup import StoredValues

        feature = self.open_table(version.table)
        has_values = feature is not None and feature.count_rows() > 0
        return StoredValues(
            feature_uri=self._uri(version.table) if has_values else None,
            feature_version=feature.version if has_values else None,
            column=value_column(version.pooling, version.kind),
            storage_options=self.location.options(),
        )

    def discard_other_staging(self, keep: list[FeatureVersion]) -> list[str]:
        """Drop staging left by dead jobs for feature versions no longer configured (their
        work is for a spec nobody asks for now); returns what was dropped."""
        filesystem, root = self.location.filesystem("_staging")
        wanted = {self.staging_uri(v).rsplit("/", 1)[-1] for v in keep}
        dropped = []
        entries = filesystem.ls(root, detail=True) if filesystem.exists(root) else []
        for info in entries:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info["type"] == "directory" and name not in wanted:
                self._remove_tree(self.location.path(f"_staging/{name}"))
                dropped.append(name)
        return dropped

    def recover_staging(self, version: FeatureVersion) -> MergeStats | None:
        """Merge what a job that died left staged for this version; None if nothing was left."""
        staging = lance_io.open_dataset(self.staging_uri(version), storage_options=self.location.options())
        if staging is None:
            # data files of a never-committed write
            self._remove_tree(self.staging_uri(version))
            return None
        return self.merge_staged(version)

    def merge_staged(self, version: FeatureVersion) -> MergeStats:
        """Merge the staging table into the feature and errors tables, then drop it.

        Each item ends in exactly one place: a value row (its errors row, if any, removed) or
        an errors row (its old value, if any, removed: it no longer matches the input).
        """
        self.lock.check()
        import lance

        opts = self.location.options()
        staging_uri = self.staging_uri(version)
        staging = lance_io.open_dataset(staging_uri, storage_options=opts)
        stats = MergeStats()
        if staging is None:
            return stats
        value = value_column(version.pooling, version.kind)
        ok, bad = "error_stage IS NULL", "error_stage IS NOT NULL"
        n_ok = staging.count_rows(filter=ok)
        n_bad = staging.count_rows() - n_ok
        columns = feature_columns(version.pooling, version.kind)  # a caption's token counts too
        schema = pa.schema([staging.schema.field(c) for c in columns])
        if version.kind == "vector":
            vtype = schema.field(value).type
            dim = (vtype.value_type if version.pooling != "mean" else vtype).list_size
            if version.dim is not None and version.dim != dim:
                raise StoreError(f"{version.qualified}: staged vectors have {dim} dimensions, the table {version.dim}")
            version.dim = dim

        target = self.open_table(version.table)
        had_rows = target is not None and target.count_rows() > 0
        missing = [f for f in schema if target is not None and f.name not in target.schema.names]
        if missing:  # a table written before a column existed (captions' token counts): null there
            target.add_columns(missing)
            target = self.open_table(version.table)
        if target is None:
            reader = staging.scanner(columns=columns, filter=ok).to_reader()
            target = lance.write_dataset(reader, self._uri(version.table), schema=schema, storage_options=opts)
            stats.inserted = n_ok
            fault_point("merge:values")
        elif n_ok:
            result = (
                target.merge_insert("item_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(staging.scanner(columns=columns, filter=ok).to_reader())
            )
            stats.inserted, stats.updated = result["num_inserted_rows"], result["num_updated_rows"]
            fault_point("merge:values")
            target = self.open_table(version.table)
        if n_bad and had_rows:
            target.merge_insert("item_id").when_matched_delete().execute(
                staging.scanner(columns=["item_id"], filter=bad).to_reader()
            )
            fault_point("merge:failed-values")
        if n_ok or had_rows:
            _index_item_ids(self.open_table(version.table))  # also folds new rows into a vector index
            if version.index is not None:
                self._measure_index(version)

        errors = self.open_table(ERRORS_TABLE)
        errors_touched = bool(n_bad)
        if n_ok and errors.count_rows(filter=f"version = '{version.fingerprint}'"):
            errors.merge_insert(["version", "item_id"]).when_matched_delete().execute(
                staging.scanner(
                    columns={"version": f"'{version.fingerprint}'", "item_id": "item_id"}, filter=ok
                ).to_reader()
            )
            fault_point("merge:errors-cleared")
            errors, errors_touched = self.open_table(ERRORS_TABLE), True
        if n_bad:
            error_columns = {
                "feature": f"'{version.name}'",
                "version": f"'{version.fingerprint}'",
                "item_id": "item_id",
                "stage": "error_stage",
                "reason": "error_reason",
                "input_hash": "input_hash",
                "media_key": "media_key",
                "at": "computed_at",
            }
            errors.merge_insert(["version", "item_id"]).when_matched_update_all().when_not_matched_insert_all().execute(
                staging.scanner(columns=error_columns, filter=bad).to_reader()
            )
            fault_point("merge:errors")
            stats.failed = n_bad
            for row in lance_io.sql_rows(
                staging,
                "SELECT error_stage AS s, COUNT(*) AS n FROM dataset "
                "WHERE error_stage IS NOT NULL GROUP BY error_stage",
            ):
                stats.by_stage[row["s"]] = row["n"]
            # the most frequent reasons of failures (absent inputs are counted by stage only)
            for row in lance_io.sql_rows(
                staging,
                "SELECT error_reason AS r, COUNT(*) AS n FROM dataset WHERE "
                f"error_stage IS NOT NULL AND error_stage != '{ABSENT}' "
                f"GROUP BY error_reason ORDER BY n DESC, r LIMIT {TOP_REASONS}",
            ):
                stats.by_reason[row["r"]] = row["n"]
        if errors_touched:
            _index_item_ids(self.open_table(ERRORS_TABLE))
        self._remove_tree(staging_uri)
        fault_point("merge:staging-dropped")
        return stats

    def count_values(self, version: FeatureVersion) -> int:
        dataset = self.open_table(version.table)
        return dataset.count_rows() if dataset is not None else 0

    # -- vector indexes ---------------------------------------------------------------------
    def build_index(self, version: FeatureVersion, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build (or rebuild) the version's vector index and measure its recall@10."""
        self.lock.check()
        from itemlens.store import indexes

        if version.kind != "vector" or version.pooling != "mean":
            raise StoreError(f"{version.qualified}: only pooled vector features can be indexed")
        dataset = self.open_table(version.table)
        if dataset is None or dataset.count_rows() == 0:
            raise StoreError(f"{version.qualified} has no vectors to index")
        version.index = indexes.build(dataset, kind, params)
        self._measure_index(version)
        self._touched[version.name] = version
        return version.index

    def _measure_index(self, version: FeatureVersion) -> None:
        from itemlens.store import indexes

        dataset = self.open_table(version.table)
        version.index = {
            **(version.index or {}),
            "rows": dataset.count_rows(),
            "recall_at_10": round(indexes.recall_at_k(dataset, version.index["kind"], k=10), 4),
        }

    # -- semantic IDs -----------------------------------------------------------------------------
    def stage_semantic_ids(self, version: SemanticIdVersion) -> None:
        """A semantic-ID version whose tables this job wrote: named by the next snapshot."""
        self._semantic_ids[version.name] = version

    def stage_graph(self, version: GraphVersion) -> None:
        """A graph version whose table this job wrote: named by the next snapshot."""
        self._graphs[version.name] = version

    # -- pins and pruning ----------------------------------------------------------------------
    def pin(self, snapshot_id: int) -> None:
        """Protect a snapshot from pruning: a Lance tag on every table version it names."""
        self.lock.check()
        doc = read_doc(self.location, snapshot_id)
        for table, version in doc.tables.items():
            tags = self.open_table(table).tags
            if pin_tag(snapshot_id) not in tags.list():
                tags.create(pin_tag(snapshot_id), version)

    def unpin(self, snapshot_id: int) -> bool:
        """Remove a snapshot's pin; False when it had none."""
        self.lock.check()
        doc = read_doc(self.location, snapshot_id)
        removed = False
        for table in doc.tables:
            dataset = self.open_table(table)
            if dataset is not None and pin_tag(snapshot_id) in dataset.tags.list():
                dataset.tags.delete(pin_tag(snapshot_id))
                removed = True
        return removed

    def prune(self, keep: int) -> dict[str, Any]:
        """Keep the newest ``keep`` snapshots and the pinned ones; delete every other snapshot
        and every table version or table that no kept snapshot names.

        The snapshot list changes first, in one commit, and only then are table versions
        deleted: a prune killed half way leaves no listed snapshot whose tables are gone, only
        table versions that no snapshot names, which the next prune deletes."""
        if keep < 1:
            raise StoreError("prune needs keep >= 1: the newest snapshot always stays")
        self.lock.check()
        ids = [s["snapshot_id"] for s in list_snapshots(self.location)]
        pinned = set(pinned_snapshots(self.location))
        kept = sorted(set(ids[-keep:]) | (pinned & set(ids)))
        dropped = [i for i in ids if i not in kept]
        named: dict[str, set[int]] = {}
        for snapshot_id in kept:
            for table, version in read_doc(self.location, snapshot_id).tables.items():
                named.setdefault(table, set()).add(version)
        deleted_versions, dropped_tables = 0, []
        if dropped:
            self.open_table(SNAPSHOTS_TABLE).delete(f"snapshot_id IN ({', '.join(map(str, dropped))})")
            fault_point("prune:snapshots")
        import lancedb

        db = lancedb.connect(self.location.uri, storage_options=self.location.options())
        for table in db.list_tables().tables:
            if table in (META_TABLE, SNAPSHOTS_TABLE):
                continue
            dataset = self.open_table(table)
            if table not in named:
                if table.startswith(("feature__", "sid__", "sidq__", "graph__")):  # a version no kept snapshot names
                    self._remove_tree(self._uri(table))
                    dropped_tables.append(table)
                    fault_point("prune:table")
                continue
            latest = dataset.latest_version
            old = [
                v["version"] for v in dataset.versions() if v["version"] not in named[table] and v["version"] != latest
            ]
            if old:
                deleted_versions += dataset.cleanup_old_versions(versions=old).old_versions
                fault_point("prune:versions")
        # the snapshot list's own old versions still hold the dropped rows: none is named by a snapshot
        deleted_versions += self.open_table(SNAPSHOTS_TABLE).cleanup_old_versions(older_than=timedelta(0)).old_versions
        return {
            "kept": kept,
            "dropped": dropped,
            "pinned": sorted(pinned),
            "versions_deleted": deleted_versions,
            "tables_dropped": dropped_tables,
        }

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        *,
        catalog: dict[str, Any],
        report: dict[str, Any],
        current: dict[str, FeatureVersion] | None = None,
        force: bool = False,
        rewritten: list[FeatureVersion] | None = None,
    ) -> SnapshotDoc | None:
        """Append the snapshot naming the latest version of every table it covers.

        ``current`` maps feature names to the version the configuration now specifies (default:
        every version this job touched). ``rewritten``: versions whose tables changed without
        becoming current (an index built on an older version): the snapshot names their new
        table versions and records them as they are now. The writer holds the lock, so the
        latest versions are this job's writes, or those of a job that died after merging and
        before publishing: either way they belong in the next snapshot. Returns None when
        nothing changed.
        """
        self.lock.check()
        current = self._touched if current is None else current
        doc = self.base.model_copy(deep=True)
        changed = force
        for version in rewritten or []:
            doc.tables[version.table] = self.open_table(version.table).version
            doc.features[version.name].versions[version.label] = version
        errors = self.open_table(ERRORS_TABLE)

        def recount(version: FeatureVersion, dataset) -> None:
            version.count = dataset.count_rows() if dataset is not None else 0
            own = f"version = '{version.fingerprint}'"
            version.absent = errors.count_rows(filter=f"{own} AND stage = '{ABSENT}'")
            version.errors = errors.count_rows(filter=own) - version.absent
            if dataset is not None:
                doc.tables[version.table] = dataset.version

        for name, version in current.items():
            recount(version, self.open_table(version.table))
            entry = doc.features.get(name)
            if entry is None:
                doc.features[name] = FeatureEntry(current=version.label, versions={version.label: version})
                changed = True
            else:
                changed |= entry.current != version.label or version.label not in entry.versions
                entry.versions[version.label] = version
                entry.current = version.label
        # A job that died after merging a feature and before publishing left that feature's table
        # and its errors rows ahead of the snapshot. The errors table moves to its latest version
        # below, so the feature's table moves with it, whichever job publishes next: else an item
        # could have both a value and an errors row, or neither.
        mine = {(v.name, v.label) for v in [*current.values(), *(rewritten or [])]}
        for name, entry in doc.features.items():
            for label, version in entry.versions.items():
                if (name, label) in mine or version.table not in doc.tables:
                    continue
                dataset = self.open_table(version.table)
                if dataset is not None and dataset.version != doc.tables[version.table]:
                    recount(version, dataset)
        for sid in self._semantic_ids.values():
            for table in (sid.table, sid.quantizer_table):
                doc.tables[table] = self.open_table(table).version
            changed |= _make_current(doc.semantic_ids, sid, SemanticIdEntry)
        for graph in self._graphs.values():
            doc.tables[graph.table] = self.open_table(graph.table).version
            changed |= _make_current(doc.graphs, graph, GraphEntry)
        for table in (ITEMS_TABLE, ERRORS_TABLE):
            doc.tables[table] = self.open_table(table).version
        changed |= doc.tables != self.base.tables
        if not changed:
            return None
        doc.snapshot_id = self.base.snapshot_id + 1
        doc.created_at = now_iso()
        doc.format_version = FORMAT_VERSION
        doc.catalog = catalog
        doc.report = report
        append_doc(self.location, doc)
        fault_point("publish")
        self.base = doc
        return doc


def publish_derived(
    uri: str,
    specs: dict[str, Any],
    spec_type,
    derive,
    *,
    what: str,
    section: str,
    command: str,
    lock_wait: float = 0.0,
    storage_options: dict[str, str] | None = None,
):
    """Derive artifacts (semantic IDs, graphs) from the latest snapshot's vectors under the
    writer lock, ``derive(writer, name, spec)`` per definition, and publish one snapshot.
    Returns the reports and the new snapshot id (None when nothing changed)."""
    parsed = {n: s if isinstance(s, spec_type) else spec_type.model_validate(s) for n, s in specs.items()}
    for name in parsed:
        if not NAME.match(name):
            raise ConfigError(f"{what} name {name!r}: use a letter, then letters, digits or '_'")
    with StoreWriter.open(
        uri, storage_options=storage_options, lock_wait=lock_wait, command=command, create=False
    ) as writer:
        if writer.base.snapshot_id == 0:
            raise StoreError(f"{writer.location.uri} has no snapshot yet: ingest features first")
        reports = {name: derive(writer, name, spec) for name, spec in parsed.items()}
        doc = writer.publish(
            catalog=dict(writer.base.catalog),
            current={},
            report={
                "summary": f"{what}: " + "; ".join(r.line() for r in reports.values()),
                section: {n: r.to_doc() for n, r in reports.items()},
            },
        )
    return reports, (doc.snapshot_id if doc is not None else None)


def _make_current(entries: dict, version, entry_type) -> bool:
    """Record a derived artifact's version (semantic IDs, graph) as its name's current one;
    True when the name now resolves to another version, or that version's record changed (a
    graph's read-time preset or fusion weights)."""
    entry = entries.get(version.name)
    if entry is None:
        entries[version.name] = entry_type(current=version.label, versions={version.label: version})
        return True
    moved = entry.current != version.label or entry.versions.get(version.label) != version
    entry.versions[version.label] = version
    entry.current = version.label
    return moved


def _version_is(version: FeatureVersion):
    import pyarrow.compute as pc

    return pc.field("version") == version.fingerprint


def _index_item_ids(dataset) -> None:
    """Keep a BTREE index on item_id: the pipeline looks rows up by id batch after batch."""
    if dataset is None or dataset.count_rows() == 0:
        return
    if any("item_id" in _index_fields(d) for d in dataset.describe_indices()):
        dataset.optimize.optimize_indices()
    else:
        dataset.create_scalar_index("item_id", "BTREE")


def _index_fields(description) -> list[str]:
    fields = getattr(description, "field_names", None) or getattr(description, "fields", None) or []
    return [str(f) for f in fields]
