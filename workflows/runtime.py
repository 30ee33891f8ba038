"""Starting or joining Ray, and what the cluster offers.

``itemlens ingest`` is the same command on a laptop and as the entrypoint of ``ray job
submit``: without an address it starts a local Ray (or joins the one ``RAY_ADDRESS`` names,
as a Ray job does). A local Ray inherits the variables that steer model loading
(``HF_HUB_OFFLINE`` ...) through its runtime environment; on a cluster they belong in the
job's runtime environment (see cluster/README.md).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

# Variables the workers need to load models the way the driver would.
PROPAGATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "LANCE_LOG")


@dataclass(frozen=True)
class RayRuntime:
    started_here: bool      # False when joining a running Ray (a cluster, a job, a test session)
    seconds: float          # time to start or join
    cpus: float
    gpus: float
    node_cpus: float        # CPUs of the largest node
    nodes: int = 1          # alive nodes
    resources: dict = field(default_factory=dict)   # each resource's largest amount on one node

    def describe(self) -> str:
        where = "local Ray started" if self.started_here else "joined Ray"
        gpus = f"{self.gpus:g} GPU" if self.gpus else "no GPU"
        nodes = f"{self.nodes} nodes, " if self.nodes > 1 else ""
        return f"{where} in {self.seconds:.1f} s ({nodes}{self.cpus:g} CPUs, {gpus})"


def start_ray(address: str | None = None, *, log_to_driver: bool = False, progress: bool | None = None) -> RayRuntime:
    import ray
    import ray.data

    start = time.perf_counter()
    started_here = False
    if not ray.is_initialized():
        kwargs: dict = {"address": address, "log_to_driver": log_to_driver, "logging_level": logging.WARNING}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            started_here = True
            kwargs["include_dashboard"] = False
            env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
            if env:
                kwargs["runtime_env"] = {"env_vars": env}
        with warnings.catch_warnings():
            # ray.init starts its daemons with fork+exec; lance and lancedb (already opened by
            # the writer) warn on any fork, but the children exec at once and share nothing.
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
            ray.init(**kwargs)
    if not log_to_driver:
        # Ray Data prints an INFO line per dataset on the console; its log file keeps them.
        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":
                handler.setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if progress is None else progress
    resources = ray.cluster_resources()
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node: dict[str, float] = {}
    for node in alive:
        for name, amount in node.items():
            per_node[name] = max(per_node.get(name, 0.0), float(amount))
    return RayRuntime(started_here, time.perf_counter() - start,
                      float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), per_node.get("CPU", 0.0),
                      nodes=len(alive), resources=per_node)
