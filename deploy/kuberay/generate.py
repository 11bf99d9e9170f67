"""The KubeRay RayService manifest, written from a serve config so that the two never drift.

    python -m deploy.kuberay.generate [SERVE_CONFIG] [--out FILE] [--gpus-per-pod N] [--memory 96Gi] ...

The serve config's text becomes `serveConfigV2` unchanged. Everything the cluster must provide for it is
derived from it: the worker group's GPUs and size (from AvatarGenerator's `ray_actor_options`,
placement bundles and `max_replicas`), the model volume at the config's $OMNIAVATAR_MODEL_DIR, the
project at its `working_dir`, the API keys from a Secret when `args.auth` is on, the Serve port. What only
the operator knows (the image, the volume claim, the GPU node selector) is left as a marked placeholder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/serve-omniavatar-14b.yaml"
GENERATOR = "AvatarGenerator"
METRICS_PORT = 8090  # Ray's metrics agent on every pod (KubeRay's default 8080 is the Serve port here)
DASHBOARD_PORT = 8265
GCS_PORT = 6379
FILL_IN = "FILL-IN"  # a value only the operator knows


class _LiteralStr(str):
    """A string written as a YAML block (`|`), as the serve config file reads."""


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl readers: no anchors or aliases, the serve config as a block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(_LiteralStr, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|"))


@dataclass(frozen=True)
class PodSizes:
    """What one worker pod gets; the defaults fit OmniAvatar-14B on an 80 GB GPU."""

    gpus_per_pod: int = 1
    cpus: int = 8
    memory: str = "96Gi"  # host memory: the checkpoints pass through it while loading
    shared_memory: str = "16Gi"  # /dev/shm: Ray's object store carries the segments
    head_cpus: int = 4
    head_memory: str = "16Gi"


def generator_needs(application: dict[str, Any]) -> dict[str, Any]:
    """GPUs and CPUs of one AvatarGenerator replica (its actor plus its placement bundles), its custom
    resources and its max replica count, as the serve config says."""
    spec = next((d for d in application.get("deployments", []) if d["name"] == GENERATOR), {})
    actor = spec.get("ray_actor_options", {})
    bundles = spec.get("placement_group_bundles") or [{"GPU": actor.get("num_gpus", 0), "CPU": actor.get("num_cpus", 1)}]
    autoscaling = spec.get("autoscaling_config") or {}
    return {
        "gpus": sum(b.get("GPU", 0) for b in bundles),
        "cpus": sum(b.get("CPU", 0) for b in bundles),
        "resources": actor.get("resources", {}),
        "max_replicas": autoscaling.get("max_replicas", spec.get("num_replicas", 1)),
        "min_replicas": autoscaling.get("min_replicas", spec.get("num_replicas", 1)),
    }


def rayservice(config_text: str, name: str, sizes: PodSizes) -> dict[str, Any]:
    """The RayService for the serve config `config_text` (one application serving AvatarGenerator)."""
    config = yaml.safe_load(config_text)
    application = config["applications"][0]
    runtime_env = application.get("runtime_env", {})
    model_dir = runtime_env.get("env_vars", {}).get("OMNIAVATAR_MODEL_DIR", "/models")
    workdir = runtime_env.get("working_dir", "local:///app").removeprefix("local://")
    auth = application.get("args", {}).get("auth", {})
    port = config.get("http_options", {}).get("port", 8000)
    needs = generator_needs(application)
    if needs["gpus"] > sizes.gpus_per_pod:
        raise ValueError(f"one {GENERATOR} replica needs {needs['gpus']} GPUs; a worker pod has {sizes.gpus_per_pod} (--gpus-per-pod)")
    replicas_per_pod = max(1, sizes.gpus_per_pod // max(1, needs["gpus"]))
    env = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
    if auth.get("enabled"):
        key = {"name": f"{name}-api-keys", "key": "keys"}
        env.append({"name": auth.get("keys_env", "OMNIAVATAR_API_KEYS"), "valueFrom": {"secretKeyRef": key}})
    head_ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "serve", "containerPort": port},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    head = _pod(
        "ray-head", env, head_ports, {"cpu": str(sizes.head_cpus), "memory": sizes.head_memory}, sizes.shared_memory, workdir
    )
    worker_limits = {"cpu": str(sizes.cpus), "memory": sizes.memory, "nvidia.com/gpu": str(sizes.gpus_per_pod)}
    worker = _pod(
        "ray-worker", [*env, {"name": "OMNIAVATAR_MODEL_DIR", "value": model_dir}],
        [{"name": "serve", "containerPort": port}, {"name": "metrics", "containerPort": METRICS_PORT}],
        worker_limits, sizes.shared_memory, workdir,
    )  # fmt: skip
    worker["spec"]["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": model_dir, "readOnly": True})
    worker["spec"]["volumes"].append({"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models", "readOnly": True}})
    worker["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": FILL_IN}  # the GPU nodes' label, e.g. NVIDIA-H100-80GB-HBM3
    worker["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    worker_start = {"metrics-export-port": str(METRICS_PORT), "num-gpus": str(sizes.gpus_per_pod)}
    if needs["resources"]:
        worker_start["resources"] = _quoted_json(needs["resources"], replicas_per_pod)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "omniavatar-serve"}},
        "spec": {
            # A changed serveConfigV2 redeploys the apps in place; a changed rayClusterConfig brings up a new
            # cluster and switches traffic once its apps are ready (the model loads before any request moves).
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": _LiteralStr(config_text),
            "rayClusterConfig": {
                "rayVersion": ray.__version__,
                "enableInTreeAutoscaling": True,  # Serve's autoscaler adds GPU pods up to maxReplicas
                "headGroupSpec": {
                    # No GPUs and no generator: the controller, the proxy and the ingress replicas.
                    "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)},
                    "template": head,
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": max(1, math.ceil(needs["min_replicas"] / replicas_per_pod)),
                        "minReplicas": max(1, math.ceil(needs["min_replicas"] / replicas_per_pod)),
                        "maxReplicas": math.ceil(needs["max_replicas"] / replicas_per_pod),
                        "rayStartParams": worker_start,
                        "template": worker,
                    }
                ],
            },
        },
    }


def _pod(container: str, env: list[dict], ports: list[dict], limits: dict[str, str], shm: str, workdir: str) -> dict[str, Any]:
    resources = {"requests": dict(limits), "limits": dict(limits)}  # requests = limits: the pod is never squeezed
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "omniavatar-serve"}},
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": f"{FILL_IN}/omniavatar-serve:0.1.0",  # built from deploy/docker/Dockerfile
                    "workingDir": workdir,
                    "env": list(env),
                    "ports": ports,
                    "resources": resources,
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                }
            ],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}],
        },
    }


def _quoted_json(resources: dict[str, float], replicas_per_pod: int) -> str:
    """rayStartParams' `resources`: a JSON object in a string, enough for every replica the pod holds."""
    return json.dumps({name: amount * replicas_per_pod for name, amount in resources.items()})


