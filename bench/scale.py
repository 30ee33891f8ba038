"""Derived artifacts past one process's memory: semantic IDs and an approximate kNN graph of N
generated, clustered 128-d vectors, on a local Ray of worker nodes (the driver holds a few
integers per item) and, where it still fits, in one process (the single-process path), with
each run's wall time, the seconds of its passes and the driver's peak RSS.

    flock /tmp/itemlens-ray.lock .venv/bin/python bench/scale.py --items 1000000 --runner ray local
    flock /tmp/itemlens-ray.lock .venv/bin/python bench/scale.py --items 10000000 --runner ray --what sid

Each run is its own driver process (its peak RSS is its own), against a store made once by
bench/scale_data.py under bench/out/scale/ (``--keep`` keeps it; it is deleted otherwise).
The Ray cluster is a head with no CPUs (the driver's node: no task runs there) and ``--nodes``
worker nodes of one CPU each, started with ``ray start`` and stopped by process group.
Results are appended as JSON lines to bench/out/scale/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "scale")
PY = sys.executable
RAY = os.path.join(os.path.dirname(PY), "ray")

SID = {"features": ["emb"], "levels": 3, "codebook_size": 256, "seed": 0}
GRAPH = {"features": ["emb"], "k": 10, "method": "approximate", "nprobe": 8, "self_loops": True}

DRIVER = r"""
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
what, store, runner_kind, address, spec = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
t = time.perf_counter()
if runner_kind == "ray":
    import ray
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    from itemlens.workflows.derive import RayRunner
    runner = RayRunner()
else:
    from itemlens.store.vectors import LocalRunner
    runner = LocalRunner()
if what == "sid":
    from itemlens.store.semantic_ids import build
    reports, _ = build(store, {"sid": spec}, retrain=True, runner=runner)
    report = reports["sid"]
