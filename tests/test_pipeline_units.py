"""Pipeline decisions that need no Ray: actor placement, per-item isolation of encode failures."""

import logging

import numpy as np
import pytest

from itemlens.errors import ConfigError
from itemlens.extractors import FeatureSpec, ItemError
from itemlens.workflows.config import load_config
from itemlens.workflows.encoder_hosts import ModelUnavailable
from itemlens.workflows.feature_job import place as _place
from itemlens.workflows.runtime import RayRuntime
from itemlens.workflows.stages import EncodeBatches


def _spec(**resources) -> FeatureSpec:
    return FeatureSpec(encoder="sentence-transformers", model="m", input={"template": "{t}"}, resources=resources)


CFG = load_config({"features": {"t": {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{t}"}}}})


def test_gpu_requests_fall_back_to_cpu_with_a_message(caplog):
    caplog.set_level(logging.INFO, logger="itemlens")
    placement = _place("text", _spec(num_gpus=1), RayRuntime(True, 1.0, 8, 0, 8), CFG)
    assert (placement.device, placement.num_gpus, placement.concurrency) == ("cpu", 0, 1)
    assert "no GPU in the Ray cluster: feature 'text' runs on CPU" in caplog.text
    gpu = _place("text", _spec(num_gpus=0.5, concurrency=2), RayRuntime(True, 1.0, 8, 1, 8), CFG)
    assert (gpu.device, gpu.num_gpus, gpu.concurrency) == ("cuda", 0.5, 2)
    with pytest.raises(ConfigError, match="num_gpus=2"):
        _place("text", _spec(num_gpus=2), RayRuntime(True, 1.0, 8, 1, 8), CFG)


def test_an_actor_bigger_than_every_node_is_refused_not_left_waiting():
    # four nodes of 1 GPU and 4 CPUs: 4 GPUs and 16 CPUs in all, but an actor runs on one node
    cluster = RayRuntime(False, 1.0, 16, 4, 4, nodes=4, resources={"CPU": 4.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"num_gpus=2 per actor; no node .*the largest has 1 of its 4 GPUs"):
        _place("text", _spec(num_gpus=2), cluster, CFG)
    with pytest.raises(ConfigError, match=r"num_cpus=6 per actor; no node .*the largest has 4 of its 16 CPUs"):
        _place("text", _spec(num_gpus=1, num_cpus=6), cluster, CFG)
    fits = _place("text", _spec(num_gpus=1, num_cpus=4, concurrency=3), cluster, CFG)
    assert (fits.device, fits.num_gpus, fits.concurrency) == ("cuda", 1, 3)


def test_actors_always_leave_cpus_to_the_decode_tasks(caplog):
    placement = _place("text", _spec(num_gpus=0, concurrency=3), RayRuntime(True, 1.0, 2, 0, 2), CFG)
    assert placement.concurrency == 1 and "running 1" in caplog.text
    with pytest.raises(ConfigError, match="need more than the cluster's 2 CPUs"):
        _place("text", _spec(num_gpus=0, num_cpus=2), RayRuntime(True, 1.0, 2, 0, 2), CFG)


def test_cpu_threads_are_the_actors_share_of_the_node_and_never_zero():
    assert _place("t", _spec(num_gpus=0), RayRuntime(True, 1.0, 16, 0, 16), CFG).cpu_threads == 16
    assert _place("t", _spec(num_gpus=0, concurrency=4), RayRuntime(True, 1.0, 16, 0, 16), CFG).cpu_threads == 4
    assert _place("t", _spec(num_gpus=0, num_cpus=0.5), RayRuntime(True, 1.0, 2, 0, 2), CFG).cpu_threads == 1


def test_actors_asking_for_a_resource_no_node_has_stop_the_job_with_a_message():
    cluster = RayRuntime(
        False, 1.0, 6, 0, 2, nodes=3, resources={"CPU": 2.0, "encoder_slot": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0}
    )
    with pytest.raises(ConfigError, match=r"asks for resources \{'a100': 1.0\}.*of its nodes: encoder_slot\)"):
        _place("t", _spec(num_gpus=0, resources={"a100": 1}), cluster, CFG)
    with pytest.raises(ConfigError, match="encoder_slot"):  # 2 per actor: no node has 2
        _place("t", _spec(num_gpus=0, resources={"encoder_slot": 2}), cluster, CFG)
    assert _place("t", _spec(num_gpus=0, resources={"encoder_slot": 1}), cluster, CFG).concurrency == 1


def test_custom_resources_reach_the_actor_pool_and_do_not_change_the_fingerprint():
    from itemlens.workflows.feature_job import _actor_placement

    plain, pinned = _spec(num_gpus=0), _spec(num_gpus=0, resources={"encoder_slot": 1})
    assert _actor_placement(plain.resources) == {}
    assert _actor_placement(pinned.resources) == {"resources": {"encoder_slot": 1.0}}
    from itemlens.extractors.spec import fingerprint

    assert fingerprint(plain, "w", "1") == fingerprint(pinned, "w", "1")


def _encoder(bad: set, broken: bool = False):
    def encode(items):
        if broken or any(x in bad for x in items):
            raise ValueError(f"cannot encode {items}")
        return [np.full(2, float(len(x))) for x in items]

    return encode


def test_one_bad_item_becomes_an_error_row_in_any_batch_size():
    results = EncodeBatches._isolating(["ab", "BAD", "c"], _encoder({"BAD"}), canary="ok")
    assert isinstance(results[1], ItemError) and results[1].stage == "encode"
    assert [r.tolist() for r in (results[0], results[2])] == [[2, 2], [1, 1]]
    alone = EncodeBatches._isolating(["BAD"], _encoder({"BAD"}), canary="ok")  # an incremental run of one
    assert isinstance(alone[0], ItemError) and "cannot encode" in alone[0].reason


def test_a_lost_model_fails_the_actor_and_records_no_item():
    # an encoder host lost twice (workflows/encoder_hosts.py): in the batch, or while the items
    # of a failed batch are tried one by one
    def lost_after(calls: int):
        seen = []

        def encode(items):
            seen.append(items)
            if len(seen) > calls:
                raise ModelUnavailable("the encoder host of this model was lost twice")
            raise ValueError("a bad batch")

        return encode

    for calls in (0, 1):
        with pytest.raises(ModelUnavailable):
            EncodeBatches._isolating(["a", "b"], lost_after(calls), canary="ok")


def test_a_broken_model_fails_the_job_instead_of_recording_every_item():
    with pytest.raises(ValueError, match="cannot encode"):
        EncodeBatches._isolating(["a", "b"], _encoder(set(), broken=True), canary="ok")
    with pytest.raises(ValueError):
        EncodeBatches._isolating(["a"], _encoder(set(), broken=True), canary="ok")


def test_categorical_and_string_view_ids_are_strings():
    """A pandas categorical id column reads back from Parquet as a dictionary of strings."""
    import pyarrow as pa

    from itemlens.workflows.stages import catalog_ids, item_ids

    for column in (
        pa.array(["a", "b", "a"]).dictionary_encode(),
        pa.array([3, 4, 3]).dictionary_encode(),
        pa.array(["x", "y", "z"], pa.string_view()),
    ):
        batch = pa.table({"item_id": column, "title": ["t"] * 3})
        expected = [str(v) for v in column.to_pylist()]
        assert catalog_ids(batch, id_column="item_id").column("item_id").to_pylist() == expected
        assert item_ids(batch, "item_id") == expected


def test_a_dry_run_refuses_missing_weights_as_the_run_does(tmp_path):
    """Before any work (no store opened, no Ray started): what the real run refuses first. The
    folder has its config but no weights: its fingerprint can be taken, its weights not loaded."""
    from itemlens.errors import WeightsNotFoundError
    from itemlens.workflows.plan import plan

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "catalog.jsonl").write_text('{"item_id": "a", "title": "lamp"}\n')
    spec = {"encoder": "hf-text", "model": str(tmp_path / "model"), "input": {"template": "{title}"}}
    with pytest.raises(WeightsNotFoundError):
        plan(tmp_path / "catalog.jsonl", {"features": {"text": spec}}, tmp_path / "lens")
