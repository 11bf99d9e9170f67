"""`serve run` in a subprocess, as a user starts the service: serve_config.yaml with a free port and
optional changes to the application's args, waited on until /health answers, stopped in `finally`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from model.config import PROJECT_ROOT, deep_merge

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_run(
    workdir: Path,
    args: dict[str, Any] | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Yields the base URL of a service started from serve_config.yaml with `args` merged into the app's args,
    `deployments` (name -> options) merged into its deployments section and `env` added to its environment."""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    application = config["applications"][0]
    application["args"] = deep_merge(application["args"], args or {})
    for spec in application.get("deployments", []):
        spec.update(deep_merge(spec, (deployments or {}).get(spec["name"], {})))
    config_path = workdir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "serve.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("serve")), "run", str(config_path)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, process, log_path)
        yield base_url
    finally:
        _stop(process)


def _wait_healthy(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the service did not become healthy within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (serve run ignores SIGINT when started in the background), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
