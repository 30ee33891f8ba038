"""kNN item graphs: itemlens' exact blocked kNN (with bf16 screening where the CPU has AMX, and
with fp32 products only; numba selection kernels either way) against faiss IndexFlatIP, in one
run; a 2% refresh against a full rebuild; the approximate path against exact on a sample of rows.

    .venv/bin/python bench/graphs.py [--quick] [--skip-approx]

Each measurement runs in its own process so that its peak memory (max RSS) is its own. Data:
seeded Gaussian vectors (clustered for the approximate path), k = 10, self-loops included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def data(n: int, d: int, clustered: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    if clustered:
        centers = rng.normal(size=(1000, d))
        return (centers[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return rng.normal(size=(n, d)).astype(np.float32)


def run_one(kind: str, n: int, d: int) -> dict:
    """In a child process: one measurement, its time and the process's peak RSS."""
    import resource

    import faiss  # noqa: F401  (imported before the clock starts, as in a running process)
    import torch  # noqa: F401

    from itemlens.store.graphs import knn

    x = data(n, d, clustered=kind.startswith("approx"))
    out: dict = {"kind": kind, "n": n, "d": d}
    if kind.startswith("itemlens"):  # numba loads its kernels on first use: before the clock
        knn.exact_knn(data(300, d), 10, self_loops=True, block=64, screen=None if kind == "itemlens" else False)
    t = time.perf_counter()
    if kind == "faiss":
        import faiss

        u, _ = knn.unit(x)
        index = faiss.IndexFlatIP(d)
        index.add(u)
        index.search(u, 10)
    elif kind == "itemlens":
        knn.exact_knn(x, 10, self_loops=True)
        out["bf16_screening"] = knn.has_amx()
    elif kind == "itemlens-fp32":
        knn.exact_knn(x, 10, self_loops=True, screen=False)
    elif kind == "approx":
        found, _, params = knn.approximate_knn(x, 10, self_loops=True)
        out["seconds"] = time.perf_counter() - t
        out["params"] = params
        picks = np.random.default_rng(1).choice(n, 1000, replace=False)
        exact, _ = knn.knn_rows(x, picks, 10, self_loops=True)
        out["recall_at_10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[picks], exact)]))
    elif kind == "refresh":
        out.update(refresh(x))
    out.setdefault("seconds", time.perf_counter() - t)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["input_mib"] = x.nbytes / 2**20
    return out


def refresh(x: np.ndarray, rebuilds: int = 2) -> dict:
    """Change 2% of the items of a stored graph; refresh it, and rebuild it, through the store.
    Each run starts from a copy of the same changed store; refreshes and rebuilds alternate,
    and the ratio is of the medians."""
    import shutil
    import tempfile

    import itemlens
    from itemlens.store.graphs import build
    from itemlens.store.writer import StoreWriter

    n = len(x)
    ids = [f"i{i}" for i in range(n)]
    spec = {"g": {"features": ["emb"], "k": 10}}
    with tempfile.TemporaryDirectory() as root:
        folder, changed_store = os.path.join(root, "lens"), os.path.join(root, "changed")
        StoreWriter.open(folder).close()
        lens = itemlens.connect(folder)
        lens.put_vectors("emb", ids, x)
        t = time.perf_counter()
        build(folder, spec)
        first = time.perf_counter() - t
        changed = np.random.default_rng(2).choice(n, n // 50, replace=False)
        lens.put_vectors("emb", [ids[i] for i in changed], data(len(changed), x.shape[1]) + 0.1)
        shutil.copytree(folder, changed_store)

        def timed(rebuild: bool):
            shutil.rmtree(folder)
            shutil.copytree(changed_store, folder)
            t = time.perf_counter()
            reports, _ = build(folder, spec, rebuild=rebuild)
            return time.perf_counter() - t, reports["g"]

        # interleaved, so that both see the same machine (its speed drifts by up to 2x here)
        refreshed, rebuilt = [timed(False)], []
        for _ in range(rebuilds):
            rebuilt.append(timed(True))
            refreshed.append(timed(False))
    r = refreshed[-1][1]
    refresh_s, rebuild_s = float(np.median([s for s, _ in refreshed])), float(np.median([s for s, _ in rebuilt]))
    return {
        "first_build_seconds": first,
        "refresh_seconds": refresh_s,
        "rebuild_seconds": rebuild_s,
        "refresh_runs": [round(s, 3) for s, _ in refreshed],
        "rebuild_runs": [round(s, 3) for s, _ in rebuilt],
        "refresh_over_rebuild": refresh_s / rebuild_s,
        "recomputed": r.recomputed,
        "merged": r.merged,
        "refresh_stages": {k: round(v, 3) for k, v in r.seconds.items()},
        "rebuild_stages": {k: round(v, 3) for k, v in rebuilt[-1][1].seconds.items()},
    }


def child(kind: str, n: int, d: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n), str(d)], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--skip-approx", action="store_true", help="leave out the approximate path at 1,000,000")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    scale = 10 if args.quick else 1
    results = []
    print(f"{os.cpu_count()} CPUs")
    for n, d in ((100_000 // scale, 384), (300_000 // scale, 128)):
        for kind in ("faiss", "itemlens", "itemlens-fp32"):
            r = child(kind, n, d)
            results.append(r)
            print(json.dumps(r))
        theirs, ours, plain = results[-3], results[-2], results[-1]
        print(f"  fp32 products only: {plain['seconds']:.1f} s = {plain['seconds'] / theirs['seconds']:.2f} of faiss")
        print(
            f"exact kNN {n} x {d}: itemlens {ours['seconds']:.1f} s / faiss {theirs['seconds']:.1f} s = "
            f"{ours['seconds'] / theirs['seconds']:.2f}; peak RSS {ours['peak_rss_mib']:.0f} / "
            f"{theirs['peak_rss_mib']:.0f} MiB (input {ours['input_mib']:.0f} MiB)"
        )
    r = child("refresh", 100_000 // scale, 128)
    results.append(r)
    print(json.dumps(r))
    if not args.skip_approx:
        r = child("approx", 1_000_000 // scale, 128)
        results.append(r)
        print(json.dumps(r))
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "graphs.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
