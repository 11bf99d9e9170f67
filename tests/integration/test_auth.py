"""Bearer keys, /health without paths, CORS and the offline API docs, through a real Serve app over HTTP.

The secured app takes its keys from an environment variable set in the ingress replica's runtime_env and
from a file, as an operator would provide them (never in the serve config)."""

from __future__ import annotations

from collections.abc import Iterator

import re

import httpx
import pytest

from deployments.app import AppArgs, build_app
from deployments.auth import AuthOptions
from tests.integration.conftest import Service, deployed

ENV_KEYS = "env-key-1, env-key-2"
FILE_KEY = "file-key-3"
ORIGIN = "https://avatar.example.com"
PATHISH = re.compile(r"(^|[\s'\"(])(/|~/|\./)\S|configs/|\.yaml|\.pt\b")
GENERATE_ROUTES = ["/generate", "/generate-stream", "/generate-stream-chunked"]


@pytest.fixture(scope="module")
def secured(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text(f"# one key per line\n{FILE_KEY}\n")
    args = AppArgs.from_serve_config(
        auth=AuthOptions(enabled=True, keys_env="AVATAR_TEST_KEYS", keys_file=str(keys_file), cors_origins=(ORIGIN,)),
        ingress={"ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": {"AVATAR_TEST_KEYS": ENV_KEYS}}}},
        generator={"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
    )
    with deployed(build_app(args), base_url, "secured", "/secured") as service:
        yield service


@pytest.mark.parametrize("route", GENERATE_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic ZW52LWtleS0xOg==", "Bearer"])
def test_a_missing_or_wrong_key_is_401_json(secured: Service, client: httpx.Client, route: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post(secured.url + route, json={"prompt": "hello"}, headers=headers)
    assert response.status_code == 401, f"expected 401 for {route} with {authorization!r}, found {response.status_code}: {response.text}"
    assert response.json()["error"]["code"] == "unauthorized", f"expected code unauthorized, found {response.text}"
    assert response.headers.get("www-authenticate") == "Bearer", f"expected WWW-Authenticate: Bearer, found {response.headers}"


@pytest.mark.parametrize("key", ["env-key-1", "env-key-2", FILE_KEY])
def test_every_configured_key_is_accepted(secured: Service, client: httpx.Client, key: str) -> None:
    """A valid key reaches the route: an empty prompt is then refused by validation (422), not by auth."""
    response = client.post(secured.url + "/generate", json={"prompt": ""}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422, f"expected the request past auth (422 invalid field), found {response.status_code}: {response.text}"


def test_a_key_streams(secured: Service, client: httpx.Client) -> None:
    headers = {"Authorization": "Bearer env-key-2"}
    with client.stream("POST", secured.url + "/generate-stream-chunked", json={"prompt": "hi", "num_frames": 9, "height": 128, "width": 128}, headers=headers) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200, f"expected 200 with a key, found {response.status_code}"
    assert '"completed"' in lines[-1], f"expected the stream to complete, found its last line {lines[-1][:200]!r}"


def test_health_is_open_but_shows_paths_only_with_a_key(secured: Service, client: httpx.Client) -> None:
    public = client.get(secured.url + "/health")
    assert public.status_code == 200, f"expected /health open (200), found {public.status_code}: {public.text}"
    assert public.json()["status"] == "healthy", f"expected the state to stay visible, found {public.text}"
    assert not PATHISH.search(public.text), f"expected no file path in the public /health, found {PATHISH.search(public.text)} in {public.text}"
    private = client.get(secured.url + "/health", headers={"Authorization": f"Bearer {FILE_KEY}"})
    assert private.json().get("config") == "configs/preview.yaml", f"expected the full body with a key, found {private.text}"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/docs", "/docs-assets/swagger-ui-bundle.js", "/openapi.json"])
def test_page_and_docs_stay_open(secured: Service, client: httpx.Client, path: str) -> None:
    response = client.get(secured.url + path)
    assert response.status_code == 200, f"expected {path} open (200), found {response.status_code}"


def test_cors_allows_only_the_configured_origin(secured: Service, service: Service, client: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = client.options(secured.url + "/generate-stream", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200, f"expected the preflight from {ORIGIN} to pass, found {allowed.status_code}: {allowed.text}"
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN, f"expected {ORIGIN} allowed, found {allowed.headers}"
    refused = client.post(secured.url + "/generate", json={}, headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in refused.headers, f"expected no CORS grant for another origin, found {refused.headers}"
    unauthorized = client.post(secured.url + "/generate", json={}, headers={"Origin": ORIGIN})
    assert unauthorized.headers.get("access-control-allow-origin") == ORIGIN, "expected a 401 readable by the allowed origin"
    default = client.post(service.url + "/generate", json={}, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in default.headers, f"expected no CORS by default, found {default.headers}"


def test_default_service_is_open_and_docs_work_offline(service: Service, client: httpx.Client) -> None:
    """Auth is off by default; /docs names only assets the service itself serves."""
    response = client.post(service.url + "/generate", json={"prompt": ""})
    assert response.status_code == 422, f"expected no auth by default (422 from validation), found {response.status_code}"
    page = client.get(service.url + "/docs")
    assert page.status_code == 200, f"expected /docs to answer 200, found {page.status_code}"
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    external = [url for url in urls if "://" in url or url.startswith("//")]
    assert not external, f"expected /docs to load nothing from elsewhere, found {external}"
    assert len(urls) >= 3, f"expected the script, style sheet and OpenAPI URLs in /docs, found {urls}"
    for url in urls:
        asset = client.get(service.url + url if not url.startswith(service.url) else url)
        assert asset.status_code == 200 and asset.content, f"expected {url} served by the service, found {asset.status_code}"