def manifest_text(config_path: Path, sizes: PodSizes) -> str:
    """The manifest file's text for the serve config at `config_path`."""
    relative = config_path.resolve().relative_to(PROJECT_ROOT)
    name = "omniavatar-" + config_path.stem.removeprefix("serve-omniavatar-").replace(".", "-")
    manifest = rayservice(config_path.read_text(), name, sizes)
    header = (
        f"# Written by `python -m deploy.kuberay.generate {relative}`: edit that file and run it again.\n"
        f"# Before applying, replace every {FILL_IN} (image, GPU node label) and create the Secret {name}-api-keys\n"
        f"# (key `keys`: comma-separated API keys) and the PersistentVolumeClaim {name}-models holding the model files.\n"
    )
    return header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kuberay.generate", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"the serve config (default {DEFAULT_CONFIG})")
    parser.add_argument("--out", help="the manifest to write (default deploy/kuberay/rayservice-<model>.yaml)")
    defaults = PodSizes()
    for field in ("gpus_per_pod", "cpus", "memory", "shared_memory"):
        default = getattr(defaults, field)
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default, help=f"per worker pod (default {default})")
    args = parser.parse_args(argv)
    config_path = PROJECT_ROOT / args.config if not Path(args.config).is_absolute() else Path(args.config)
    sizes = PodSizes(gpus_per_pod=args.gpus_per_pod, cpus=args.cpus, memory=args.memory, shared_memory=args.shared_memory)
    out = Path(args.out) if args.out else default_output(config_path)
    out.write_text(manifest_text(config_path, sizes))
    print(f"wrote {out}")
    return 0


def default_output(config_path: Path) -> Path:
    return PROJECT_ROOT / "deploy" / "kuberay" / f"rayservice-{config_path.stem.removeprefix('serve-')}.yaml"


if __name__ == "__main__":
    sys.exit(main())
