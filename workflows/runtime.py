"""Starting or joining Ray, and what the cluster offers.

``itemlens ingest`` is the same command on a laptop and as the entrypoint of ``ray job
submit``: without an address it starts a local Ray (or joins the one ``RAY_ADDRESS`` names,
as a Ray job does). A local Ray's daemons, and so its workers, inherit the driver's
environment, the variables that steer model loading (``HF_HUB_OFFLINE`` ...) included; on a
cluster they belong in the job's runtime environment (see cluster/README.md).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from itemlens.errors import ItemlensError

log = logging.getLogger("itemlens")


@dataclass(frozen=True)
class RayRuntime:
    started_here: bool  # False when joining a running Ray (a cluster, a job, a test session)
    seconds: float  # time to start or join
    cpus: float
    gpus: float
    node_cpus: float  # CPUs of the largest node
    nodes: int = 1  # alive nodes
    resources: dict = field(default_factory=dict)  # each resource's largest amount on one node

    def describe(self) -> str:
        where = "local Ray started" if self.started_here else "joined Ray"
        gpus = f"{self.gpus:g} GPU" if self.gpus else "no GPU"
        nodes = f"{self.nodes} nodes, " if self.nodes > 1 else ""
        return f"{where} in {self.seconds:.1f} s ({nodes}{self.cpus:g} CPUs, {gpus})"


def start_ray(address: str | None = None, *, log_to_driver: bool = False, progress: bool | None = None) -> RayRuntime:
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        # Ray 2.60 turns token authentication on for a new local cluster and says so on every
        # start unless the mode is set. itemlens keeps it on and says so explicitly (a user's
        # own RAY_AUTH_MODE wins); Ray reads the mode when it is imported, hence here.
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    import ray.data

    start = time.perf_counter()
    started_here = False
    reap_orphaned_ray()
    if not ray.is_initialized():
        kwargs: dict = {"address": address, "log_to_driver": log_to_driver, "logging_level": logging.WARNING}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            # "local": a Ray of this job's own. Ray's default (None) would join whatever cluster
            # `ray start` last started on this machine, which is not what the command line says.
            kwargs["address"] = "local"
            started_here = True
            kwargs["include_dashboard"] = False
            # No runtime_env: the workers inherit this process's environment through the raylet
            # (HF_HUB_OFFLINE and the like included). A job-level runtime_env, even of env_vars
            # alone, starts every worker through Ray's setup_worker.py, a second Python process
            # that imports Ray before the worker itself does (bench/worker_start.py).
        with warnings.catch_warnings():
            # ray.init starts its daemons with fork+exec; lance and lancedb (already opened by
            # the writer) warn on any fork, but the children exec at once and share nothing.
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
            ray.init(**kwargs)
        if started_here:
            _record_local_ray()
    if not log_to_driver:
        # Ray Data prints an INFO line per dataset on the console, and an ERROR block with a
        # traceback when a task fails, which itemlens then reports as one message of its own
        # (an errors row, or a catalog or model error); its log file keeps them all, and
        # --verbose shows them.
        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":
                handler.setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if progress is None else progress
    resources = ray.cluster_resources()
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node: dict[str, float] = {}
    for node in alive:
        for name, amount in node.items():
            per_node[name] = max(per_node.get(name, 0.0), float(amount))
    return RayRuntime(
        started_here,
        time.perf_counter() - start,
        float(resources.get("CPU", 0)),
        float(resources.get("GPU", 0)),
        per_node.get("CPU", 0.0),
        nodes=len(alive),
        resources=per_node,
    )


# -- a killed driver's local Ray ---------------------------------------------------------------
#
# A local Ray started by ``ray.init`` shares the driver's fate only in part: when the driver is
# killed (SIGKILL, out of memory), the GCS and the raylet go, but some of its processes (the
# raylet's agents, workers) can linger, orphaned, depending on timing. Each driver that starts a
# local Ray records its session here; the next one (any itemlens job on this machine, same
# user) ends the processes of sessions whose driver is gone. Linux only (it reads /proc).

_RECORDS = Path(tempfile.gettempdir()) / f"itemlens-ray-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), which tells a reused pid apart; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _record_local_ray() -> None:
    import ray

    if not Path("/proc").is_dir():
        return
    try:
        node = ray._private.worker._global_node
        record = {
            "driver": os.getpid(),
            "started": _started(os.getpid()),
            "node_id": ray.get_runtime_context().get_node_id(),
            "session_dir": node.get_session_dir_path(),
        }
        _RECORDS.mkdir(parents=True, exist_ok=True)
        path = _RECORDS / f"{os.getpid()}.json"
        path.write_text(json.dumps(record))
    except Exception as exc:  # bookkeeping only: never fail a job over it
        log.debug("could not record the local Ray session: %s", exc)
        return
    atexit.register(lambda: path.unlink(missing_ok=True))


def reap_orphaned_ray() -> list[int]:
    """End the processes of local Ray sessions whose itemlens driver is gone; returns their pids."""
    if not _RECORDS.is_dir() or not Path("/proc").is_dir():
        return []
    killed: list[int] = []
    for path in _RECORDS.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _started(record["driver"]) == record.get("started"):
            continue  # its driver still runs
        for pid in _session_processes(record["node_id"], record["session_dir"]):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        path.unlink(missing_ok=True)
    if killed:
        log.info("ended %d Ray processes left by a killed itemlens job", len(killed))
    return killed


def _session_processes(node_id: str, session_dir: str) -> list[int]:
    """This user's processes that belong to a Ray node: by its node id in their environment, or
    its session folder on their command line."""
    marker_env, marker_cmd = f"RAY_NODE_ID={node_id}".encode(), session_dir.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                marker_env in (entry / "environ").read_bytes().split(b"\0")
                or marker_cmd in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


# -- Ray work and its errors ------------------------------------------------------------


def run_ray_step(step):
    """Run a step that executes Ray work; an itemlens error raised inside a Ray worker is
    re-raised here as itself, without the wall of Ray frames around it."""
    try:
        return step()
    except ItemlensError:
        raise
    except Exception as exc:
        cause = _itemlens_cause(exc)
        if cause is not None:
            log.debug("error raised in a Ray worker", exc_info=exc)
            raise cause from None
        raise


_REMOTE_ERROR = re.compile(r"itemlens\.errors\.(\w+): (.+)")


def _itemlens_cause(exc: BaseException) -> ItemlensError | None:
    """The itemlens error behind a Ray error. Ray keeps a remote exception's type and message
    only as text (in the traceback it carries), so the error is rebuilt from that text."""
    from itemlens import errors

    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ItemlensError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    for name, message in _REMOTE_ERROR.findall(str(exc)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, ItemlensError) and cls is not errors.UnknownItemsError:
            return cls(message.strip())
    return None


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("itemlens: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


# -- one line Ray prints that is not ours to act on ------------------------------------------------

#: Ray Data hands its actor pools their map function as an object reference, and Ray's core
#: worker then logs, once per process at ERROR level, that an actor with object-store
#: constructor arguments and restarts might not restart (ray-project/ray#53727). The reference
#: lives as long as the pipeline that owns it, so for Ray Data's own actors the warning does not
#: apply; users read it as a failure. Only that line, for Ray Data's MapWorker actors, is dropped.
_RAY_DATA_ACTOR_ARGS = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*has constructor arguments in the object "
    r"store and max_restarts > 0"
)


@contextlib.contextmanager
def quiet_ray_data_actor_warning():
    """While the block runs, this process's stderr (file descriptor 2, where Ray's C++ core
    worker writes) passes through a filter that drops exactly the line above; everything else,
    progress bars included, is forwarded as it comes. Used by the command line only: a library
    caller's file descriptors are left alone."""
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no real stderr (an embedding host): nothing to filter
        yield
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = [line + b"\n" for line in lines if not _RAY_DATA_ACTOR_ARGS.search(line.decode("utf-8", "replace"))]
            # a partial line that is not a Ray log line ("[2026-...") goes out now: progress bars
            if pending and not pending.startswith(b"["):
                out.append(pending)
                pending = b""
            if out:
                os.write(original, b"".join(out))
        if pending:
            os.write(original, pending)

    thread = threading.Thread(target=forward, name="itemlens-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the thread drains and ends
        thread.join(timeout=5)
        os.close(read_end)
        os.close(original)
