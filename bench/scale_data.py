"""A store of N generated, clustered vectors (bench/scale.py's data), written chunk by chunk so
that making it needs no more memory than a chunk: item ids ``item000000000`` ..., one pooled
vector feature ``emb`` (float32, d dims) around 1,000 seeded centres.

    .venv/bin/python bench/scale_data.py STORE --items 1000000 --dim 128
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHUNK = 250_000
CENTRES = 1000


def ids(start: int, stop: int) -> pa.Array:
    return pa.array([f"item{i:09d}" for i in range(start, stop)], pa.string())


def vectors(start: int, stop: int, d: int, seed: int = 0) -> np.ndarray:
    """Rows start .. stop of the data set: the same values whatever the chunking (one
    generator per CHUNK-aligned block of rows)."""
    centres = np.random.default_rng(seed).normal(size=(CENTRES, d)).astype(np.float32)
    out = np.empty((stop - start, d), np.float32)
    at = start
    while at < stop:
        block = at // CHUNK
        rng = np.random.default_rng([seed, block + 1])
        base = block * CHUNK
        labels = rng.integers(0, CENTRES, CHUNK)
        noise = rng.normal(size=(CHUNK, d)).astype(np.float32)
        end = min(stop, base + CHUNK)
        rows = slice(at - base, end - base)
        out[at - start : end - start] = centres[labels[rows]] + 0.5 * noise[rows]
        at = end
    return out


def make_store(uri: str, n: int, d: int, *, seed: int = 0, name: str = "emb", log=print) -> None:
    """Write the store at ``uri`` (a new one) and publish one snapshot."""
    import itemlens
    from itemlens.store import lance_io
    from itemlens.store.layout import WORK_IDS_SCHEMA, staging_rows, staging_schema
    from itemlens.store.writer import StoreWriter

    itemlens.create(uri)
    t = time.perf_counter()
    with StoreWriter.open(uri, command="bench/scale_data.py") as writer:
        writer.reset_work_ids()
        work = []
        for start in range(0, n, CHUNK):
            chunk = ids(start, min(n, start + CHUNK))
            hashes = [
                int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "little", signed=True)
                for i in chunk.to_pylist()
            ]
            work += lance_io.write_fragments(
                pa.table({"item_id": chunk, "row_hash": pa.array(hashes, pa.int64())}, schema=WORK_IDS_SCHEMA),
                writer.work_ids_uri,
            )
        registration = writer.register_catalog_ids(work)
        log(f"registered {registration.seen:,} ids in {time.perf_counter() - t:.0f} s")
        spec = {"encoder": "external", "dim": d, "dtype": "float32", "data": f"clustered seed {seed}"}
        fingerprint = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:16]
        version = writer.resolve_version(
            name, fingerprint, spec, dtype="float32", pooling="mean", kind="vector", encoder={"encoder": "external"}
        )
        schema = staging_schema("float32", d, "mean")
        fragments = []
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            x = vectors(start, stop, d, seed)
            digests = [hashlib.sha256(row.tobytes()).hexdigest() for row in x]
            rows = staging_rows(
                schema,
                ids(start, stop),
                pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
                n_parts=np.ones(stop - start, np.int32),
                input_hash=pa.array(digests, pa.string()),
                fingerprint=fingerprint,
                run_id=writer.run_id,
            )
            fragments += lance_io.write_fragments(rows, writer.staging_uri(version))
        writer.commit_staged(version, fragments, schema)
        writer.merge_staged(version)
        log(f"wrote {n:,} x {d} vectors in {time.perf_counter() - t:.0f} s")
        writer.publish(catalog={"items": n}, report={"summary": f"bench/scale_data.py: {n:,} x {d}"})


def change(uri: str, share: float, d: int, *, seed: int = 1, name: str = "emb") -> list[str]:
    """Replace the vectors of a seeded ``share`` of the items (put_vectors); returns their ids."""
    import itemlens

    lens = itemlens.connect(uri)
    n = lens.items().num_rows
    picks = np.sort(np.random.default_rng(seed).choice(n, int(share * n), replace=False))
    changed = [f"item{i:09d}" for i in picks]
    x = vectors(0, len(picks), d, seed=seed + 100)
    spec = dict(lens.doc.feature_version(name).spec)
    for key in ("encoder", "dim", "dtype"):
        spec.pop(key, None)
    lens.put_vectors(name, changed, x, spec=spec)
    return changed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    make_store(args.store, args.items, args.dim)
