"""Where an encoder actor's model runs: loaded in the actor itself (:class:`LocalModel`, the
default), or kept in a host that outlives one dataset (:class:`HostedModel`).

Ray Data starts a fresh actor pool for every dataset, so each feature of each ingest starts new
encoder actors, and each one imports its encoder's libraries and loads its model before its first
batch: 6 to 14 CPU seconds per actor on a 2-CPU machine (docs/performance.md), however few items
it then encodes. Where many small ingests run one after another on one long-lived Ray, as the
test suite's do, that start-up is most of the work. With ``ITEMLENS_ENCODER_HOSTS=N`` in the
environment of the Ray nodes, an encoder actor on CPU asks for an *encoder host* instead: a
detached actor on the actor's own node that loads one model and keeps it for the datasets after
it. At most N hosts are kept; the one used least recently is ended first (an actor still using
it gets a new one, which loads the model again).

Only the model's calls cross to the host (load, and encoding a list of prepared inputs):
batching, the per-item isolation of failures, staging rows and the encode log stay in
``stages.EncodeBatches``, and an exception the model raises is raised again in the actor as it
was. GPU features always load their model in their own actor: a host would hold a GPU that the
actor pool does not account for. Off by default; tests/conftest.py turns it on for the session's
Ray, and the tests that start a Ray of their own run the default path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from itemlens.errors import ConfigError
from itemlens.extractors.items import caption_payload_items, encode_audio_items, encode_pixel_items

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors import Encoder

#: how many encoder hosts a Ray keeps (unset or 0: none, every actor loads its own model)
HOSTS_ENV = "ITEMLENS_ENCODER_HOSTS"
NAMESPACE = "itemlens"
REGISTRY = "itemlens-encoder-hosts"


class LocalModel:
    """The encoder's model loaded in this process. ``run(call, inputs)`` is every use an encoder
    actor makes of it: ``texts``, ``pixels`` (items of images or frames), ``captions`` (prepared
    payloads), ``audio`` (waveforms) and ``caption_probe`` (a known-good caption input)."""

    def __init__(self, encoder: Encoder, device: str, cpu_threads: int):
        if device == "cpu":
            import torch

            torch.set_num_threads(cpu_threads)
        encoder.load(device)
        self.encoder = encoder
        self.dim: int | None = encoder.dim if encoder.output_kind == "vector" else None

    def run(self, call: str, inputs: Any) -> Any:
        if call == "texts":
            return self.encoder.encode_texts(inputs)
        if call == "pixels":
            return encode_pixel_items(self.encoder, inputs)
        if call == "captions":
            return caption_payload_items(self.encoder, inputs)
        if call == "audio":
            return encode_audio_items(self.encoder, inputs)
        if call == "caption_probe":
            return self.encoder.inputs.probe_payload()
        raise ValueError(f"unknown model call {call!r}")


class ModelUnavailable(RuntimeError):
    """The host of an encoder actor's model was lost twice in one call: the actor fails (its
    items are not recorded as errors of their own)."""


def load_model(
    encoder: Encoder, spec_json: str, device: str, cpu_threads: int, identity: str | None = None
) -> LocalModel | HostedModel:
    """The model an encoder actor uses: a host's where ``ITEMLENS_ENCODER_HOSTS`` asks for them
    (CPU features in a Ray worker), else loaded here. ``identity``: :func:`model_identity`, as
    the driver computed it."""
    keep = hosts_to_keep()
    if keep > 0 and device == "cpu":
        import ray

        if ray.is_initialized():
            return HostedModel(encoder, spec_json, cpu_threads, keep, identity)
    return LocalModel(encoder, device, cpu_threads)


def hosts_to_keep() -> int:
    """``ITEMLENS_ENCODER_HOSTS`` of this node: how many hosts to keep (unset: 0, none)."""
    value = os.environ.get(HOSTS_ENV, "").strip()
    try:
        keep = int(value or 0)
    except ValueError:
        keep = -1
    if keep < 0:
        raise ConfigError(f"{HOSTS_ENV}={value!r}: the number of encoder hosts to keep (0 or unset: none)")
    return keep


def model_identity(encoder: Encoder) -> str:
    """What a host's model is, wherever it runs: the spec without the fields its model never
    sees (an input's column, template or caption source and its frame sampling are applied
    before the model, only the input's kind reaches it; the note and index come after; the actor
    pool's resources around it, except a captioner's batch size, which bounds its generate
    calls), and the weights' identity (their content, for a local file). The driver computes it
    (it has the weights' identity already) and hands it to the actors."""
    spec = encoder.spec.model_dump(mode="json", exclude={"note", "index", "resources"})
    spec["input"] = {"kind": encoder.spec.input.kind}
    if encoder.output_kind == "caption":
        spec["batch_size"] = encoder.spec.resources.batch_size
    blob = json.dumps({"spec": spec, "weights": encoder.weights_identity()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def model_key(identity: str, cpu_threads: int, node_id: str) -> str:
    """A host's key: its model, thread count and node."""
    return f"{identity}-{cpu_threads}-{node_id[:12]}"


class HostedModel:
    """An encoder host's model, used as a :class:`LocalModel` is."""

    def __init__(self, encoder: Encoder, spec_json: str, cpu_threads: int, keep: int, identity: str | None = None):
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        self.key = model_key(identity or model_identity(encoder), cpu_threads, node_id)
        self.registry = (
            _actor(HostRegistry)
            .options(name=REGISTRY, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0)
            .remote()
        )
        self.request = (self.key, spec_json, cpu_threads, node_id, keep)
        self.host = ray.get(self.registry.host.remote(*self.request))
        self.dim: int | None = self._call("load", None)

    def run(self, call: str, inputs: Any) -> Any:
        return self._call(call, inputs)

    def _call(self, call: str, inputs: Any) -> Any:
        import ray

        try:
            failed, value = ray.get(self.host.run.remote(call, inputs))
        except ray.exceptions.RayActorError:
            # The host is gone: ended for another model (the registry keeps N), or killed.
            # Once more with a new one, which loads the model again.
            try:
                ray.get(self.registry.forget.remote(self.key, self.host))
                self.host = ray.get(self.registry.host.remote(*self.request))
                failed, value = ray.get(self.host.run.remote(call, inputs))
            except ray.exceptions.RayError as exc:
                raise ModelUnavailable(f"the encoder host of this model was lost twice: {exc}") from exc
        if failed:
            raise value
        return value


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (to be raised again in the encoder actor), else a
    RuntimeError with its words."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class EncoderHost:
    """One model, loaded on the first call and kept; every call answers (failed, value)."""

    def __init__(self, spec_json: str, cpu_threads: int):
        self.spec_json, self.cpu_threads = spec_json, cpu_threads
        self.model: LocalModel | None = None

    def run(self, call: str, inputs: Any) -> tuple[bool, Any]:
        from itemlens.extractors import FeatureSpec, build_encoder

        try:
            if self.model is None:
                encoder = build_encoder(FeatureSpec.model_validate_json(self.spec_json))
                self.model = LocalModel(encoder, "cpu", self.cpu_threads)
            return False, self.model.dim if call == "load" else self.model.run(call, inputs)
        except Exception as exc:
            return True, _portable(exc)


class HostRegistry:
    """The hosts of one Ray, by model key, least recently used first."""

    def __init__(self):
        self.hosts: OrderedDict[str, Any] = OrderedDict()

    def host(self, key: str, spec_json: str, cpu_threads: int, node_id: str, keep: int):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if key in self.hosts:
            self.hosts.move_to_end(key)
            return self.hosts[key]
        while len(self.hosts) >= keep:
            _, old = self.hosts.popitem(last=False)
            ray.kill(old)
        # No CPU of its own in Ray's accounting: the encoder actor calling it holds that CPU
        # and waits while the host works. On the actor's node, where the actor was placed.
        self.hosts[key] = (
            _actor(EncoderHost)
            .options(
                num_cpus=0,
                lifetime="detached",
                namespace=NAMESPACE,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            .remote(spec_json, cpu_threads)
        )
        return self.hosts[key]

    def forget(self, key: str, host) -> None:
        """A host found dead is not handed out again (unless another actor replaced it already)."""
        if self.hosts.get(key) == host:
            del self.hosts[key]

    def keys(self) -> list[str]:
        """The model keys of the hosts kept, least recently used first."""
        return list(self.hosts)


@functools.cache
def _actor(cls):
    """``cls`` as a Ray actor class, made on first use: importing this module imports no Ray."""
    import ray

    return ray.remote(cls)
