"""Derived artifacts on the Ray cluster: the runner that semantic IDs and graphs hand their
passes to when Ray runs (``itemlens semantic-ids --address``, ``itemlens graph --address``,
under ``ray job submit``, and the derive step of ``itemlens ingest``).

The algorithms stay in ``itemlens.store`` (a training task on a sample, blocks of items coded
with a frozen quantizer, an IVF index trained on a sample and searched by blocks of queries);
what is here is only how they are spread: each block a Ray task that reads its rows from
Lance itself, at most a few blocks in flight per CPU so that the driver receives small results
one at a time, and index shards as Ray actors spread over the nodes. The driver holds a few
integers per item (codes, item indexes, row addresses), never the vectors.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from itemlens.store.vectors import LocalRunner, Runner


class RayRunner(Runner):
    """Blocks as Ray tasks, shards as Ray actors (spread over the nodes)."""

    def __init__(self, *, in_flight: int | None = None):
        import ray

        resources = ray.cluster_resources()
        self.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        self.cpus = int(resources.get("CPU", 1))
        self.in_flight = in_flight or max(2, 2 * self.cpus)
        self.tasks = 0
        self._remote: dict[tuple, Any] = {}

    def _task(self, fn, cpus: float, gpus: float):
        import ray

        key = (fn, cpus, gpus)
        if key not in self._remote:
            self._remote[key] = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=2)(fn)
        return self._remote[key]

    def call(self, fn, *args, cpus=1, gpus=0):
        import ray

        self.tasks += 1
        return ray.get(self._task(fn, cpus, gpus).remote(*args))

    def map(self, fn, args, *, cpus=1, gpus=0):
        """Results in the order of ``args``, with at most ``in_flight`` tasks submitted ahead."""
        import ray

        remote = self._task(fn, cpus, gpus)
        pending: deque = deque()
        for a in args:
            pending.append(remote.remote(*a))
            self.tasks += 1
            if len(pending) >= self.in_flight:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def share(self, value):
        import ray

        return ray.put(value)

    def shards(self, cls, args, *, cpus: float = 0):
        import ray

        actor = ray.remote(num_cpus=cpus)(cls).options(scheduling_strategy="SPREAD")
        handles = [actor.remote(*a) for a in args]
        ray.get([h.ready.remote() for h in handles])  # built (each reads its rows) before any search
        self.tasks += len(handles)
        return handles

    def ask(self, shards, method, *args):
        return ask_actors(shards, method, *args)

    @property
    def shard_caller(self):
        return ask_actors

    def release(self, shards) -> None:
        import ray

        for handle in shards:
            ray.kill(handle)

    @property
    def where(self) -> str:
        return f"{self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus} CPUs"


def ask_actors(shards, method: str, *args) -> list[Any]:
    """Call ``method`` on every shard actor and wait for all (from a task or the driver)."""
    import ray

    return ray.get([getattr(s, method).remote(*args) for s in shards])


def runner_for(address: str | None = None) -> Runner:
    """Ray's runner when an address is given or RAY_ADDRESS is set (joining that cluster, as a
    ``ray job submit`` entrypoint does), else this process's."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return LocalRunner()
    from itemlens.workflows.runtime import start_ray

    start_ray(address, progress=False)
    return RayRunner()
