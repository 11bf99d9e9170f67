"""Every metric the Grafana dashboard queries is exported by a running service, found the way Prometheus
finds it: through the service-discovery file Ray writes in its temp folder."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

from deploy.kuberay.generate import PROJECT_ROOT
from tests.e2e.server import serve_run

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "omniavatar.json"
GPU_ONLY = {"ray_node_gram_used", "ray_node_gram_available"}  # Ray exports them on nodes with GPUs only
SCRAPE_TIMEOUT_S = 120
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", re.MULTILINE)


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    return {name for expr in exprs for name in re.findall(r"\bray_[a-z0-9_]+\b", expr)}


@pytest.fixture(scope="module")
def ray_tmpdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> Iterator[str]:
    env = {"RAY_TMPDIR": str(ray_tmpdir), "RAY_metrics_report_interval_ms": "2000"}
    with serve_run(tmp_path_factory.mktemp("serve"), args={"options": {"seconds_per_step": 0.05}}, env=env) as url:
        yield url


def scrape_targets(ray_tmpdir: Path) -> list[str]:
    """The metrics endpoints listed in the session's service-discovery file (Prometheus file_sd format)."""
    groups = json.loads((ray_tmpdir / "ray" / "prom_metrics_service_discovery.json").read_text())
    return [f"http://{target}/metrics" for group in groups for target in group["targets"]]


def exported_names(targets: list[str]) -> set[str]:
    names: set[str] = set()
    for target in targets:
        try:
            names |= set(SAMPLE.findall(httpx.get(target, timeout=10).text))
        except httpx.HTTPError:
            continue  # a target not up yet
    return names


def use_every_path(url: str) -> None:
    """A completed stream, a refused request and a stream the client leaves mid-way and cancels."""
    small = {"prompt": "a person talking", "num_frames": 9, "height": 128, "width": 128}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/generate-stream", json={**small, "num_steps": 2}) as response:
            assert response.status_code == 200, f"expected 200, found {response.status_code}"
            assert "event: complete" in response.read().decode(), "expected a completed stream"
        refused = http.post(f"{url}/generate", json={"prompt": ""})
        assert refused.status_code == 422, f"expected an empty prompt refused with 422, found {refused.status_code}"
        with http.stream("POST", f"{url}/generate-stream-chunked", json={**small, "num_steps": 100}) as response:
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if '"progress"' in line:
                    break  # leave once the generation runs
        cancelled = http.delete(f"{url}/streams/{request_id}")  # no grace: the generator is cancelled now
        assert cancelled.status_code == 200, f"expected the cancel accepted, found {cancelled.status_code}: {cancelled.text}"


def test_every_dashboard_metric_is_exported(service: str, ray_tmpdir: Path) -> None:
    wanted = dashboard_metrics()
    assert len(wanted) >= 10, f"expected the dashboard's queries to name at least 10 metrics, found {sorted(wanted)}"
    use_every_path(service)
    deadline, found, targets = time.monotonic() + SCRAPE_TIMEOUT_S, set(), []
    while time.monotonic() < deadline:
        targets = scrape_targets(ray_tmpdir)
        found = exported_names(targets)
        if wanted - GPU_ONLY <= found:
            break
        time.sleep(1)
    missing = sorted(wanted - GPU_ONLY - found)
    assert not missing, f"expected every dashboard metric exported by {targets}, missing {missing}"
    node_metrics = {f"ray_{name}" for name in METRICS_GAUGES}  # what Ray's node agent exports, GPUs included
    assert GPU_ONLY <= node_metrics, f"expected {sorted(GPU_ONLY)} among Ray's node metrics, found {sorted(node_metrics)}"