else:
    from itemlens.store.graphs import build
    reports, _ = build(store, {"g": spec}, rebuild=True, runner=runner)
    report = reports["g"]
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
memory = {k: status[k].strip() for k in ("VmHWM", "RssAnon", "RssFile", "RssShmem") if k in status}
doc = report.to_doc()
doc.pop("metrics", None) if what == "graph" else None
print("RESULT " + json.dumps({"wall_s": round(time.perf_counter() - t, 1), "ran_on": report.ran_on,
                              "driver_peak_mb": report.driver_peak_mb, "driver_memory_at_end": memory,
                              "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
                              "stats": {k: v for k, v in (report.metrics if what == "sid" else report.stats).items()
                                        if k in ("collision_rate", "reconstruction_error", "training_sample",
                                                 "recall_at_k", "mutual_share", "index", "reconstruction_items")}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head without CPUs and ``nodes`` worker nodes of one CPU, each a ``ray start --block``."""

    def __init__(self, nodes: int, object_store: int = 2 * 1024**3):
        self.port = _free_port()
        self.temp = tempfile.mkdtemp(prefix="rays", dir="/tmp")
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.procs = []
        self._start(
            ["--head", f"--port={self.port}", "--num-cpus=0", f"--temp-dir={self.temp}", "--include-dashboard=false"],
            object_store,
        )
        self.address = f"127.0.0.1:{self.port}"
        self._wait(1)
        for count in range(nodes):  # one at a time: nodes started together can fail to join
            self._start([f"--address={self.address}", "--num-cpus=1"], object_store)
            self._wait(count + 2)

    def _start(self, args, object_store):
        self.procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    *args,
                    "--num-gpus=0",
                    f"--object-store-memory={object_store}",
                    "--block",
                    "--disable-usage-stats",
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def _wait(self, count: int) -> None:
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = subprocess.run(
                [PY, "-c", probe, self.address], capture_output=True, text=True, env=self.env, check=False
            )
            if out.stdout.strip().isdigit() and int(out.stdout.strip()) >= count:
                return
            time.sleep(2)
        raise RuntimeError("the Ray nodes did not start")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
        time.sleep(3)
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def run(what: str, store: str, runner: str, address: str, spec: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    log = os.path.join(OUT, f"{what}-{os.path.basename(store)}-{runner}.log")  # progress, as it goes
    with open(log, "w") as err:
        proc = subprocess.run(
            [PY, "-c", DRIVER, what, store, runner, address, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            check=False,
            text=True,
            env=env,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{what} on {runner} failed: see {log}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--runner", nargs="+", default=["ray", "local"], choices=["ray", "local"])
    parser.add_argument("--what", nargs="*", default=["sid", "graph"], choices=["sid", "graph"])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--nprobe", type=int, default=GRAPH["nprobe"], help="IVF lists searched per item")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 x sqrt(items))")
    parser.add_argument("--keep", action="store_true", help="keep the generated stores")
    parser.add_argument("--client", action="store_true", help="also time lens.vectors / vectors_at lookups")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from bench.scale_data import make_store

    os.makedirs(OUT, exist_ok=True)
    cluster = Cluster(args.nodes) if "ray" in args.runner and args.what else None
    try:
        for n in args.items:
            store = os.path.join(OUT, f"s{n}")
            if not os.path.isdir(store):
                t = time.perf_counter()
                make_store(store, n, args.dim)
                print(f"made {n:,} x {args.dim} in {time.perf_counter() - t:.0f} s", flush=True)
            for what in args.what:
                for runner in args.runner:
                    spec = (
                        SID
                        if what == "sid"
                        else {**GRAPH, "nprobe": args.nprobe, **({"nlist": args.nlist} if args.nlist else {})}
                    )
                    result = run(what, store, runner, cluster.address if cluster else "", spec)
                    record = {
                        "items": n,
                        "dim": args.dim,
                        "what": what,
                        "runner": runner,
                        "nodes": args.nodes if runner == "ray" else 0,
                        "spec": spec,
                        **result,
                    }
                    print(json.dumps(record), flush=True)
                    with open(os.path.join(OUT, "results.jsonl"), "a") as f:
                        f.write(json.dumps(record) + "\n")
            if args.client:
                record = {"items": n, "what": "client", "batch": 1024, **client(store)}
                print(json.dumps(record), flush=True)
                with open(os.path.join(OUT, "results.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if cluster is not None:
            cluster.stop()


CLIENT = r"""
import json, sys, time
import numpy as np
import itemlens
store, batches, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
for label, cache in (("cached", 4 * 1024**3), ("beyond_cache", 1)):
    lens = itemlens.connect(store, cache_bytes=cache)
    items = lens.items()
    ids = items.column("item_id").to_pylist()
    index = items.column("item_index").to_numpy()
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(ids), batch) for _ in range(batches + 1)]
    lens.vectors("emb", [ids[i] for i in picks[0]])         # the id index (and the values, if cached) load once
    lens.vectors_at("emb", index[picks[0]])
    t = time.perf_counter()
    for p in picks[1:]:
        lens.vectors("emb", [ids[i] for i in p])
    by_id = (time.perf_counter() - t) / batches
    t = time.perf_counter()
    for p in picks[1:]:
        lens.vectors_at("emb", index[p])
    by_index = (time.perf_counter() - t) / batches
    out[label] = {"vectors_ms_per_batch": round(by_id * 1000, 2), "vectors_at_ms_per_batch": round(by_index * 1000, 2)}
values = np.zeros((len(ids), 128), np.float32)
t = time.perf_counter()
for p in picks[1:]:
    values[p]
out["numpy_gather_ms_per_batch"] = round((time.perf_counter() - t) / batches * 1000, 3)
print("RESULT " + json.dumps(out))
"""


def client(store: str, batches: int = 50, batch: int = 1024) -> dict:
    """Training-loop lookups: lens.vectors (ids) and lens.vectors_at (item indexes), with the table
    cached and beyond the reader's cache (rows read from Lance by address), against numpy's gather."""
    proc = subprocess.run(
        [PY, "-c", CLIENT, store, str(batches), str(batch)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT ") :])


if __name__ == "__main__":
    main()
