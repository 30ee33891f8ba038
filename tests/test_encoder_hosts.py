"""Encoder hosts (workflows/encoder_hosts.py) on the session's Ray, which turns them on
(tests/conftest.py): features of one model share a host and store the library's own vectors,
a failure in the host reaches the encoder actor as itself, an actor whose host died gets a new
one, and the registry ends the host used least recently. The default path, a model loaded in
each actor, is what every Ray without ``ITEMLENS_ENCODER_HOSTS`` runs: tests/test_cluster.py's
worker nodes check it against these."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import itemlens
from itemlens.errors import ConfigError
from itemlens.extractors import FeatureSpec, ItemError, build_encoder
from itemlens.workflows.encoder_hosts import (
    HOSTS_ENV,
    NAMESPACE,
    REGISTRY,
    HostedModel,
    HostRegistry,
    _actor,
    _portable,
    hosts_to_keep,
    model_identity,
    model_key,
)
from itemlens.workflows.ingest import ingest

from .conftest import text_spec, write_jsonl

pytestmark = pytest.mark.integration

ROWS = [
    {"item_id": "a", "title": "an LED light bulb", "brand": "Lumo"},
    {"item_id": "b", "title": "a grey yoga bag", "brand": "Zen"},
    {"item_id": "c", "title": "a cast iron pan", "brand": "Ferro"},
]


def _hosts_created(dashboard: str) -> int:
    from ray.util.state import list_actors

    return len(list_actors(address=dashboard, filters=[("class_name", "=", "EncoderHost")], limit=10_000))


def test_features_of_one_model_share_a_host_and_store_the_librarys_vectors(
    ray_session, ray_cluster, tmp_path, minilm_path
):
    from sentence_transformers import SentenceTransformer

    ray = ray_session
    catalog = write_jsonl(tmp_path / "catalog.jsonl", ROWS)
    specs = {
        "title": text_spec(minilm_path, template="{title}"),
        "brand": text_spec(minilm_path, template="{brand}: {title}"),
    }
    before = _hosts_created(ray_cluster["dashboard"])
    ingest(catalog, {"features": specs}, tmp_path / "lens", progress=False)
    # one model, two templates: one host (none new when an earlier test left this model's host)
    assert _hosts_created(ray_cluster["dashboard"]) - before <= 1
    node = ray.get_runtime_context().get_node_id()
    keys = {model_key(model_identity(build_encoder(FeatureSpec.model_validate(s))), 2, node) for s in specs.values()}
    assert len(keys) == 1
    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    assert ray.get(registry.keys.remote())[-1] == keys.pop()  # the one used last

    lens, model = itemlens.connect(tmp_path / "lens"), SentenceTransformer(minilm_path, device="cpu")
    ids = [r["item_id"] for r in ROWS]
    for name, texts in (
        ("title", [r["title"] for r in ROWS]),
        ("brand", [f"{r['brand']}: {r['title']}" for r in ROWS]),
    ):
        expected = model.encode(texts, normalize_embeddings=True)
        np.testing.assert_allclose(lens.vectors(name, ids), expected, atol=1e-5)


def test_a_failure_in_the_host_is_raised_in_the_actor_as_itself(ray_session, minilm_path):
    spec = FeatureSpec.model_validate(text_spec(minilm_path, template="{title}"))
    model = HostedModel(build_encoder(spec), spec.model_dump_json(), 1, keep=6)
    assert model.dim == 384
    vectors = model.run("texts", ["a grey yoga bag"])
    assert np.asarray(vectors).shape == (1, 384)
    with pytest.raises(ValueError, match="unknown model call 'sing'"):
        model.run("sing", ["a grey yoga bag"])


def test_an_actor_whose_host_died_gets_a_new_one(ray_session, minilm_path):
    ray = ray_session
    spec = FeatureSpec.model_validate(text_spec(minilm_path, template="{title}"))
    model = HostedModel(build_encoder(spec), spec.model_dump_json(), 1, keep=6)
    before = np.asarray(model.run("texts", ["a grey yoga bag"]))
    dead = model.host
    ray.kill(dead)  # as the registry ends a host for another model, or a crash would
    after = np.asarray(model.run("texts", ["a grey yoga bag"]))
    assert model.host != dead
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_an_item_error_reaches_the_actor_as_itself():
    # an encoder's per-item error (hf-text: a text with no tokens) is stored with its own words
    error = _portable(ItemError("input", "the text has no tokens"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ItemError and (again.stage, again.reason) == ("input", "the text has no tokens")


def test_a_bad_number_of_hosts_is_a_clear_error(monkeypatch):
    for value, keep in (("", 0), ("0", 0), (" 3 ", 3)):
        monkeypatch.setenv(HOSTS_ENV, value)
        assert hosts_to_keep() == keep
    for value in ("yes", "-1", "2.5"):
        monkeypatch.setenv(HOSTS_ENV, value)
        with pytest.raises(ConfigError, match=f"{HOSTS_ENV}='{value}'"):
            hosts_to_keep()


def test_the_registry_ends_the_host_used_least_recently(ray_session, minilm_path):
    ray = ray_session
    spec_json = FeatureSpec.model_validate(text_spec(minilm_path)).model_dump_json()
    registry = _actor(HostRegistry).options(num_cpus=0).remote()  # a registry of this test's own
    node = ray.get_runtime_context().get_node_id()

    def host(key):
        return ray.get(registry.host.remote(key, spec_json, 1, node, 2))

    a, b = host("a"), host("b")
    assert host("a") == a  # asked again: the same host, now the most recent
    c = host("c")  # a third, with room for two: b goes
    assert ray.get(registry.keys.remote()) == ["a", "c"]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(b.run.remote("load", None))
    for kept in (a, c):
        ray.kill(kept)
