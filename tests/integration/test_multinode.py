"""Two Ray nodes on this machine, deployed as on a cluster: `ray start` for a head without the generator's
resource and a second node that has it (each with its own temp folder), `serve deploy` of a serve config
whose runtime_env names the project folder, a stream through the head's proxy from the generator on the
second node, the second node stopped mid-stream (the client gets an error event), then serving again once
the node is back. Every process is started in its own session and killed by process group in `finally`:
`ray stop` would stop every Ray node on the machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from model.config import PROJECT_ROOT
from tests.e2e.server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
RESOURCE = "avatar_generator"  # the custom resource only the second node has
HEAD_RESOURCE = "avatar_ingress"  # keeps the ingress on the head, so that it outlives the second node
START_TIMEOUT_S = 240  # generous: a loaded 2-core machine starts Ray workers slowly
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",  # token auth is on by default in Ray 2.60; the CLI would need the cluster's token
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_period_ms": "1000",  # notice the stopped node within seconds
    "RAY_health_check_failure_threshold": "3",
}
SMALL = {"prompt": "a person talking", "num_frames": 9, "height": 128, "width": 128}


class Node:
    """A `ray start --block` in its own session, with its own temp folder; stop() kills its process group."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"r{name[0]}", dir="/tmp"))  # short: Ray's socket paths live under it
        self.log = log_dir / f"{name}.log"
        self.args = [RAY, "start", "--block", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                     f"--dashboard-agent-listen-port={free_port()}", *args]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.args, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the node dies as a machine would: no goodbye
        self.process.wait(timeout=30)
        _kill_session_leftovers(self.temp_dir)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_session_leftovers(temp_dir: Path) -> None:
    """Ray processes of this node that left its process group (they name its temp folder in their arguments)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(temp_dir).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("multinode")
    gcs, dashboard, http_port = free_port(), free_port(), free_port()
    head = Node("head", ["--head", f"--port={gcs}", "--num-cpus=2", "--num-gpus=0", f"--dashboard-port={dashboard}",
                         "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}",
                         f"--resources={json.dumps({HEAD_RESOURCE: 1})}"], work)  # fmt: skip
    worker = Node("worker", [f"--address=127.0.0.1:{gcs}", "--num-cpus=2", f"--resources={json.dumps({RESOURCE: 1})}"], work)
    try:
        head.start()
        _wait(lambda: httpx.get(f"http://127.0.0.1:{dashboard}/api/version", timeout=2).status_code == 200, "the head's dashboard", head.log)
        worker.start()
        config_path = work / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(cluster_config(http_port)))
        deploy = subprocess.run([SERVE, "deploy", str(config_path), f"--address=http://127.0.0.1:{dashboard}"],
                                env=ENV, capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
        assert deploy.returncode == 0, f"expected serve deploy to succeed, found {deploy.returncode}: {deploy.stderr[-2000:]}"
        url = f"http://127.0.0.1:{http_port}"
        status = [SERVE, "status", f"--address=http://127.0.0.1:{dashboard}"]
        _wait(lambda: generates(url), "the first generation through the head's proxy", head.log, status)
        yield {"url": url, "worker": worker, "logs": work, "status": status}
    finally:
        worker.remove()
        head.remove()


def cluster_config(http_port: int) -> dict:
    """serve_config.yaml for two nodes: the project folder as working_dir (`serve deploy` runs from /), one proxy
    (on the head: both nodes share this machine's ports), the ingress on the head, the generator on the node
    with RESOURCE."""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = http_port
    application = config["applications"][0]
    application["runtime_env"] = {"working_dir": f"local://{PROJECT_ROOT}", "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    application["args"]["options"] = {"seconds_per_step": 0.1}
    for spec in application["deployments"]:
        if spec["name"] == "AvatarGenerator":
            spec.pop("autoscaling_config", None)
            spec.update(num_replicas=1, ray_actor_options={"num_cpus": 1, "resources": {RESOURCE: 1}})
        else:
            spec["ray_actor_options"] = {"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.01}}
    return config


def generates(url: str) -> bool:
    """True once a whole small video comes back (503s while a replica starts are expected)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.post(f"{url}/generate", json={**SMALL, "num_steps": 1}, timeout=30).status_code == 200
    return False


def _wait(condition, what: str, log: Path, status: list[str] | None = None) -> None:
    """Poll `condition`; on timeout, say what did not happen with the log's tail and `serve status`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return
        time.sleep(0.5)
    serve_status = subprocess.run(status, env=ENV, capture_output=True, text=True, timeout=60).stdout if status else ""
    raise TimeoutError(f"{what}: not within {START_TIMEOUT_S} s; {log.name}:\n{log.read_text()[-3000:]}\n{serve_status}")


def test_a_node_lost_mid_stream_ends_it_with_an_error_then_serving_resumes(cluster: dict) -> None:
    url, worker = cluster["url"], cluster["worker"]
    lines = []
    with httpx.stream("POST", f"{url}/generate-stream-chunked", json={**SMALL, "num_steps": 100}, timeout=60) as response:
        assert response.status_code == 200, f"expected the stream to start (200), found {response.status_code}"
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if lines[-1]["status"] == "progress" and lines[-1]["step"] == 2:
                worker.stop()  # the generator's node goes away while it computes
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "started" and "progress" in statuses, f"expected the stream started and progressing, found {statuses}"
    assert statuses[-1] == "error", f"expected the stream to end with an error line, found {statuses[-3:]}"
    assert lines[-1]["error"]["message"], f"expected an error message, found {lines[-1]}"

    worker.start()  # the node comes back: Serve starts a generator replica on it
    _wait(lambda: generates(url), "a generation after the node came back", cluster["logs"] / "worker.log", cluster["status"])
