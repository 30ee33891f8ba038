"""Ray worker start-up on a local Ray: a job with a runtime_env of env_vars against one without.

A local Ray's workers inherit the driver's environment through the raylet, so itemlens starts
its local Ray with no runtime_env (workflows/runtime.py). The alternative, the obvious way to
hand HF_HUB_OFFLINE and the like to the workers, is ``runtime_env={"env_vars": {...}}``: then
Ray starts every worker through setup_worker.py, a Python process that imports Ray and execs
the worker, which imports it again. Every ingest starts workers (the encoder actors at least),
so the difference is paid per actor.

Each mode runs in a fresh process with a fresh local Ray: ACTORS actors are started one after
another (each on a new worker process) and each answers one call. Reported per mode: the wall
time of the actors' start-ups, the machine's busy CPU seconds meanwhile (all processes: driver,
daemons, workers), and the setup_worker.py processes seen.

    python bench/worker_start.py [--actors 8] [--repeats 3]

Figures go to stdout and bench/out/worker_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def _busy_jiffies() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def _setup_workers() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"setup_worker.py" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def one_mode(mode: str, actors: int) -> dict:
    """In this process: a local Ray (with or without a runtime_env) and ``actors`` actor starts."""
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]}} if mode == "runtime_env" else None
    ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self) -> str | None:
            return os.environ.get("HF_HUB_OFFLINE")

    ray.get(Probe.remote().env.remote())  # Ray's own first-use costs, outside the measurement
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_setup_workers())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    total0, idle0 = _busy_jiffies()
    t = time.perf_counter()
    values = []
    for _ in range(actors):
        probe = Probe.remote()
        values.append(ray.get(probe.env.remote()))
        ray.kill(probe)
    wall = time.perf_counter() - t
    total1, idle1 = _busy_jiffies()
    done.set()
    watcher.join()
    ray.shutdown()
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "mode": mode,
        "actors": actors,
        "wall_s": wall,
        "busy_cpu_s": ((total1 - total0) - (idle1 - idle0)) / hz,
        "setup_worker_processes": len(seen),
        "workers_saw_HF_HUB_OFFLINE": sorted(set(map(str, values))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=["runtime_env", "inherited"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_mode(args.one, args.actors)))
        return
    runs: dict[str, list[dict]] = {"runtime_env": [], "inherited": []}
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    for _ in range(args.repeats):
        for mode in runs:  # alternating, so that drift on a shared machine hits both alike
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--actors", str(args.actors)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "runs": runs}
    for mode, rows in runs.items():
        wall = statistics.median(r["wall_s"] for r in rows) / args.actors
        cpu = statistics.median(r["busy_cpu_s"] for r in rows) / args.actors
        setups = statistics.median(r["setup_worker_processes"] for r in rows)
        result[mode] = {"wall_s_per_actor": wall, "busy_cpu_s_per_actor": cpu, "setup_worker_processes": setups}
        print(f"{mode:12s} per actor start: {wall:.2f} s wall, {cpu:.2f} CPU s; setup_worker.py processes: {setups:g}")
    for key in ("wall_s_per_actor", "busy_cpu_s_per_actor"):
        ratio = result["inherited"][key] / result["runtime_env"][key]
        result[f"{key}_ratio"] = ratio
        print(f"{key}: inherited / runtime_env = {ratio:.2f}x")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "worker_start.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
