"""The Prometheus files point where Ray and the KubeRay manifest put the metrics."""

from __future__ import annotations

import yaml
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

from deploy.kuberay.generate import DEFAULT_CONFIG, METRICS_PORT, PROJECT_ROOT, default_output

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"


def test_one_machine_reads_rays_service_discovery_file() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    expected = f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"
    assert files == [expected], f"expected Prometheus to read {expected}, found {files}"


def test_the_pod_monitor_selects_every_pod_and_its_metrics_port() -> None:
    monitor = yaml.safe_load((PROMETHEUS / "podmonitor.yaml").read_text())
    manifest = yaml.safe_load(default_output(PROJECT_ROOT / DEFAULT_CONFIG).read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]
    selector = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    for template in templates:
        labels, container = template["metadata"]["labels"], template["spec"]["containers"][0]
        assert selector.items() <= labels.items(), f"expected {container['name']} selected by {selector}, its labels are {labels}"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get(port) == METRICS_PORT, f"expected {container['name']} to expose {port}={METRICS_PORT}, found {ports}"
    starts = [cluster["headGroupSpec"]["rayStartParams"], *(group["rayStartParams"] for group in cluster["workerGroupSpecs"])]
    exported = {params.get("metrics-export-port") for params in starts}
    assert exported == {str(METRICS_PORT)}, f"expected every node's metrics agent on {METRICS_PORT}, found {exported}"
