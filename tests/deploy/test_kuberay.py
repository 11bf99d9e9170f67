"""The KubeRay manifest: generated from its serve config, valid for Ray and for the RayService schema, and
consistent where neither checks (GPUs per pod, replicas, ports, the model volume, the API keys)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from deploy.kuberay.generate import DEFAULT_CONFIG, PROJECT_ROOT, PodSizes, default_output, generator_needs, manifest_text, rayservice

CONFIG = PROJECT_ROOT / DEFAULT_CONFIG
MANIFEST = default_output(CONFIG)
SCHEMA = json.loads((Path(__file__).with_name("rayservice.schema.json")).read_text())
SERVE_CONFIGS = sorted([PROJECT_ROOT / "serve_config.yaml", *(PROJECT_ROOT / "configs").glob("serve-*.yaml")])


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def test_the_manifest_is_what_the_generator_writes_now() -> None:
    expected = manifest_text(CONFIG, PodSizes())
    assert MANIFEST.read_text() == expected, f"{MANIFEST.name} is stale: run `python -m deploy.kuberay.generate {DEFAULT_CONFIG}`"


def test_serve_config_v2_is_the_serve_config(manifest: dict[str, Any]) -> None:
    embedded = manifest["spec"]["serveConfigV2"]
    assert embedded == CONFIG.read_text(), f"expected serveConfigV2 to be {DEFAULT_CONFIG} verbatim"
    assert yaml.safe_load(embedded) == yaml.safe_load(CONFIG.read_text()), "expected the same serve config once parsed"


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_parse_with_rays_schema(path: Path) -> None:
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def test_the_manifests_serve_config_parses_with_rays_schema(manifest: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    names = [d.name for d in schema.applications[0].deployments]
    assert names == ["AvatarIngress", "AvatarGenerator"], f"expected both deployments configured, found {names}"


def test_the_manifest_matches_the_rayservice_schema(manifest: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "expected a valid RayService, found:\n" + "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_refuses_a_misspelt_field(manifest: dict[str, Any]) -> None:
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(broken), "expected the schema to refuse `maxReplica`"


# -- what neither Ray nor the schema checks ---------------------------------------------------------------------


def cross_field_problems(manifest: dict[str, Any]) -> list[str]:
    """Every inconsistency between the serve config and the cluster it is given."""
    problems = []
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    application = config["applications"][0]
    cluster = manifest["spec"]["rayClusterConfig"]
    head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    needs = generator_needs(application)
    if head["rayStartParams"].get("num-gpus") != "0":
        problems.append(f"the head must have no GPUs, found num-gpus={head['rayStartParams'].get('num-gpus')}")
    capacity = 0
    for group in workers:
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        pod_gpus = int(limits.get("nvidia.com/gpu", 0))
        if group["rayStartParams"].get("num-gpus") != str(pod_gpus):
            problems.append(f"{group['groupName']}: num-gpus {group['rayStartParams'].get('num-gpus')} != the pod's {pod_gpus} GPUs")
        if needs["gpus"] > pod_gpus or needs["cpus"] > int(limits["cpu"]):
            problems.append(f"{group['groupName']}: a replica needs {needs['gpus']} GPUs, {needs['cpus']} CPUs; a pod has {pod_gpus}, {limits['cpu']}")
        declared = json.loads(group["rayStartParams"].get("resources", "{}"))
        missing = {k: v for k, v in needs["resources"].items() if declared.get(k, 0) < v}
        if missing:
            problems.append(f"{group['groupName']}: the replica's resources {missing} are not declared by the pod")
        capacity += group["maxReplicas"] * (pod_gpus // max(1, needs["gpus"]) if needs["gpus"] else 1)
        problems += _pod_problems(group["template"], config, application, serves_models=True)
    if needs["max_replicas"] > capacity:
        problems.append(f"max_replicas {needs['max_replicas']} x {needs['gpus']} GPUs exceeds the worker group's {capacity} replicas")
    problems += _pod_problems(head["template"], config, application, serves_models=False)
    if cluster.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {cluster.get('rayVersion')} != the installed Ray {ray.__version__}")
    if config["http_options"]["host"] != "0.0.0.0":
        problems.append(f"http_options.host must be 0.0.0.0 in a pod, found {config['http_options']['host']}")
    return problems


def _pod_problems(template: dict[str, Any], config: dict[str, Any], application: dict[str, Any], serves_models: bool) -> list[str]:
    problems = []
    spec, container = template["spec"], template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("serve") != config["http_options"]["port"]:
        problems.append(f"{container['name']}: port 'serve' {ports.get('serve')} != http_options.port {config['http_options']['port']}")
    if len(set(ports.values())) != len(ports):
        problems.append(f"{container['name']}: two ports share a number: {ports}")
    runtime_env = application.get("runtime_env", {})
    if container.get("workingDir") != runtime_env.get("working_dir", "").removeprefix("local://"):
        problems.append(f"{container['name']}: workingDir {container.get('workingDir')} != runtime_env.working_dir")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    if volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir", {}).get("medium") != "Memory":
        problems.append(f"{container['name']}: /dev/shm is not a memory volume")
    env = {e["name"]: e for e in container["env"]}
    auth = application["args"].get("auth", {})
    if auth.get("enabled") and "secretKeyRef" not in env.get(auth.get("keys_env", "OMNIAVATAR_API_KEYS"), {}).get("valueFrom", {}):
        problems.append(f"{container['name']}: auth is on but the keys do not come from a Secret")
    model_dir = runtime_env.get("env_vars", {}).get("OMNIAVATAR_MODEL_DIR")
    if serves_models:
        if mounts.get(model_dir) is None or "persistentVolumeClaim" not in volumes.get(mounts[model_dir], {}):
            problems.append(f"{container['name']}: no volume mounted at the model folder {model_dir}")
        if env.get("OMNIAVATAR_MODEL_DIR", {}).get("value") != model_dir:
            problems.append(f"{container['name']}: OMNIAVATAR_MODEL_DIR is not {model_dir}")
        if not spec.get("tolerations") or "nodeSelector" not in spec:
            problems.append(f"{container['name']}: a GPU pod needs its tolerations and node selector")
    return problems


def test_the_cluster_fits_the_serve_config(manifest: dict[str, Any]) -> None:
    problems = cross_field_problems(manifest)
    assert not problems, "expected a consistent manifest, found:\n" + "\n".join(problems)


def _replace_generator(manifest: dict[str, Any], **changes: Any) -> dict[str, Any]:
    broken = copy.deepcopy(manifest)
    config = yaml.safe_load(broken["spec"]["serveConfigV2"])
    spec = next(d for d in config["applications"][0]["deployments"] if d["name"] == "AvatarGenerator")
    spec.update(changes)
    broken["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    return broken


@pytest.mark.parametrize(
    "change, says",
    [
        ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 9}}, "exceeds the worker group"),
        ({"ray_actor_options": {"num_gpus": 2, "num_cpus": 4}}, "a replica needs 2 GPUs"),
        ({"placement_group_bundles": [{"GPU": 1, "CPU": 1}, {"GPU": 1, "CPU": 1}]}, "a replica needs 2 GPUs"),
        ({"ray_actor_options": {"num_gpus": 1, "resources": {"h100": 1}}}, "not declared by the pod"),
    ],
    ids=["too-many-replicas", "two-gpus", "two-bundles", "custom-resource"],
)
def test_the_checks_catch_a_cluster_too_small(manifest: dict[str, Any], change: dict[str, Any], says: str) -> None:
    problems = cross_field_problems(_replace_generator(manifest, **change))
    assert any(says in p for p in problems), f"expected a problem saying {says!r}, found {problems}"


def test_the_generator_sizes_pods_for_the_replicas() -> None:
    """Two GPUs a replica on 8-GPU pods: 4 replicas a pod, so max_replicas 8 needs 2 pods, with the resources declared."""
    config = yaml.safe_load(CONFIG.read_text())
    spec = next(d for d in config["applications"][0]["deployments"] if d["name"] == "AvatarGenerator")
    spec["ray_actor_options"] = {"num_gpus": 2, "num_cpus": 4, "resources": {"h100": 1}}
    manifest = rayservice(yaml.safe_dump(config), "omniavatar-test", PodSizes(gpus_per_pod=8, cpus=32))
    group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["maxReplicas"] == math.ceil(8 / 4), f"expected 2 pods for 8 replicas of 2 GPUs, found {group['maxReplicas']}"
    assert json.loads(group["rayStartParams"]["resources"]) == {"h100": 4}, f"expected h100: 4 per pod, found {group['rayStartParams']}"
    problems = cross_field_problems(manifest)
    assert not problems, f"expected a consistent manifest, found {problems}"
    with pytest.raises(ValueError, match="needs 2 GPUs; a worker pod has 1"):
        rayservice(yaml.safe_dump(config), "omniavatar-test", PodSizes(gpus_per_pod=1))
