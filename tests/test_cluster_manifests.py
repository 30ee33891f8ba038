"""cluster/: the KubeRay and ``ray up`` manifests, the runtime environment and the cluster
configuration parse, name the itemlens entrypoint with arguments the CLI accepts, and ask for
the resources the README says they do."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from .conftest import ROOT

CLUSTER = ROOT / "cluster"


def _yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_version() -> str:
    return re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)


def _image() -> str:
    return re.search(r"^FROM (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def _entrypoint_args(entrypoint: str):
    from itemlens.workflows.cli import build_parser

    argv = shlex.split(entrypoint)
    assert argv[:2] == ["itemlens", "ingest"]
    return build_parser().parse_args(argv[1:])


def _check_cluster_spec(spec: dict) -> set[str]:
    """The checks a RayCluster spec must pass (a RayCluster's, or the one a RayJob starts)."""
    assert spec["rayVersion"] == _ray_version()
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, not the work
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        images |= {c["image"] for c in containers}
        limits = containers[0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            assert group["rayStartParams"]["num-gpus"] == limits["nvidia.com/gpu"]
            gpu_groups.append(group["groupName"])
        for c in containers:  # credentials come from a secret or the pod's identity, never inline
            assert not [e for e in c.get("env", []) if "SECRET" in e["name"] and "value" in e]
        # the weights on every node: actors load the models, decode tasks a captioner's processor
        assert {m["mountPath"] for c in containers for m in c.get("volumeMounts", [])} >= {"/models"}, group[
            "groupName"
        ]
    assert gpu_groups, "no GPU worker group"
    assert len(images) == 1
    return images


def test_kuberay_raycluster():
    doc = _yaml("kuberay/raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_an_ingest_the_cli_accepts():
    doc = _yaml("kuberay/rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    images = _check_cluster_spec(doc["spec"]["rayClusterSpec"])
    assert images == {
        c["image"] for c in _yaml("kuberay/raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    }
    args = _entrypoint_args(doc["spec"]["entrypoint"])
    assert args.command == "ingest" and args.store.startswith("s3://") and args.catalog.startswith("s3://")
    # the config the entrypoint names is this repository's cluster/lens-cluster.yaml, at /app in the image
    assert "COPY" in (CLUSTER / "Dockerfile").read_text() and args.config.startswith("/app/")
    assert (ROOT / args.config.removeprefix("/app/")).is_file()
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)


def test_ray_up_cluster():
    doc = _yaml("aws/cluster.yaml")
    assert doc["provider"]["type"] == "aws"
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] <= t["max_workers"] <= doc["max_workers"] for t in gpu)
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])
    assert doc["docker"]["image"] == next(iter(_check_cluster_spec(_yaml("kuberay/raycluster.yaml")["spec"])))


def test_image_and_runtime_env():
    assert _image() == f"rayproject/ray:{_ray_version()}-py311-gpu"
    from ray.runtime_env import RuntimeEnv

    env = _yaml("runtime_env.yaml")
    RuntimeEnv(**env)
    assert not [k for k in env.get("env_vars", {}) if re.search("SECRET|KEY|TOKEN|PASSWORD", k)]


def test_the_cluster_configuration_is_valid_and_sized_for_gpus():
    from itemlens.workflows.config import load_config

    cfg = load_config(CLUSTER / "lens-cluster.yaml")
    gpus = {name: spec.resources.num_gpus for name, spec in cfg.features.items()}
    assert all(0 < g <= 1 for g in gpus.values())
    assert gpus["text"] < 1  # a small encoder shares a GPU
    assert cfg.storage_options and "secret" not in " ".join(cfg.storage_options).lower()


@pytest.mark.parametrize(
    "name",
    ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "aws/cluster.yaml", "runtime_env.yaml", "lens-cluster.yaml"],
)
def test_the_readme_walks_through_each_file(name):
    assert name in (CLUSTER / "README.md").read_text()
