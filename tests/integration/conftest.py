"""One Ray instance and Serve per test session, with three applications over real HTTP:

- `/`        the service as serve_config.yaml configures it (preview backend);
- `/paced/`  the preview at a model's pace (0.1 s a step), one generation at a time and a queue of one;
- `/failing/` a backend that raises at segment 1;
- `/tiny/`    the real OmniAvatar backend on tiny random weights in the official layout (CPU, fp32).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.app import AppArgs, bind_ingress, build_app
from deployments.generator import AvatarGenerator
from model.config import load_model_config
from model.omniavatar.tiny import write_tiny
from model.request import RequestLimits
from tests.e2e.server import free_port
from tests.integration.backends import FailingPreviewBackend

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
PACED_STEP_S = 0.1


@dataclass(frozen=True)
class Service:
    url: str
    app_name: str

    def generator(self):
        return serve.get_deployment_handle("AvatarGenerator", app_name=self.app_name)


def wait_until_loaded(url: str, timeout_s: float = 180) -> httpx.Response:
    """Serve marks an app ready once its replicas are up; the backend loads after that. Poll /health until it stops loading."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=30) as http:
        while (health := http.get(f"{url}/health")).json().get("status") == "loading":
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} still loading after {timeout_s} s: {health.text}")
            time.sleep(0.1)
    return health


def wait_for_status(service: Service, request_id: str, state: str, timeout_s: float = 30) -> dict:
    """Poll the generator's record of `request_id` until it is in `state`."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = service.generator().request_status.remote(request_id).result()
        if status and status["state"] == state:
            return status
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} did not reach {state!r} within {timeout_s} s: {status}")


def run_app(app, base_url: str, name: str, route_prefix: str) -> Service:
    """Deploy `app` and wait until its backend has loaded."""
    serve.run(app, name=name, route_prefix=route_prefix)
    url = base_url + route_prefix.rstrip("/")
    wait_until_loaded(url)
    return Service(url, name)


@contextmanager
def deployed(app, base_url: str, name: str, route_prefix: str) -> Iterator[Service]:
    """run_app for one test module: the app is deleted afterwards, so its replicas free their CPUs for the
    next module's apps (the session's cluster has only so many)."""
    service = run_app(app, base_url, name, route_prefix)
    try:
        yield service
    finally:
        serve.delete(name)


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    ray.init(num_cpus=10, include_dashboard=False, log_to_driver=False)  # logical CPUs: one per generator replica
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def service(base_url: str) -> Service:
    return run_app(build_app(AppArgs.from_serve_config()), base_url, "avatar", "/")


@pytest.fixture(scope="session")
def paced(base_url: str) -> Service:
    args = AppArgs.from_serve_config(
        options={"seconds_per_step": PACED_STEP_S},
        limits=RequestLimits(max_body_bytes=1 << 20),
        generator={"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 1, "ray_actor_options": {"num_cpus": 1}},
    )
    args = args.model_copy(update={"stream": dataclasses.replace(args.stream, resume_grace_s=0)})  # a client that leaves cancels at once
    return run_app(build_app(args), base_url, "paced", "/paced")


@pytest.fixture(scope="session")
def failing(base_url: str) -> Service:
    args = AppArgs.from_serve_config()
    config = load_model_config(args.config, {"options": {"fail_at_segment": 1}})
    generator = AvatarGenerator.options(name="AvatarGenerator", ray_actor_options={"num_cpus": 1}).bind(
        config, args.encoding, backend_cls=FailingPreviewBackend
    )
    return run_app(bind_ingress(generator, config, args.limits, args.stream), base_url, "failing", "/failing")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny OmniAvatar folders, as a user's download would look."""
    root = tmp_path_factory.mktemp("omniavatar-tiny")
    write_tiny(root)
    return root


def omniavatar_app_args(model_dir: Path, **overrides) -> AppArgs:
    """The tiny OmniAvatar config served like configs/serve-omniavatar-tiny.yaml, from `model_dir`."""
    generator = {"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 4, "ray_actor_options": {"num_cpus": 1}}
    return AppArgs(backend="omniavatar", config="configs/omniavatar-tiny.yaml", model_dir=str(model_dir), generator=generator, **overrides)


@pytest.fixture(scope="session")
def tiny(base_url: str, tiny_model_dir: Path) -> Service:
    return run_app(build_app(omniavatar_app_args(tiny_model_dir)), base_url, "tiny", "/tiny")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as http:
        yield http


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
