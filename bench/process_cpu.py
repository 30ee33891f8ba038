"""Where a command's CPU goes, by the role of each process it and Ray start: encoder actors,
other Ray workers, Ray's daemons, `itemlens` commands, the test processes.

Runs COMMAND and, every second while it runs, reads every process's CPU time (user + system)
from ``/proc/PID/stat``; a process is told apart from a later one with the same pid by its start
time. Each process gets a role from its command line; a Ray worker's role is the last title Ray
gave it other than ``ray::IDLE`` (``ray::MapWorker(MapBatches(EncodeBatches))`` is an encoder
actor, for instance). Processes that were already running count only what they used while the
command ran. A process that lives less than a second can be missed, and the last second of each
one is (its CPU time is read at most a second before it ends): the totals are a lower bound,
good for shares. Linux only.

    python bench/process_cpu.py -- .venv/bin/python -m pytest tests/test_refresh.py

It prints a table (CPU seconds and processes per role, largest first) and writes it to
bench/out/process_cpu.json. `accton` (process accounting) gives exact totals where it is
installed and the user is root; this needs neither.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TICKS = os.sysconf("SC_CLK_TCK")

#: (role, substring of the command line), first match wins; raylet, GCS and Ray workers come first
DAEMONS = (
    ("ray: dashboard", "dashboard/dashboard.py"),
    ("ray: dashboard", "ray-dashboard-"),
    ("ray: log monitor", "log_monitor.py"),
    ("ray: autoscaler monitor", "autoscaler/_private/monitor.py"),
    ("ray: client server", "ray.util.client.server"),
    ("ray: start", "bin/ray start"),
    ("pytest worker (xdist)", "import sys;exec(eval(sys.stdin.readline()))"),
    ("pytest", "-m pytest"),
    ("pytest", "bin/pytest"),
    ("itemlens command", "itemlens"),  # bin/itemlens, or python -c running its CLI (tests/test_scale.py)
    ("browser", "chromium"),
    ("browser", "chromedriver"),
)


def _role(cmdline: str) -> str:
    program = os.path.basename(cmdline.split(" ")[0])
    if program in ("raylet", "gcs_server"):  # by program: a raylet's arguments hold the worker command
        return f"ray: {program}"
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0]
        if title in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
            return f"ray: {title[5:]}"
        if "EncodeBatches" in title:
            return "ray worker: encoder actor"
        return f"ray worker: {title[5:].split('.')[0]}"
    if "default_worker.py" in cmdline or "setup_worker.py" in cmdline:
        return "ray worker: starting"
    for role, marker in DAEMONS:
        if marker in cmdline:
            return role
    return f"other: {program}" if cmdline else "other: kernel"


def _read(pid: str) -> tuple[str, float, str] | None:
    """(start time, CPU seconds, command line) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return fields[19], (int(fields[11]) + int(fields[12])) / TICKS, cmdline


def sample(command: list[str], period: float = 1.0) -> tuple[int, dict[str, list[float]], float]:
    """Run ``command``; return its exit code, {role: [CPU seconds, processes]} and its wall time."""
    seen: dict[tuple[str, str], list] = {}  # (pid, start) -> [role, cpu now, cpu at first sight]

    def scan(first: bool) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            got = _read(pid)
            if got is None:
                continue
            start, cpu, cmdline = got
            entry = seen.get((pid, start))
            if entry is None:
                seen[(pid, start)] = [_role(cmdline), cpu, cpu if first else 0.0]
                continue
            entry[1] = cpu
            role = _role(cmdline)
            # a Ray worker keeps the last role it had other than idle (its title changes)
            if entry[0].startswith("ray worker") and role.startswith("ray worker") and role != "ray worker: IDLE":
                entry[0] = role

    scan(first=True)
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(period)
        scan(first=False)
    wall = time.perf_counter() - started
    roles: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for role, cpu, before in seen.values():
        if cpu - before > 0:
            roles[role][0] += cpu - before
            roles[role][1] += 1
    return proc.returncode, dict(roles), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if not Path("/proc/self/stat").exists():
        sys.exit("process_cpu.py reads /proc: Linux only")
    code, roles, wall = sample(command)
    total = sum(cpu for cpu, _ in roles.values())
    rows = sorted(roles.items(), key=lambda kv: -kv[1][0])
    print(f"\n{' '.join(command)}\nexit code {code}, wall {wall:.0f} s, busy CPU {total:.0f} s\n")
    print(f"{'CPU s':>8} {'share':>6} {'procs':>6}  role")
    for role, (cpu, count) in rows:
        if cpu >= 0.5:
            print(f"{cpu:8.1f} {cpu / total:6.1%} {count:6d}  {role}")
    OUT.mkdir(exist_ok=True)
    result = {
        "command": command,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "busy_cpu_s": round(total, 1),
        "roles": {role: {"cpu_s": round(cpu, 1), "processes": count} for role, (cpu, count) in rows},
    }
    (OUT / "process_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
