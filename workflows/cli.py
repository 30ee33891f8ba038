"""The ``itemlens`` command line (also the entrypoint of ``ray job submit``).

::

    itemlens ingest CATALOG --config lens.yaml --store ./lens [--address ADDR] [--delta] [--dry-run]
    itemlens show ./lens [--snapshot N] [--json]
    itemlens snapshots ./lens
    itemlens pin ./lens N          |  itemlens unpin ./lens N
    itemlens prune ./lens --keep K
    itemlens index ./lens FEATURE [--kind IVF_PQ|IVF_HNSW_SQ] [--num-partitions P] [--num-sub-vectors S]
    itemlens export ./lens --format mmrec|npz|parquet --out DIR [--feature F ...] [--ids FILE] [--fill nan]
    itemlens export ./lens --format sid-grid|sid-tokens|sid-parquet --out DIR [--semantic-ids NAME ...]
    itemlens semantic-ids ./lens --config lens.yaml [--name NAME ...] [--retrain]
    itemlens graph ./lens --config lens.yaml [--name NAME ...] [--rebuild]
    itemlens export ./lens --format pyg|scipy-npz|mmrec-adj --out DIR [--graph NAME ...] [--preset P]
    itemlens show ./lens --plots DIR      (also writes semantic-ID code-usage and graph degree plots)
    itemlens browse ./lens [--snapshot N] [--port P]      (a local, read-only web page; docs/browse.md)
    itemlens diff ./lens text@v1 text@v2 [--k 10] [--out DIR]   (or text@s3 text@s5: two snapshots)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

from itemlens.errors import ConfigError, ItemlensError


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (also what tests check cluster/ entrypoints against)."""
    parser = argparse.ArgumentParser(prog="itemlens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="encode a catalog into a store (full or incremental: it diffs)")
    p.add_argument("catalog", help="Parquet, JSONL or CSV file (or folder of them); a path or URI")
    p.add_argument("--config", required=True, help="YAML configuration (features, catalog, decode)")
    p.add_argument(
        "--store",
        required=True,
        help="store URI: a local folder, or s3://, gs://, az:// (credentials from the environment "
        "or the config's storage_options)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--wait-for-lock",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another writer to finish (default: fail at once)",
    )
    p.add_argument("--retry-errors", action="store_true", help="retry items whose unchanged input failed before")
    p.add_argument(
        "--allow-removals",
        metavar="N|all",
        default=None,
        help="let a full catalog remove up to N items (or all) from the new snapshot; by default a "
        "catalog that would remove more than catalog.max_removed_share (half) of a feature's "
        "items, or all of them, is refused (an empty catalog always is)",
    )
    p.add_argument(
        "--delta",
        action="store_true",
        help="CATALOG is a delta: upserts and deletions (column _op: upsert|delete); items it does "
        "not mention stay (default: a full catalog; items it lacks leave the new snapshot)",
    )
    # `--report=~/r.json` reaches us unexpanded (the shell expands ~ only at a word's start)
    p.add_argument("--report", metavar="FILE", type=os.path.expanduser, help="also write the job report as JSON")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be encoded (per feature: new, changed, dependent) and removed; start "
        "no encoder, write nothing",
    )
    p.add_argument(
        "--encode-log",
        metavar="DIR",
        type=os.path.expanduser,
        default=None,
        help="an audit: encoder actors append the ids they encode to "
        "DIR/<feature>.<run>.encoded.<node>-<pid>.log, decode tasks the media files they read "
        "to DIR/<feature>.<run>.reads.<pid>.log (DIR on each node's own disk)",
    )
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    p.add_argument("--verbose", action="store_true", help="show Ray worker logs and debug messages")

    s = sub.add_parser("show", help="features, versions, counts, errors and snapshots of a store")
    s.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    s.add_argument("--snapshot", type=int, default=None, help="show this snapshot (default: the latest)")
    s.add_argument("--json", action="store_true", help="print the snapshot document as JSON")
    s.add_argument(
        "--plots",
        metavar="DIR",
        default=None,
        help="also write plots as PNG here: semantic-ID code usage and graph in-degrees",
    )

    sub.add_parser("snapshots", help="list the store's snapshots (* pinned)").add_argument(
        "store", help="the store: a folder, or an s3:// gs:// az:// URI"
    )
    for verb, text in (("pin", "keep snapshot N through prunes"), ("unpin", "let prune remove snapshot N")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
        p.add_argument("snapshot", type=int, help="the snapshot's number (itemlens snapshots lists them)")
    p = sub.add_parser("prune", help="delete all but the newest K snapshots (and the pinned ones)")
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument(
        "--keep",
        type=_at_least(1),
        required=True,
        metavar="K",
        help="keep the newest K snapshots (and the pinned ones); K >= 1",
    )
    p = sub.add_parser("index", help="build a vector index on a feature and measure its recall@10")
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument("feature", help="a pooled vector feature (name, or name@vN)")
    p.add_argument("--kind", default="IVF_PQ", choices=["IVF_PQ", "IVF_HNSW_SQ"])
    p.add_argument(
        "--num-partitions", type=_at_least(1), default=None, help="IVF partitions (default: about sqrt(rows))"
    )
    p.add_argument(
        "--num-sub-vectors",
        type=_at_least(1),
        default=None,
        help="PQ sub-vectors (default: 16 or 8 values each, at least 8 where the size allows)",
    )
    from itemlens.store.exports import export_formats
    from itemlens.store.exports.models import model_names

    p = sub.add_parser(
        "export",
        help="write features, semantic IDs or graphs in the files recommender code reads",
        description="Rows follow the order of your own data (--inter, --ids); see docs/exports.md.",
    )
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument(
        "--format",
        choices=export_formats(),
        default=None,
        help="the file format (default with --for: mmrec, the features and the model's graph files)",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--feature",
        action="extend",
        nargs="+",
        default=None,
        metavar="[ROLE=]NAME",
        help="features to export, ROLE=NAME to write NAME as ROLE (mmrec: --feature image=clip_vitl "
        "text=minilm writes image_feat.npy, text_feat.npy); default all, for mmrec image and text",
    )
    p.add_argument(
        "--ids",
        default=None,
        metavar="FILE",
        help="the rows' item ids: a list (one per line), a CSV/TSV with a header (--ids-column), or "
        "MMRec's i_id_mapping.csv (asin, itemID)",
    )
    p.add_argument("--ids-column", default=None, metavar="NAME", help="the id column of a CSV/TSV --ids file")
    p.add_argument(
        "--inter",
        default=None,
        metavar="FILE",
        help="align rows to the item index of an interaction file: an MMRec .inter (itemID, mapped by "
        "the i_id_mapping.csv beside it or --ids), a RecBole .inter, or a table (--item-column)",
    )
    p.add_argument("--item-column", default=None, metavar="NAME", help="the item column of an --inter table")
    p.add_argument(
        "--store-order",
        action="store_true",
        help="keep the store's item index as the row order (mmrec, mmrec-adj, sid-grid refuse to guess it)",
    )
    p.add_argument(
        "--fill",
        default=None,
        help="write rows without a value (unknown ids, items without one) with this value: a number or "
        "nan for features, a negative integer for semantic IDs, 0 for graphs (default: refuse)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="feature dtype (default float32)")
    p.add_argument(
        "--semantic-ids",
        action="append",
        default=None,
        metavar="NAME",
        help="semantic IDs to export with a sid-* format (repeat; default all)",
    )
    p.add_argument(
        "--dedup",
        default=None,
        choices=["grid", "store"],
        help="sid-grid's last row: GRID's numbering (default) or the store's suffix",
    )
    p.add_argument(
        "--graph",
        action="append",
        default=None,
        metavar="NAME",
        help="graphs to export with pyg, scipy-npz or mmrec-adj (repeat; default all)",
    )
    p.add_argument("--preset", default=None, help="graph normalization preset (default: the definition's)")
    p.add_argument(
        "--for",
        dest="model",
        default=None,
        choices=model_names(),
        metavar="MODEL",
        help=f"also write the graph files this MMRec model caches ({', '.join(model_names())})",
    )
    p.add_argument(
        "--model-param",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a graph parameter of the --for model, by its MMRec config key (knn_k=10, "
        "mm_image_weight=0.1; a comma list writes one file per value)",
    )
    p.add_argument("--snapshot", type=int, default=None)
    p = sub.add_parser("graph", help="build or refresh the kNN item graphs a configuration defines")
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument("--config", required=True, help="YAML configuration with a graphs: section")
    p.add_argument("--name", action="append", default=None, help="only this graph (repeat; default all)")
    p.add_argument("--rebuild", action="store_true", help="rebuild every list instead of refreshing")
    p.add_argument(
        "--address", default=None, help="run on this Ray cluster (default: RAY_ADDRESS if set, else in this process)"
    )
    p = sub.add_parser("semantic-ids", help="train or refresh the semantic IDs a configuration defines")
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument(
        "--address", default=None, help="run on this Ray cluster (default: RAY_ADDRESS if set, else in this process)"
    )
    p.add_argument("--config", required=True, help="YAML configuration with a semantic_ids: section")
    p.add_argument("--name", action="append", default=None, help="only this definition (repeat; default all)")
    p.add_argument(
        "--retrain", action="store_true", help="train a new version even if the definition and inputs are unchanged"
    )
    p = sub.add_parser(
        "browse", help="a local web page of the items, their neighbours, captions, semantic IDs and errors (read-only)"
    )
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument("--snapshot", type=int, default=None, help="browse this snapshot (default: the latest)")
    p.add_argument("--port", type=_at_least(1, 65535), default=8765)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default loopback only; another address shows the catalog's media to "
        "anyone who can reach it)",
    )
    p.add_argument(
        "--catalog",
        default=None,
        help="read catalog fields and media from this catalog instead of the one the snapshot records",
    )
    p.add_argument("--id-column", default=None, help="the catalog's id column (default: as recorded, else item_id)")
    p.add_argument(
        "--catalog-format",
        choices=["parquet", "jsonl", "csv"],
        default=None,
        help="the --catalog's format, where its name does not tell (a folder on object storage)",
    )
    p = sub.add_parser(
        "diff",
        help="per item, how much its top-k neighbours change between two feature versions "
        "or snapshots (Jaccard@k, Spearman's rho of the shared ones)",
    )
    p.add_argument("store", help="the store: a folder, or an s3:// gs:// az:// URI")
    p.add_argument("a", help="NAME@vN (a feature version), NAME@sN (the feature in snapshot N) or NAME@vN@sN")
    p.add_argument("b", help="the other side, written the same way")
    p.add_argument("--k", type=_at_least(1), default=10, help="neighbours per item (default 10)")
    p.add_argument("--snapshot", type=int, default=None, help="snapshot of the sides without @sN (default: the latest)")
    p.add_argument(
        "--sample",
        type=_at_least(1),
        default=None,
        help="compare this many items drawn at random (each against all items) instead of every item",
    )
    p.add_argument("--movers", type=_at_least(0), default=10, help="how many of the items that moved most to print")
    p.add_argument("--out", default=None, help="write diff.json, items.csv and histogram.png to this folder")
    for p in sub.choices.values():
        if "--wait-for-lock" not in p._option_string_actions and p.prog.split()[-1] in (
            "pin",
            "unpin",
            "prune",
            "index",
            "semantic-ids",
            "graph",
        ):
            p.add_argument(
                "--wait-for-lock",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="wait this long for another writer to finish (default: fail at once)",
            )
    return parser


def _at_least(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high]; anything else is argparse's usage error."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range ({low} or more{f', {high} at most' if high is not None else ''})"
            )
        return value

    whole.__name__ = "int"  # argparse names the type in its messages
    return whole


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {
            "ingest": _ingest,
            "show": _show,
            "snapshots": _snapshots,
            "pin": _pin,
            "unpin": _pin,
            "prune": _prune,
            "index": _index,
            "export": _export,
            "semantic-ids": _semantic_ids,
            "graph": _graph,
            "browse": _browse,
            "diff": _diff,
        }[args.command](args)
    # OSError: a path given that cannot be used as asked (an existing file as --out ...)
    except (ItemlensError, OSError) as exc:
        print(f"itemlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("itemlens: interrupted; staged work is kept and the next run resumes it", file=sys.stderr)
        return 130


def _ingest(args) -> int:
    from itemlens.workflows.ingest import ingest
    from itemlens.workflows.plan import plan
    from itemlens.workflows.runtime import configure_logging, quiet_ray_data_actor_warning

    configure_logging(args.verbose)
    if args.report:
        _check_writable(args.report)
    if args.dry_run:
        report = plan(
            args.catalog,
            args.config,
            args.store,
            address=args.address,
            lock_wait=args.wait_for_lock,
            retry_errors=args.retry_errors,
            delta=args.delta,
            allow_removals=args.allow_removals,
        )
        print(report.summary())
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report.to_doc(), f, indent=2)
        return 0
    quiet = contextlib.nullcontext() if args.verbose else quiet_ray_data_actor_warning()
    with quiet:
        report = ingest(
            args.catalog,
            args.config,
            args.store,
            address=args.address,
            lock_wait=args.wait_for_lock,
            retry_errors=args.retry_errors,
            progress=False if args.no_progress else None,
            log_to_driver=args.verbose,
            delta=args.delta,
            encode_log=args.encode_log,
            allow_removals=args.allow_removals,
        )
    print(report.summary())
    if args.report:
        with open(args.report, "w") as f:
            json.dump({**report.to_doc(), "snapshot": report.snapshot, "store": report.store}, f, indent=2)
    return 0


def _check_writable(path: str) -> None:
    """A report file that cannot be written is an error before the job, not a traceback after it
    published (the folder must exist, and the file be writable where it does)."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ConfigError(f"--report {path}: is a folder; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"--report {path}: folder {folder} does not exist")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ConfigError(f"--report {path}: not writable")


def _snapshots(args) -> int:
    import itemlens

    for snap in itemlens.connect(args.store).snapshots():
        marker = "*" if snap["pinned"] else " "
        features = ", ".join(f"{k}@{v}" for k, v in snap["features"].items())
        print(
            f"{marker}{snap['snapshot_id']:>5}  {snap['created_at']:%Y-%m-%d %H:%M:%S}  {features}  {snap['summary']}"
        )
    print("(* pinned: kept by itemlens prune)")
    return 0


def _pin(args) -> int:
    from itemlens.store.writer import StoreWriter

    command = f"itemlens {args.command}"
    with StoreWriter.open(args.store, lock_wait=args.wait_for_lock, command=command, create=False) as writer:
        if args.command == "pin":
            writer.pin(args.snapshot)
        elif not writer.unpin(args.snapshot):
            print(f"snapshot {args.snapshot} was not pinned")
            return 0
    print(f"snapshot {args.snapshot} {'pinned' if args.command == 'pin' else 'unpinned'}")
    return 0


def _prune(args) -> int:
    from itemlens.store.writer import StoreWriter

    with StoreWriter.open(args.store, lock_wait=args.wait_for_lock, command="itemlens prune", create=False) as writer:
        report = writer.prune(args.keep)
    print(
        f"kept snapshots {report['kept']} (pinned: {report['pinned']}); dropped {report['dropped']}; "
        f"{report['versions_deleted']} table versions and {len(report['tables_dropped'])} tables deleted"
    )
    return 0


def _index(args) -> int:
    import itemlens

    params = {
        k: v
        for k, v in (("num_partitions", args.num_partitions), ("num_sub_vectors", args.num_sub_vectors))
        if v is not None
    }
    info = itemlens.connect(args.store).create_index(args.feature, args.kind, lock_wait=args.wait_for_lock, **params)
    print(
        f"{args.feature}: {info['kind']} {info['params']} on {info['rows']} rows in {info['build_seconds']} s; "
        f"recall@10 against exact search: {info['recall_at_10']}"
    )
    return 0


def _export(args) -> int:
    """A thin layer over Lens.export: parse the values, print its report."""
    import itemlens
    from itemlens.errors import ConfigError

    if args.format is None and args.model is None:
        raise ConfigError("name the format with --format (or a model with --for)")
    fill = None
    if args.fill is not None:
        try:
            fill = float(args.fill)
        except ValueError:
            raise ConfigError(f"--fill {args.fill!r}: a number or nan") from None
        fill = int(fill) if fill.is_integer() else fill
    features = None
    if args.feature:
        features = {}
        for item in args.feature:  # ROLE=NAME, or NAME (its role is its name)
            role, sep, name = item.partition("=")
            features[role if sep else item.split("@")[0]] = name if sep else item
    params = {}
    for item in args.model_param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--model-param {item!r}: KEY=VALUE, e.g. knn_k=10")
        params[key.strip()] = value
    lens = itemlens.connect(args.store, snapshot=args.snapshot)
    report = lens.export(
        args.format or "mmrec",
        args.out,
        features=features,
        semantic_ids=args.semantic_ids,
        graphs=args.graph,
        ids=args.ids,
        ids_column=args.ids_column,
        inter=args.inter,
        item_column=args.item_column,
        store_order=args.store_order,
        fill=fill,
        dtype=args.dtype,
        model=args.model,
        model_params=params or None,
        preset=args.preset,
        dedup=args.dedup,
    )
    print(report.summary())
    return 0


def _semantic_ids(args) -> int:
    from itemlens.store.semantic_ids import build

    return _derive(
        args,
        "semantic_ids",
        "semantic IDs",
        lambda specs, options, runner: build(
            args.store,
            specs,
            retrain=args.retrain,
            lock_wait=args.wait_for_lock,
            storage_options=options,
            runner=runner,
        ),
    )


def _graph(args) -> int:
    from itemlens.store.graphs import build

    return _derive(
        args,
        "graphs",
        "graphs",
        lambda specs, options, runner: build(
            args.store,
            specs,
            rebuild=args.rebuild,
            lock_wait=args.wait_for_lock,
            storage_options=options,
            runner=runner,
        ),
    )


def _derive(args, section: str, what: str, build) -> int:
    """Build the definitions of a configuration section (all, or --name ones) and publish. The
    configuration may hold only that section: its input features are looked up in the store."""
    from itemlens.errors import ConfigError
    from itemlens.workflows.config import load_derived_config
    from itemlens.workflows.runtime import configure_logging

    configure_logging(False)
    cfg = load_derived_config(args.config)
    specs = getattr(cfg, section)
    names = args.name or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown or not names:
        raise ConfigError(
            f"{args.config} defines {what} {', '.join(specs) or 'none'}; not {', '.join(unknown) or 'any'}"
        )
    # on Ray (--address, or RAY_ADDRESS as under ray job submit): passes by blocks in Ray tasks
    from itemlens.workflows.derive import runner_for
    from itemlens.workflows.runtime import run_ray_step

    runner = runner_for(args.address)
    reports, snapshot = run_ray_step(lambda: build({n: specs[n] for n in names}, cfg.storage_options or None, runner))
    for r in reports.values():
        print(r.line())
    print(f"published snapshot {snapshot}" if snapshot else "nothing changed: no new snapshot")
    return 0


def _save_plot(folder: str, filename: str, png: bytes) -> str:
    import os

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, filename)
    with open(path, "wb") as f:
        f.write(png)
    return path


def _show(args) -> int:
    import itemlens

    lens = itemlens.connect(args.store, snapshot=args.snapshot)
    if args.json:
        print(lens.doc.model_dump_json(indent=2))
        return 0
    snapshots = lens.snapshots()
    print(f"store {lens.uri}")
    if not lens.snapshot:
        print("no snapshot yet: run `itemlens ingest` first")
        return 0
    latest = snapshots[-1]["snapshot_id"] if snapshots else lens.snapshot
    print(f"snapshot {lens.snapshot} of {latest}, created {lens.doc.created_at}")
    catalog = lens.doc.catalog
    if catalog.get("uri"):
        print(f"catalog {catalog['uri']} ({catalog.get('items')} items, digest {catalog.get('digest')})")
    if catalog.get("delta"):
        d = catalog["delta"]
        print(f"then delta {d['uri']} ({d['upserts']} upserts, {d['deletions']} deletions)")
    print(f"items known to the store: {lens.items().num_rows}")
    print()
    print(f"{'feature':<22}{'encoder':<23}{'dim':>5} {'dtype':<8}{'values':>8}{'errors':>8}{'absent':>8}  model")
    for f in lens.features():
        name = f.qualified + ("*" if f.current else "")
        weights = f.spec.get("checkpoint") or f.spec.get("pretrained") or ""
        model = f.model + (f" ({weights})" if weights and weights != f.model else "")
        dtype = f.dtype if f.kind == "vector" else "text"  # a caption feature holds strings
        print(f"{name:<22}{f.encoder:<23}{f.dim or '-':>5} {dtype:<8}{f.count:>8}{f.errors:>8}{f.absent:>8}  {model}")
        if f.note:
            print(f"{'':<22}note: {f.note}")
        path = (lens.doc.features[f.name].versions[f.version].encoder or {}).get("path")
        if f.kind == "caption" and path:  # how the captioner reads pictures, decided when it loaded
            from itemlens.extractors.encoders.caption import describe_path

            print(f"{'':<22}caption path: {describe_path(path)}")
        if f.index:
            print(
                f"{'':<22}index: {f.index['kind']} {f.index.get('params', {})}, {f.index.get('rows')} rows, "
                f"recall@10 {f.index.get('recall_at_10')} (against exact search)"
            )
    print("(* = current version; older versions stay readable as name@vN; absent = items without such an input)")
    if lens.doc.semantic_ids:
        print()
        print(
            f"{'semantic IDs':<22}{'method':<11}{'codes':<9}{'items':>8}{'retired':>9}{'collisions':>12}"
            f"{'largest':>9}{'recon err':>11}  inputs"
        )
        for name, entry in sorted(lens.doc.semantic_ids.items()):
            for label, v in sorted(entry.versions.items(), key=lambda kv: int(kv[0][1:])):
                m = v.metrics
                shape = f"{v.spec['levels']}x{v.spec['codebook_size']}" + ("+s" if v.width > v.spec["levels"] else "")
                current = "*" if label == entry.current else ""
                print(
                    f"{v.qualified + current:<22}{v.spec['method']:<11}{shape:<9}{v.count:>8}{v.retired:>9}"
                    f"{m.get('collision_rate', 0):>12.2%}{m.get('largest_group', 0):>9}"
                    f"{m.get('reconstruction_error', float('nan')):>11.4f}  {', '.join(v.inputs.values())}"
                )
                if m.get("utilization"):
                    print(
                        f"{'':<22}per level: utilization {', '.join(f'{u:.0%}' for u in m['utilization'])}; "
                        f"perplexity {', '.join(f'{p:g}' for p in m['perplexity'])}"
                    )
                if args.plots and label == entry.current:
                    path = _save_plot(args.plots, f"{name}_code_usage.png", lens.semantic_id_plot(name))
                    print(f"{'':<22}code usage plot: {path}")
    if lens.doc.graphs:
        print()
        print(
            f"{'graph':<22}{'k':>4}  {'preset':<11}{'items':>8}  "
            "inputs (weight): edges, mutual, in-degree min/median/max"
        )
        for name, entry in sorted(lens.doc.graphs.items()):
            for label, g in sorted(entry.versions.items(), key=lambda kv: int(kv[0][1:])):
                current = "*" if label == entry.current else ""
                method = g.spec.get("method", "exact")
                if method == "approximate":
                    method += f", recall@{g.spec['k']} {g.stats.get('recall_at_k', float('nan')):.3f} against exact"
                print(f"{g.qualified + current:<22}{g.spec['k']:>4}  {g.spec['preset']:<11}{g.count:>8}  ({method})")
                features = g.spec["features"]
                weights = features if isinstance(features, dict) else dict.fromkeys(features, 1.0)
                for feature, s in g.stats.get("inputs", {}).items():
                    d = s["in_degree"]
                    print(
                        f"{'':<22}{feature} ({weights.get(feature, 1.0):g}): {s['edges']} edges, "
                        f"{s['mutual_share']:.0%} mutual, in-degree {d['min']}/{d['median']:g}/{d['max']} "
                        f"({d['zero']} items never a neighbour)"
                    )
                if args.plots and label == entry.current:
                    path = _save_plot(args.plots, f"{name}_degrees.png", lens.graph_plot(name))
                    print(f"{'':<22}degree plot: {path}")
    errors = lens.errors()
    if errors.num_rows:
        print()
        print("errors (feature, stage: count; first reason):")
        rows = errors.to_pylist()
        counts = Counter((r["feature"], r["stage"]) for r in rows)
        first = {}
        for r in rows:
            first.setdefault((r["feature"], r["stage"]), f"{r['item_id']}: {r['reason']}")
        for (feature, stage), n in sorted(counts.items()):
            print(f"  {feature}, {stage}: {n}; e.g. {first[(feature, stage)]}")
    report = lens.doc.report
    if report:
        print()
        print(f"last job: {report.get('summary', '')}")
        timings = report.get("timings", {})
        if timings:
            print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print()
    print("snapshots (> this one, * pinned):")
    for snap in snapshots[-10:]:
        marker = ">" if snap["snapshot_id"] == lens.snapshot else ("*" if snap["pinned"] else " ")
        features = ", ".join(f"{k}@{v}" for k, v in snap["features"].items())
        print(
            f" {marker}{snap['snapshot_id']:>4}  {snap['created_at']:%Y-%m-%d %H:%M:%S}  {features}  {snap['summary']}"
        )
    return 0


def _browse(args) -> int:
    from itemlens.workflows.browse import serve

    serve(
        args.store,
        snapshot=args.snapshot,
        host=args.host,
        port=args.port,
        catalog=args.catalog,
        id_column=args.id_column,
        catalog_format=args.catalog_format,
    )
    return 0


def _diff(args) -> int:
    from itemlens.store.diff import diff_store

    result = diff_store(args.store, args.a, args.b, k=args.k, snapshot=args.snapshot, sample=args.sample)
    s = result.summary()
    j, r = s["jaccard"], s["spearman"]
    print(
        f"{result.a} vs {result.b}: top-{result.k} neighbours of {s['items_compared']} items"
        + (" (a sample)" if result.sampled else "")
        + f", searched among the {s['items_in_both']} items both have "
        f"({s['only_in_a']} only in A, {s['only_in_b']} only in B, left out)"
    )
    if j["items"]:
        q = j["quantiles"]
        print(
            f"Jaccard@{result.k}: mean {j['mean']:.3f}, median {j['median']:.3f}, p10 {q['0.1']:.3f}, "
            f"p90 {q['0.9']:.3f}; {s['identical_sets']} items keep the same set, {s['disjoint_sets']} share none"
        )
    if s["without_neighbours"]:
        print(f"{s['without_neighbours']} items have no neighbour on either side (zero vectors)")
    if r["items"]:
        print(
            f"Spearman's rho of the shared neighbours: mean {r['mean']:.3f}, median {r['median']:.3f} "
            f"({r['items']} items with 2 or more shared)"
        )
    print("moved most (item, Jaccard, rho, shared):")
    for m in result.movers(args.movers):
        rho = f"{m['spearman']:.3f}" if m["spearman"] is not None else "-"
        jac = f"{m['jaccard']:.3f}" if m["jaccard"] is not None else "-"
        print(f"  {m['item_id']}  {jac}  {rho}  {m['shared']}")
    if args.out:
        print(f"wrote {', '.join(result.write(args.out))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
