"""One Ray instance and Serve per test session, with three applications over real HTTP:

- `/`        the service as serve_config.yaml configures it (preview backend);
- `/paced/`  the preview at a model's pace (0.1 s a step), one generation at a time and a queue of one;
- `/failing/` a backend that raises at segment 1;
- `/tiny/`    the real OmniAvatar backend on tiny random weights in the official layout (CPU, fp32).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.app import AppArgs, build_app
from deployments.generator import AvatarGenerator
from deployments.ingress import AvatarIngress
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
    serve.run(build_app(AppArgs.from_serve_config()), name="avatar", route_prefix="/")
    return Service(base_url, "avatar")


@pytest.fixture(scope="session")
def paced(base_url: str) -> Service:
    args = AppArgs.from_serve_config(
        options={"seconds_per_step": PACED_STEP_S},
        limits=RequestLimits(max_body_bytes=1 << 20),
        generator={"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 1, "ray_actor_options": {"num_cpus": 1}},
    )
    serve.run(build_app(args), name="paced", route_prefix="/paced")
    return Service(f"{base_url}/paced", "paced")


@pytest.fixture(scope="session")
def failing(base_url: str) -> Service:
    args = AppArgs.from_serve_config()
    config = load_model_config(args.config, {"options": {"fail_at_segment": 1}})
    generator = AvatarGenerator.options(name="AvatarGenerator", ray_actor_options={"num_cpus": 1}).bind(
        config, args.encoding, backend_cls=FailingPreviewBackend
    )
    serve.run(AvatarIngress.bind(generator, config, args.limits, args.stream), name="failing", route_prefix="/failing")
    return Service(f"{base_url}/failing", "failing")


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
    serve.run(build_app(omniavatar_app_args(tiny_model_dir)), name="tiny", route_prefix="/tiny")
    return Service(f"{base_url}/tiny", "tiny")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as http:
        yield http


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
